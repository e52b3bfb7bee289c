/*
 * The hot loops of pytest-udpsend, in C so that the sender runs at the speed of
 * a plain C send() loop: Python only sets up sockets and reads the counters.
 * Both loops release the GIL for their whole run.
 *
 * send_loop: non-blocking send() on a connected UDP socket until a deadline,
 *   counting every attempt and every errno exactly, an EAGAIN time series in
 *   fixed buckets, and SIOCOUTQ (sk_wmem_alloc) samples (overall and max per bucket).  Optional pacing sleeps
 *   with clock_nanosleep() when well ahead of schedule.  Optional stamp writes a
 *   sequence number and the CLOCK_REALTIME send time into each payload.
 * recv_loop: recvmmsg() drain until the sender's deadline plus a quiet period,
 *   optionally pairing SO_TIMESTAMPNS receive stamps with the payload's send
 *   stamp into a caller-provided uint32 buffer of latencies in nanoseconds.  The
 *   buffer has a fixed size: once full, reservoir sampling (Algorithm R) keeps a
 *   uniform sample of every datagram seen, so memory is bounded by the buffer,
 *   not by the run's duration; the count seen and the exact maximum are returned.
 *
 * Both take an optional one-byte writable buffer `stop`: when Python sets it to
 * non-zero the loop returns what it has counted (checked every send, and every
 * recvmmsg() wait of at most the socket's SO_RCVTIMEO), so the caller can stop
 * and join the threads before it closes their sockets.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/sockios.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define MAX_PAYLOAD 65536

static inline uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define MAX_SLEEP_NS 10000000ull /* pacing sleeps at most 10 ms at a time, to see `stop` */

/* The stop byte, or NULL; volatile: another thread writes it while the loop runs. */
static volatile const unsigned char *stop_flag(Py_buffer *stop)
{
    return stop->buf && stop->len >= 1 ? (volatile const unsigned char *)stop->buf : NULL;
}

static PyObject *send_loop(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"fd", "duration", "payload", "rate", "stamp", "bucket_ms", "outq_every", "stop", NULL};
    int fd, payload, stamp = 0, bucket_ms = 10, outq_every = 64;
    double duration, rate = 0.0;
    Py_buffer stop_buf = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "idi|dpiiw*", names, &fd, &duration, &payload, &rate, &stamp,
                                     &bucket_ms, &outq_every, &stop_buf))
        return NULL;
    if (payload < 16 || payload > MAX_PAYLOAD || duration <= 0 || bucket_ms < 1 || outq_every < 1) {
        if (stop_buf.buf)
            PyBuffer_Release(&stop_buf);
        PyErr_SetString(PyExc_ValueError, "send_loop: bad arguments");
        return NULL;
    }
    volatile const unsigned char *stop = stop_flag(&stop_buf);
    int stopped = 0;
    size_t nbuckets = (size_t)(duration * 1000.0 / bucket_ms) + 2;
    uint32_t *b_att = calloc(nbuckets, sizeof(uint32_t));
    uint32_t *b_eag = calloc(nbuckets, sizeof(uint32_t));
    uint32_t *b_outq = calloc(nbuckets, sizeof(uint32_t));
    char *buf = calloc(1, (size_t)payload);
    if (!b_att || !b_eag || !b_outq || !buf) {
        free(b_att); free(b_eag); free(b_outq); free(buf);
        if (stop_buf.buf)
            PyBuffer_Release(&stop_buf);
        return PyErr_NoMemory();
    }
    uint64_t attempts = 0, sent = 0, eagain = 0, enobufs = 0, other = 0, outq_sum = 0, outq_n = 0;
    int last_errno = 0, outq_max = 0;
    uint64_t bucket_ns = (uint64_t)bucket_ms * 1000000ull;
    uint64_t interval = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
    uint64_t start, end, now;

    Py_BEGIN_ALLOW_THREADS
    start = now_ns(CLOCK_MONOTONIC);
    end = start + (uint64_t)(duration * 1e9);
    now = start;
    while (now < end) {
        if (stop && *stop) {
            stopped = 1;
            break;
        }
        if (interval) {
            uint64_t due = start + attempts * interval;
            if (due > now + 50000) { /* far ahead: sleep instead of spinning */
                if (due > now + MAX_SLEEP_NS)
                    due = now + MAX_SLEEP_NS;
                struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                now = now_ns(CLOCK_MONOTONIC);
                continue;
            }
            if (due > now) {
                now = now_ns(CLOCK_MONOTONIC);
                continue;
            }
        }
        if (stamp) {
            uint64_t tx = now_ns(CLOCK_REALTIME);
            memcpy(buf, &attempts, 8);
            memcpy(buf + 8, &tx, 8);
        }
        size_t bucket = (now - start) / bucket_ns;
        if (bucket >= nbuckets)
            bucket = nbuckets - 1;
        b_att[bucket]++;
        attempts++;
        if (send(fd, buf, (size_t)payload, 0) >= 0) {
            sent++;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            eagain++;
            b_eag[bucket]++;
        } else if (errno == ENOBUFS) {
            enobufs++;
        } else {
            other++;
            last_errno = errno;
        }
        if (attempts % (uint64_t)outq_every == 0) {
            int outq = 0;
            if (ioctl(fd, SIOCOUTQ, &outq) == 0) {
                outq_sum += (uint64_t)outq;
                outq_n++;
                if (outq > outq_max)
                    outq_max = outq;
                if ((uint32_t)outq > b_outq[bucket])
                    b_outq[bucket] = (uint32_t)outq;
            }
        }
        now = now_ns(CLOCK_MONOTONIC);
    }
    Py_END_ALLOW_THREADS
    if (stop_buf.buf)
        PyBuffer_Release(&stop_buf);

    size_t used = (size_t)((now - start) / bucket_ns) + 1;
    if (used > nbuckets)
        used = nbuckets;
    PyObject *series = PyList_New((Py_ssize_t)used);
    for (size_t i = 0; series && i < used; i++)
        PyList_SET_ITEM(series, (Py_ssize_t)i, Py_BuildValue("(III)", b_att[i], b_eag[i], b_outq[i]));
    free(b_att); free(b_eag); free(b_outq); free(buf);
    if (!series)
        return NULL;
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:i,s:d,s:i,s:K,s:K,s:N,s:i,s:O}",
                         "attempts", attempts, "sent", sent, "eagain", eagain, "enobufs", enobufs,
                         "other_errors", other, "last_errno", last_errno,
                         "elapsed_s", (double)(now - start) / 1e9, "outq_max", outq_max,
                         "outq_sum", outq_sum, "outq_samples", outq_n, "series", series,
                         "bucket_ms", bucket_ms, "stopped", stopped ? Py_True : Py_False);
}

static PyObject *recv_loop(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"fd", "until_mono_ns", "quiet_ms", "latencies", "timestamps", "stop", NULL};
    int fd, quiet_ms = 100, timestamps = 0;
    unsigned long long until;
    Py_buffer lat = {0}, stop_buf = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iK|iw*pw*", names, &fd, &until, &quiet_ms, &lat, &timestamps,
                                     &stop_buf))
        return NULL;
    volatile const unsigned char *stop = stop_flag(&stop_buf);
    int stopped = 0;
    uint32_t *out = lat.buf;
    size_t cap = lat.buf ? (size_t)lat.len / sizeof(uint32_t) : 0;
    uint64_t seen = 0, max_ns = 0, rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)fd;
    static __thread char bufs[BATCH][2048];
    static __thread char ctrl[BATCH][64];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    uint64_t received = 0, bytes = 0, truncated = 0;
    uint64_t hard_end = until + 3000000000ull, last_rx;

    Py_BEGIN_ALLOW_THREADS
    last_rx = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        if (stop && *stop) {
            stopped = 1;
            break;
        }
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof(bufs[i]);
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctrl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i]);
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        if (n > 0) {
            last_rx = now;
            for (int i = 0; i < n; i++) {
                received++;
                bytes += msgs[i].msg_len;
                if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                    truncated++;
                if (!timestamps || msgs[i].msg_len < 16)
                    continue;
                uint64_t tx;
                memcpy(&tx, bufs[i] + 8, 8);
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                        uint64_t rx = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
                        uint64_t d = rx > tx ? rx - tx : 0;
                        uint32_t v = d > 0xffffffffull ? 0xffffffffu : (uint32_t)d;
                        if (d > max_ns)
                            max_ns = d;
                        if (seen < cap) {
                            out[seen] = v;
                        } else if (cap) { /* Algorithm R: keep each of the seen+1 with chance cap/(seen+1) */
                            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; /* xorshift64 */
                            uint64_t j = rng % (seen + 1);
                            if (j < cap)
                                out[j] = v;
                        }
                        seen++;
                    }
                }
            }
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            break;
        }
        if (now >= hard_end || (now >= until && now - last_rx >= (uint64_t)quiet_ms * 1000000ull))
            break;
    }
    Py_END_ALLOW_THREADS

    if (lat.buf)
        PyBuffer_Release(&lat);
    if (stop_buf.buf)
        PyBuffer_Release(&stop_buf);
    uint64_t kept = seen < cap ? seen : cap;
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O}", "received", received, "bytes", bytes, "samples", kept,
                         "seen", seen, "lost_samples", seen - kept, "max_ns", max_ns, "truncated", truncated,
                         "stopped", stopped ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"send_loop", (PyCFunction)(void (*)(void))send_loop, METH_VARARGS | METH_KEYWORDS, "Timed non-blocking send() loop."},
    {"recv_loop", (PyCFunction)(void (*)(void))recv_loop, METH_VARARGS | METH_KEYWORDS, "recvmmsg() drain loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_engine", NULL, -1, methods};

PyMODINIT_FUNC PyInit__engine(void) { return PyModule_Create(&module); }

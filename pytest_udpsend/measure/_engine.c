/*
 * The hot loops of pytest-udpsend, in C so that the sender runs at the speed of
 * a plain C send() loop: Python only sets up sockets and reads the counters.
 * Both loops release the GIL for their whole run.
 *
 * send_loop: non-blocking sends on UDP sockets until a deadline, in one of four modes:
 *   send() on a connected socket; sendto() on an unconnected one (`dst`, a packed
 *   sockaddr); sendmmsg() in batches of `batch`; send() of a GSO super-datagram (the
 *   caller set UDP_SEGMENT on the socket: one call, one charge, many wire segments).
 *   Several sockets (`fd` a sequence: flows) are served round-robin, one call each.
 *   Attempts are messages the kernel tried: a send call is one; a sendmmsg() call
 *   that sends all is `batch`; one that returns k < batch sent k and stopped at
 *   message k+1, which counts as one failed attempt (k + 1 tried) and as EAGAIN,
 *   because the kernel returns the count, not the error (also counted as a stop;
 *   on our non-blocking IP_RECVERR sockets the cause is EAGAIN, or ENOBUFS from a
 *   dropping qdisc, and both count in UdpSndbufErrors); a call that fails at its first
 *   message is one attempt with its errno.  Counted exactly per flow, with an EAGAIN time series in
 *   fixed buckets, and SIOCOUTQ (sk_wmem_alloc) samples (overall and max per bucket).  Failed calls are
 *   also counted by errno (`errnos`: {errno: n}; a stopped sendmmsg batch counts under EAGAIN).
 *   Busy-wait: at a SIOCOUTQ sample at most every BUSY_EVERY_NS the loop notes whether the sampled
 *   socket was full (sk_wmem_alloc >= sk_sndbuf, the test sock_alloc_send_pskb() makes) and its own
 *   thread's CPU time and run delay (time runnable but waiting for a CPU, from
 *   /proc/thread-self/schedstat); the time to the next such sample after a full one, and the CPU and
 *   run delay in it, sum into `full_ns`, `full_cpu_ns` and `full_wait_ns`.  Optional pacing sleeps
 *   with clock_nanosleep() when well ahead of schedule.  Optional stamp writes a
 *   sequence number and the CLOCK_REALTIME send time into each payload.
 *   Replay (`sizes`, a uint32 buffer of datagram sizes): one send call per datagram of the schedule,
 *   `loops` times over, instead of a duration; `due` (uint64 ns from the start, empty: as fast as
 *   possible) paces each one, loop k adding k * `period_ns`.  A datagram that fails is counted and
 *   dropped, never retried.  `burst_ends` (uint32, one past each burst's last datagram) splits the
 *   counts per burst and loop: attempts, sent, bytes sent, EAGAIN and the SIOCOUTQ peak, sampled as
 *   usual plus at each burst's last datagram and first EAGAIN.  Lateness (send time minus due time)
 *   is summed and its maximum kept.  `duration` then only sizes the time series (later sends fall
 *   into its last bucket).
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
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
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

enum { MODE_SEND, MODE_SENDTO, MODE_SENDMMSG, MODE_GSO };
#define ERRNO_SLOTS 256 /* errno values counted one by one (Linux's end near 135); higher ones as ERRNO_SLOTS */
#define BUSY_EVERY_NS 100000ull /* busy-wait samples: a schedstat read (~2 us) at most every 100 us */

/* This thread's CPU time (its CPU clock: schedstat's first field lags up to a tick while it runs) and
   run delay (schedstat's second field: up to date, since the thread is running when it reads it; 0 without). */
static void thread_time(int fd, uint64_t *cpu, uint64_t *wait)
{
    char text[96];
    ssize_t n = fd >= 0 ? pread(fd, text, sizeof(text) - 1, 0) : -1;
    *cpu = now_ns(CLOCK_THREAD_CPUTIME_ID);
    *wait = 0;
    if (n > 0) {
        char *rest;
        text[n] = 0;
        strtoull(text, &rest, 10);
        *wait = strtoull(rest, NULL, 10);
    }
}
/* The per-burst counts of a replay: one row per burst and loop. */
enum { B_ATT, B_SENT, B_BYTES, B_EAG, B_OUTQ, B_FIELDS };
#define MAX_FLOWS 256
#define MAX_BATCH 1024

/* fd: one int, or a sequence of ints (flows, served round-robin) */
static int parse_fds(PyObject *obj, int *fds)
{
    if (PyLong_Check(obj)) {
        fds[0] = (int)PyLong_AsLong(obj);
        return PyErr_Occurred() ? -1 : 1;
    }
    PyObject *seq = PySequence_Fast(obj, "send_loop: fd must be an int or a sequence of ints");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_FLOWS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "send_loop: 1 to 256 fds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        fds[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : (int)n;
}

static PyObject *u64_list(const uint64_t *v, int n)
{
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++)
        PyList_SET_ITEM(list, i, PyLong_FromUnsignedLongLong(v[i]));
    return list;
}

static void release_all(Py_buffer *a, Py_buffer *b, Py_buffer *c, Py_buffer *d, Py_buffer *e)
{
    Py_buffer *all[] = {a, b, c, d, e};
    for (int i = 0; i < 5; i++)
        if (all[i]->buf)
            PyBuffer_Release(all[i]);
}

static PyObject *send_loop(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"fd", "duration", "payload", "rate", "stamp", "bucket_ms", "outq_every", "stop",
                            "mode", "batch", "dst", "gso_size", "sizes", "due", "loops", "period_ns", "burst_ends",
                            NULL};
    int fds[MAX_FLOWS];
    PyObject *fd_obj;
    int payload, stamp = 0, bucket_ms = 10, outq_every = 64, mode = MODE_SEND, batch = 32, gso_size = 0;
    double duration, rate = 0.0;
    Py_buffer stop_buf = {0}, dst_buf = {0}, sizes_buf = {0}, due_buf = {0}, ends_buf = {0};
    int loops = 1;
    unsigned long long period_ns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Odi|dpiiw*iiy*iy*y*iKy*", names, &fd_obj, &duration, &payload, &rate,
                                     &stamp, &bucket_ms, &outq_every, &stop_buf, &mode, &batch, &dst_buf, &gso_size,
                                     &sizes_buf, &due_buf, &loops, &period_ns, &ends_buf))
        return NULL;
    /* replay: n datagrams (sizes), their due times (or none), nb bursts; checked below with the rest */
    const uint32_t *sizes = sizes_buf.buf, *ends = ends_buf.buf;
    const uint64_t *due_at = due_buf.buf && due_buf.len ? due_buf.buf : NULL;
    size_t n = sizes ? (size_t)sizes_buf.len / sizeof(uint32_t) : 0;
    size_t nb = ends ? (size_t)ends_buf.len / sizeof(uint32_t) : 0;
    int replay = n > 0;
    int bad_replay = replay && (loops < 1 || nb < 1 || (mode != MODE_SEND && mode != MODE_SENDTO) ||
                                (due_at && (size_t)due_buf.len != n * sizeof(uint64_t)) || ends[nb - 1] != n);
    for (size_t i = 0; replay && !bad_replay && i < n; i++)
        bad_replay = sizes[i] > (uint32_t)payload;
    for (size_t i = 1; replay && !bad_replay && i < nb; i++)
        bad_replay = ends[i] <= ends[i - 1];
    int nfds = parse_fds(fd_obj, fds);
    int nbufs = mode == MODE_SENDMMSG && stamp ? batch : 1; /* stamped batches need a buffer per message */
    /* a stamped GSO super-datagram carries a stamp at the start of every segment */
    int stamp_every = mode == MODE_GSO && gso_size > 0 ? gso_size : payload;
    if (nfds < 0 || bad_replay || payload < 16 || payload > MAX_PAYLOAD || duration <= 0 || bucket_ms < 1 || outq_every < 1 ||
        mode < MODE_SEND || mode > MODE_GSO || batch < 1 || batch > MAX_BATCH ||
        (mode == MODE_SENDTO && dst_buf.len < (Py_ssize_t)sizeof(sa_family_t))) {
        release_all(&stop_buf, &dst_buf, &sizes_buf, &due_buf, &ends_buf);
        if (nfds >= 0)
            PyErr_SetString(PyExc_ValueError, "send_loop: bad arguments");
        return NULL;
    }
    volatile const unsigned char *stop = stop_flag(&stop_buf);
    int stopped = 0;
    size_t nbuckets = (size_t)(duration * 1000.0 / bucket_ms) + 2;
    uint32_t *b_att = calloc(nbuckets, sizeof(uint32_t));
    uint32_t *b_eag = calloc(nbuckets, sizeof(uint32_t));
    uint32_t *b_outq = calloc(nbuckets, sizeof(uint32_t));
    char *buf = calloc((size_t)nbufs, (size_t)payload);
    struct mmsghdr *msgs = calloc((size_t)batch, sizeof(*msgs));
    struct iovec *iov = calloc((size_t)batch, sizeof(*iov));
    uint64_t *f_att = calloc(MAX_FLOWS * 4, sizeof(uint64_t)), *f_sent = f_att + MAX_FLOWS,
             *f_eag = f_att + 2 * MAX_FLOWS, *f_stops = f_att + 3 * MAX_FLOWS;
    uint64_t *by_errno = calloc(ERRNO_SLOTS + 1, sizeof(uint64_t));
    size_t nrows = replay ? nb * (size_t)loops : 1;
    uint64_t *bursts = calloc(nrows * B_FIELDS, sizeof(uint64_t));
    if (!b_att || !b_eag || !b_outq || !buf || !msgs || !iov || !f_att || !by_errno || !bursts) {
        free(b_att); free(b_eag); free(b_outq); free(buf); free(msgs); free(iov); free(f_att); free(by_errno); free(bursts);
        release_all(&stop_buf, &dst_buf, &sizes_buf, &due_buf, &ends_buf);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < batch; i++) {
        iov[i].iov_base = buf + (size_t)(nbufs > 1 ? i : 0) * (size_t)payload;
        iov[i].iov_len = (size_t)payload;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    const struct sockaddr *dst = dst_buf.buf;
    socklen_t dst_len = (socklen_t)dst_buf.len;
    uint64_t attempts = 0, sent = 0, eagain = 0, enobufs = 0, other = 0, outq_sum = 0, outq_n = 0, calls = 0, stops = 0;
    int last_errno = 0, outq_max = 0, flow = 0;
    uint64_t bucket_ns = (uint64_t)bucket_ms * 1000000ull;
    uint64_t interval = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
    uint64_t start, end, now;
    int sndbufs[MAX_FLOWS];
    for (int i = 0; i < nfds; i++) {
        socklen_t len = sizeof(sndbufs[i]);
        if (getsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &sndbufs[i], &len) != 0)
            sndbufs[i] = 0x7fffffff; /* unknown: never counted as full */
    }
    uint64_t full_ns = 0, full_cpu_ns = 0, full_wait_ns = 0, last_t = 0, last_cpu = 0, last_wait = 0;
    int last_full = 0, sched_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    /* replay position: datagram j of loop k, in burst b (its row: k * nb + b); lateness of paced sends */
    size_t j = 0, b = 0, k = 0;
    uint64_t loop_base = 0, late_sum = 0, late_max = 0, *brow = bursts;

    Py_BEGIN_ALLOW_THREADS
    start = now_ns(CLOCK_MONOTONIC);
    end = start + (uint64_t)(duration * 1e9);
    now = start;
    last_t = start;
    thread_time(sched_fd, &last_cpu, &last_wait);
    while (replay || now < end) {
        if (stop && *stop) {
            stopped = 1;
            break;
        }
        size_t len = (size_t)payload;
        if (replay) {
            if (j == n) { /* one pass done: the next loop, or the end */
                if (++k == (size_t)loops)
                    break;
                j = 0;
                b = 0;
                loop_base += period_ns;
                brow = bursts + k * nb * B_FIELDS;
            }
            len = sizes[j];
            if (due_at) {
                uint64_t due = start + loop_base + due_at[j];
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
                late_sum += now - due;
                if (now - due > late_max)
                    late_max = now - due;
            }
        } else if (interval) {
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
            for (int i = 0; i < nbufs; i++) {
                for (int off = 0; off + 16 <= payload; off += stamp_every) {
                    uint64_t seq = attempts + (uint64_t)i;
                    memcpy(buf + (size_t)i * (size_t)payload + (size_t)off, &seq, 8);
                    memcpy(buf + (size_t)i * (size_t)payload + (size_t)off + 8, &tx, 8);
                }
            }
        }
        size_t bucket = (now - start) / bucket_ns;
        if (bucket >= nbuckets)
            bucket = nbuckets - 1;
        int fd = fds[flow];
        /* tried: messages the kernel tried; ok: sent; err: the errno of a failed one, or -1 for a
           sendmmsg batch that stopped early (the kernel returns the count sent, not the error) */
        int tried = 1, ok = 0, err = 0;
        if (mode == MODE_SENDMMSG) {
            int r = sendmmsg(fd, msgs, (unsigned int)batch, 0);
            if (r >= 0) {
                ok = r;
                tried = r < batch ? r + 1 : r;
                err = r < batch ? -1 : 0;
            } else {
                err = errno;
            }
        } else {
            ssize_t r = mode == MODE_SENDTO ? sendto(fd, buf, len, 0, dst, dst_len) : send(fd, buf, len, 0);
            if (r >= 0)
                ok = 1;
            else
                err = errno;
        }
        calls++;
        attempts += (uint64_t)tried;
        sent += (uint64_t)ok;
        b_att[bucket] += (uint32_t)tried;
        f_att[flow] += (uint64_t)tried;
        f_sent[flow] += (uint64_t)ok;
        if (err)
            by_errno[err == -1 ? EAGAIN : (err > 0 && err < ERRNO_SLOTS ? err : ERRNO_SLOTS)]++;
        if (err == -1 || err == EAGAIN || err == EWOULDBLOCK) {
            eagain++;
            b_eag[bucket]++;
            f_eag[flow]++;
            if (err == -1) {
                stops++;
                f_stops[flow]++;
            }
        } else if (err == ENOBUFS) {
            enobufs++;
        } else if (err) {
            other++;
            last_errno = err;
        }
        if (calls % (uint64_t)outq_every == 0) {
            int outq = 0; /* the sampled socket rotates, so every flow is seen whatever outq_every is */
            int sampled = (int)((calls / (uint64_t)outq_every) % (uint64_t)nfds);
            int got = ioctl(fds[sampled], SIOCOUTQ, &outq) == 0;
            uint64_t t = now_ns(CLOCK_MONOTONIC);
            if (t - last_t >= BUSY_EVERY_NS) {
                uint64_t cpu, wait;
                thread_time(sched_fd, &cpu, &wait);
                if (last_full) {
                    full_ns += t - last_t;
                    full_cpu_ns += cpu - last_cpu;
                    full_wait_ns += wait - last_wait;
                }
                last_t = t;
                last_cpu = cpu;
                last_wait = wait;
                last_full = got && outq >= sndbufs[sampled];
            }
            if (got) {
                outq_sum += (uint64_t)outq;
                outq_n++;
                if (outq > outq_max)
                    outq_max = outq;
                if ((uint32_t)outq > b_outq[bucket])
                    b_outq[bucket] = (uint32_t)outq;
            }
        }
        if (replay) {
            int first_eagain = err == EAGAIN && brow[B_EAG] == 0, last = j + 1 == ends[b];
            brow[B_ATT]++;
            brow[B_SENT] += (uint64_t)ok;
            brow[B_BYTES] += ok ? len : 0;
            brow[B_EAG] += err == EAGAIN;
            if (first_eagain || last) { /* the burst's peak is at its end, or where the buffer first filled */
                int outq = 0;
                if (ioctl(fd, SIOCOUTQ, &outq) == 0) {
                    if ((uint64_t)outq > brow[B_OUTQ])
                        brow[B_OUTQ] = (uint64_t)outq;
                    if (outq > outq_max)
                        outq_max = outq;
                    if ((uint32_t)outq > b_outq[bucket])
                        b_outq[bucket] = (uint32_t)outq;
                }
            }
            j++;
            if (last && j < n) {
                b++;
                brow = bursts + (k * nb + b) * B_FIELDS;
            }
        }
        if (++flow == nfds)
            flow = 0;
        now = now_ns(CLOCK_MONOTONIC);
    }
    if (last_full) { /* the last sample's interval ends with the loop */
        uint64_t cpu, wait;
        thread_time(sched_fd, &cpu, &wait);
        full_ns += now > last_t ? now - last_t : 0;
        full_cpu_ns += cpu - last_cpu;
        full_wait_ns += wait - last_wait;
    }
    if (sched_fd >= 0)
        close(sched_fd);
    Py_END_ALLOW_THREADS
    release_all(&stop_buf, &dst_buf, &sizes_buf, &due_buf, &ends_buf);

    size_t used = (size_t)((now - start) / bucket_ns) + 1;
    if (used > nbuckets)
        used = nbuckets;
    PyObject *series = PyList_New((Py_ssize_t)used);
    for (size_t i = 0; series && i < used; i++)
        PyList_SET_ITEM(series, (Py_ssize_t)i, Py_BuildValue("(III)", b_att[i], b_eag[i], b_outq[i]));
    PyObject *flows = Py_BuildValue("{s:N,s:N,s:N,s:N}", "attempts", u64_list(f_att, nfds), "sent",
                                    u64_list(f_sent, nfds), "eagain", u64_list(f_eag, nfds), "stops",
                                    u64_list(f_stops, nfds));
    PyObject *errnos = PyDict_New();
    for (int e = 0; errnos && e <= ERRNO_SLOTS; e++) {
        if (!by_errno[e])
            continue;
        PyObject *k = PyLong_FromLong(e), *v = PyLong_FromUnsignedLongLong(by_errno[e]);
        if (!k || !v || PyDict_SetItem(errnos, k, v) != 0)
            Py_CLEAR(errnos);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    PyObject *rows = PyList_New(replay ? (Py_ssize_t)nrows : 0);
    for (size_t i = 0; rows && replay && i < nrows; i++) {
        const uint64_t *r = bursts + i * B_FIELDS;
        PyList_SET_ITEM(rows, (Py_ssize_t)i, Py_BuildValue("(KKKKK)", r[B_ATT], r[B_SENT], r[B_BYTES], r[B_EAG], r[B_OUTQ]));
    }
    free(b_att); free(b_eag); free(b_outq); free(buf); free(msgs); free(iov); free(f_att); free(by_errno); free(bursts);
    if (!series || !flows || !errnos || !rows) {
        Py_XDECREF(series);
        Py_XDECREF(flows);
        Py_XDECREF(errnos);
        Py_XDECREF(rows);
        return NULL;
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:i,s:d,s:i,s:K,s:K,s:N,s:i,s:O,s:K,s:K,s:N,s:N,s:K,s:K,s:K,s:N,s:K,s:K}",
                         "attempts", attempts, "sent", sent, "eagain", eagain, "enobufs", enobufs,
                         "other_errors", other, "last_errno", last_errno,
                         "elapsed_s", (double)(now - start) / 1e9, "outq_max", outq_max,
                         "outq_sum", outq_sum, "outq_samples", outq_n, "series", series,
                         "bucket_ms", bucket_ms, "stopped", stopped ? Py_True : Py_False,
                         "calls", calls, "stops", stops, "flows", flows, "errnos", errnos, "full_ns", full_ns,
                         "full_cpu_ns", full_cpu_ns, "full_wait_ns", full_wait_ns, "bursts", rows,
                         "late_sum_ns", late_sum, "late_max_ns", late_max);
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
    {"send_loop", (PyCFunction)(void (*)(void))send_loop, METH_VARARGS | METH_KEYWORDS, "Timed non-blocking send()/sendto()/sendmmsg()/GSO loop over one or more sockets."},
    {"recv_loop", (PyCFunction)(void (*)(void))recv_loop, METH_VARARGS | METH_KEYWORDS, "recvmmsg() drain loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_engine", NULL, -1, methods};

PyMODINIT_FUNC PyInit__engine(void) { return PyModule_Create(&module); }

/* Reference sender for ci/bench_sender.py and ci/bench_modes.py: the plain C
 * non-blocking send loops that pytest-udpsend's sender is measured against, one per
 * mode.  Runs in the sender netns.
 * usage: c_send_loop ADDR PORT DURATION_S PAYLOAD CPU [MODE [N]]
 *   MODE send (default) | sendto | sendmmsg (N = batch, default 32) | gso (N = gso_size)
 * prints: attempts sent eagain  (sent: datagrams, or GSO super-datagrams) */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/udp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

int main(int argc, char **argv)
{
    if (argc < 6 || argc > 8) {
        fprintf(stderr, "usage: %s ADDR PORT DURATION_S PAYLOAD CPU [send|sendto|sendmmsg|gso [N]]\n", argv[0]);
        return 2;
    }
    const char *mode = argc > 6 ? argv[6] : "send";
    int n = argc > 7 ? atoi(argv[7]) : 32;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(atoi(argv[5]), &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) { perror("sched_setaffinity"); return 1; }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int sendto_mode = strcmp(mode, "sendto") == 0, mmsg = strcmp(mode, "sendmmsg") == 0;
    if (fd < 0 || (!sendto_mode && connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0)) { perror("socket/connect"); return 1; }
    if (strcmp(mode, "gso") == 0 && setsockopt(fd, SOL_UDP, UDP_SEGMENT, &n, sizeof(n)) != 0) { perror("UDP_SEGMENT"); return 1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    size_t len = (size_t)atoi(argv[4]);
    char *buf = calloc(1, len);
    struct mmsghdr *msgs = calloc((size_t)n, sizeof(*msgs));
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    for (int i = 0; i < n; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long attempts = 0, sent = 0, eagain = 0;
    double end = now() + atof(argv[3]);
    while (now() < end) {
        if (mmsg) {
            int r = sendmmsg(fd, msgs, (unsigned)n, 0);
            if (r >= 0) {
                sent += (unsigned)r;
                attempts += (unsigned)(r < n ? r + 1 : r);
                eagain += r < n;
            } else {
                attempts++;
                eagain += errno == EAGAIN;
            }
            continue;
        }
        attempts++;
        ssize_t r = sendto_mode ? sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof(to)) : send(fd, buf, len, 0);
        if (r >= 0) sent++;
        else if (errno == EAGAIN) eagain++;
    }
    printf("%llu %llu %llu\n", attempts, sent, eagain);
    return 0;
}

/* Reference sender for ci/bench_sender.py: the plain C non-blocking send() loop
 * that pytest-udpsend's sender is measured against.  Runs in the sender netns.
 * usage: c_send_loop ADDR PORT DURATION_S PAYLOAD CPU
 * prints: attempts sent eagain */
#define _GNU_SOURCE
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

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s ADDR PORT DURATION_S PAYLOAD CPU\n", argv[0]);
        return 2;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(atoi(argv[5]), &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) { perror("sched_setaffinity"); return 1; }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) { perror("socket/connect"); return 1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    size_t len = (size_t)atoi(argv[4]);
    char *buf = calloc(1, len);
    unsigned long long attempts = 0, sent = 0, eagain = 0;
    double end = now() + atof(argv[3]);
    while (now() < end) {
        attempts++;
        if (send(fd, buf, len, 0) >= 0) sent++;
        else if (errno == EAGAIN) eagain++;
    }
    printf("%llu %llu %llu\n", attempts, sent, eagain);
    return 0;
}

"""The "user's own program" the tests run as a sender: a non-blocking C sender that prints its own counts.

``own_sender(tmp_path)`` builds it; run it as ``sender SECONDS`` in a sender namespace
(it reads ``UDPSEND_DST``/``UDPSEND_PORT``), and ``counts(stdout)`` reads back what it saw,
so a test can check the plugin's outside measurement against the program's own.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = r"""
/* a non-blocking UDP sender for argv[1] seconds with a 4 KB SO_SNDBUF; prints what it saw */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(getenv("UDPSEND_PORT")))};
    inet_pton(AF_INET, getenv("UDPSEND_DST"), &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0), sndbuf = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) { perror("connect"); return 1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char buf[1400];
    unsigned long sent = 0, eagain = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        if (send(fd, buf, sizeof(buf), 0) >= 0) sent++;
        else if (errno == EAGAIN) eagain++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < atof(argv[1]));
    printf("sent %lu eagain %lu\n", sent, eagain);
    return 0;
}
"""


def own_sender(tmp_path: Path) -> Path:
    """The program, built in ``tmp_path`` (the test skips without a C compiler)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) to build the test's sender: apt-get install gcc")
    (tmp_path / "sender.c").write_text(SOURCE)
    subprocess.run(["cc", "-O2", "-o", str(tmp_path / "sender"), str(tmp_path / "sender.c")], check=True)
    return tmp_path / "sender"


def counts(stdout: str) -> dict[str, int]:
    """What the program printed: ``{"sent": N, "eagain": M}``."""
    words = stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}

"""Your own program as the sender: "does OUR binary see EAGAIN on this kernel?"

``sender_process.run(argv)`` runs a command in the sender namespace (pinned, under
the ``cpu_pressure`` marker), tells it where to send (``UDPSEND_DST``,
``UDPSEND_DST6``, ``UDPSEND_PORT``), and measures it from outside: EAGAIN is the
sender namespace's ``UdpSndbufErrors`` delta, which is exact there because only your
program sends from that namespace.  Here "your program" is a tiny C sender the test
builds, which prints its own EAGAIN count so the two can be compared.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

SENDER_C = textwrap.dedent(
    r"""
    /* a non-blocking UDP sender with a small buffer; prints what it saw */
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
        int fd = socket(AF_INET, SOCK_DGRAM, 0), sndbuf = atoi(argv[2]);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) { perror("connect"); return 1; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        static char buf[1400];
        unsigned long sent = 0, eagain = 0;
        double seconds = atof(argv[1]);
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
            if (send(fd, buf, sizeof(buf), 0) >= 0) sent++;
            else if (errno == EAGAIN) eagain++;
            clock_gettime(CLOCK_MONOTONIC, &t);
        } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
        printf("sent %lu eagain %lu\n", sent, eagain);
        return 0;
    }
    """
)


@pytest.fixture
def my_sender(tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc): apt-get install gcc to build the example's sender")
    source = tmp_path / "sender.c"
    source.write_text(SENDER_C)
    subprocess.run(["cc", "-O2", "-o", str(tmp_path / "sender"), str(source)], check=True)
    return tmp_path / "sender"


def own_counts(stdout: str) -> dict[str, int]:
    words = stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


@pytest.mark.topology(qdisc="tbf rate 20mbit burst 32kb latency 50ms")
@pytest.mark.eagain_rate(min=0.3)
def test_our_binary_eagain_as_the_kernel_counts_it(sender_process, my_sender):
    """A 20 Mbit/s token bucket holds the skbs, still charged to the socket, so a 4 KB
    buffer (8 KB effective) is full almost all the time and most sends fail, on any
    kernel: the rate is fixed by the shaper, not by this machine.  The EAGAIN seen from
    outside is exactly the program's own count, and so is what it sent."""
    r = sender_process.run([str(my_sender), "1.0", "4096"], cpu=0)
    own = own_counts(r.process["stdout"])
    assert r.eagain == own["eagain"]
    assert r.sent == own["sent"]
    assert r.received + r.rcvbuf_errors <= r.sent

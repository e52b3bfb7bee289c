"""Faults a UDP application meets besides EAGAIN, and what it sees of each.

* **ENOBUFS from a qdisc that drops.**  When the qdisc refuses a datagram
  (``NET_XMIT_DROP``, here a token bucket whose queue holds two datagrams), UDP turns
  it into ENOBUFS, and what the application sees depends on one socket option:

  - without ``IP_RECVERR`` (the default) ``send()`` *succeeds*: the kernel counts the
    loss in ``UdpSndbufErrors`` and hides it.  The program's own books say every
    datagram went out; from outside, ``UdpOutDatagrams`` counts only the ones the qdisc
    took.  Seen on this project's 6.18 host in 0.5 s: 568334 sends, 568334 "ok",
    46 sent, 568288 dropped in silence.
  - with ``IP_RECVERR`` the same drop fails the call with ENOBUFS: the program's ENOBUFS
    count equals ``UdpSndbufErrors``.  Seen here: 266734 sends, 46 ok, 266688 ENOBUFS.

  Either way the dropped skb is freed at once, so the send buffer never fills: a
  program that watches only its buffer (or EAGAIN) sees no backpressure at all.

* **A partial sendmmsg().**  A batch stops at the first message that does not fit; the
  kernel returns how many went out and drops the error, so the program learns only
  "fewer than I asked".  Each stopped batch and each batch that sent nothing counts
  one ``UdpSndbufErrors``.  Seen here in 0.5 s: 1146805 calls, 700 partial,
  1146105 failed with EAGAIN, none complete, 866 datagrams sent.

Every claim is an equality the kernel fixes (the program's counts against the
namespace's counters), or a fact of the shaping ("the qdisc drops", "32 never fit").
Checksum offload off (``topology(tx_checksum=False)``) and UDP GSO are in their own
example, examples/test_gso_checksum.py (EIO before 6.11, software checksums from 6.11).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Sends 1400-byte datagrams on a blocking socket for a while and prints its own counts.
# A blocking socket never gets EAGAIN, so every failure is the qdisc's ENOBUFS.
ENOBUFS_SENDER = textwrap.dedent(
    """
    import errno, os, socket, sys, time

    recverr, seconds = sys.argv[1] == "recverr", float(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if recverr:
        sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)
    sock.connect((os.environ["UDPSEND_DST"], int(os.environ["UDPSEND_PORT"])))
    ok = enobufs = other = 0
    payload = bytes(1400)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.send(payload)
            ok += 1
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                enobufs += 1
            else:
                other += 1
    print(f"ok {ok} enobufs {enobufs} other {other}")
    """
)

# Non-blocking sendmmsg() in batches of 32 with a small buffer; prints how each call ended.
SENDMMSG_C = textwrap.dedent(
    r"""
    #define _GNU_SOURCE
    #include <arpa/inet.h>
    #include <errno.h>
    #include <fcntl.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <time.h>
    enum { BATCH = 32 };
    int main(int argc, char **argv) {
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(getenv("UDPSEND_PORT")))};
        inet_pton(AF_INET, getenv("UDPSEND_DST"), &to.sin_addr);
        int fd = socket(AF_INET, SOCK_DGRAM, 0), sndbuf = atoi(argv[2]);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) { perror("connect"); return 1; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        static char buf[1400];
        struct iovec iov = {buf, sizeof(buf)};
        struct mmsghdr msgs[BATCH];
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < BATCH; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
        unsigned long calls = 0, whole = 0, partial = 0, failed = 0, other = 0, sent = 0;
        double seconds = atof(argv[1]);
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
            int n = sendmmsg(fd, msgs, BATCH, 0);
            calls++;
            if (n == BATCH) whole++;
            else if (n > 0) partial++;          /* stopped part-way: no errno to read */
            else if (n < 0 && errno == EAGAIN) failed++;
            else other++;
            if (n > 0) sent += n;
            clock_gettime(CLOCK_MONOTONIC, &t);
        } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
        printf("calls %lu whole %lu partial %lu failed %lu other %lu sent %lu\n",
               calls, whole, partial, failed, other, sent);
        return 0;
    }
    """
)

# A token bucket whose queue holds two 1400-byte datagrams: everything beyond is dropped
# by the qdisc (1 Mbit/s is about 86 datagrams a second; any sender sends faster).
DROPPING_QDISC = "tbf rate 1mbit burst 1600 limit 3000"


def own_counts(stdout: str) -> dict[str, int]:
    words = stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


@pytest.fixture
def enobufs_sender(tmp_path: Path) -> Path:
    script = tmp_path / "enobufs_sender.py"
    script.write_text(ENOBUFS_SENDER)
    return script


@pytest.fixture
def sendmmsg_sender(tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc): apt-get install gcc to build the example's sendmmsg sender")
    source = tmp_path / "sendmmsg.c"
    source.write_text(SENDMMSG_C)
    subprocess.run(["cc", "-O2", "-o", str(tmp_path / "sendmmsg"), str(source)], check=True)
    return tmp_path / "sendmmsg"


@pytest.mark.topology(qdisc=DROPPING_QDISC)
def test_qdisc_drops_are_silent_without_ip_recverr(sender_process, enobufs_sender):
    """Without IP_RECVERR every send() succeeds, also the ones the qdisc dropped: the
    program's books show no loss, the kernel's show most of them gone."""
    r = sender_process.run([sys.executable, str(enobufs_sender), "plain", "0.5"], cpu=0)
    own = own_counts(r.process["stdout"])
    assert own["enobufs"] == own["other"] == 0  # the application saw no error at all...
    assert own["ok"] == r.sent + r.snmp["UdpSndbufErrors"]  # ...while the kernel split its sends in two
    assert r.snmp["UdpSndbufErrors"] > r.sent  # the qdisc dropped most: it holds two datagrams
    assert r.busy_wait is None  # dropped skbs are freed at once: the send buffer never filled
    if r.errno is not None:  # counted from outside: the send calls returned no error
        assert r.errno.get("ENOBUFS", 0) == 0


@pytest.mark.topology(qdisc=DROPPING_QDISC)
def test_qdisc_drops_fail_the_send_with_ip_recverr(sender_process, enobufs_sender):
    """With IP_RECVERR the same drops fail send() with ENOBUFS, one for one."""
    r = sender_process.run([sys.executable, str(enobufs_sender), "recverr", "0.5"], cpu=0)
    own = own_counts(r.process["stdout"])
    assert own["other"] == 0
    assert own["enobufs"] == r.snmp["UdpSndbufErrors"] > 0  # every drop reached the application
    assert own["ok"] == r.sent  # and every success went out
    assert r.busy_wait is None
    if r.errno is not None:
        assert r.errno.get("ENOBUFS", 0) == own["enobufs"]


@pytest.mark.topology(qdisc="tbf rate 20mbit burst 4kb latency 50ms")
def test_sendmmsg_returns_the_count_not_the_error(sender_process, sendmmsg_sender):
    """A 4 KB buffer (8 KB effective: four 1400-byte datagrams) behind a 20 Mbit/s token
    bucket with a 4 KB burst: a batch of 32 never fits in one call, so calls end
    part-way (the kernel returns the count, the EAGAIN is lost) or fail at the first
    message.  Each of those is one UdpSndbufErrors; what the calls returned is what left."""
    r = sender_process.run([str(sendmmsg_sender), "0.5", "4096"], cpu=0)
    own = own_counts(r.process["stdout"])
    assert own["other"] == own["whole"] == 0
    assert own["partial"] > 0  # a call stopped part-way and said only how many it sent
    assert own["sent"] == r.sent  # the returned counts add up to what the kernel sent
    assert own["partial"] + own["failed"] == r.snmp["UdpSndbufErrors"]  # one refusal per stopped call
    if r.errno is not None:  # a syscall-exit count misses the partial calls' EAGAIN, a per-message one has them
        assert own["failed"] <= r.errno.get("EAGAIN", 0) <= own["failed"] + own["partial"]

"""Honest accounting: does your sender's own drop counter match what the kernel refused?

A statsd client, a QUIC stack or a log shipper on a non-blocking UDP socket does not
wait when the send buffer is full: it drops the datagram and counts it (hot-shots,
DogStatsD's ``packets_dropped``, s2n-quic's and ngtcp2's loss counters).  That counter
is what the team's dashboards and alerts read, so a drop it misses is a loss no one
sees.  This example is the pattern to copy: run the sender under a backpressure that
the mechanism fixes, read the total it logs at exit, and compare it with the kernel's
count of refused sends, taken from outside the program.

The sender below stands for yours: swap its argv for your binary and its log line for
your metric.  A 1 Mbit/s token bucket holds the skbs, still charged to the socket, so a
4 KB buffer (8 KB effective) is full nearly all the time and most sends fail on any
machine: the bucket passes about 90 datagrams of 1400 B a second, and even this Python
sender under the kernel lane's emulation tries about 1500 (it once met a 20 Mbit/s
bucket there at 1482 a second, slower than the bucket's 1785, and only 17 % of its sends
failed).  Seen on this project's 6.18 host in 0.5 s: 70 sent, 230692 to 241659 dropped, exactly as the
kernel counted them.

What a counter of EAGAIN cannot see, qdisc drops on a socket without IP_RECVERR, is
shown in examples/test_faults.py.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

# A sender that keeps its own books: EAGAIN counts as a drop, the totals are logged at exit.
SENDER = textwrap.dedent(
    """
    import atexit, logging, os, socket, sys, time

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
    log = logging.getLogger("metrics")


    class Sender:
        def __init__(self, sndbuf):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            self.sock.connect((os.environ["UDPSEND_DST"], int(os.environ["UDPSEND_PORT"])))
            self.sock.setblocking(False)
            self.sent = self.dropped = 0

        def send(self, datagram):
            try:
                self.sock.send(datagram)
            except BlockingIOError:  # EAGAIN: the buffer is full, and a metric is not worth waiting for
                self.dropped += 1
            else:
                self.sent += 1


    sender = Sender(int(sys.argv[2]))
    atexit.register(lambda: log.info("sent=%d dropped=%d", sender.sent, sender.dropped))
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        sender.send(b"x" * 1400)
    """
)


def logged_totals(stdout: str) -> dict[str, int]:
    """The sender's last ``sent=N dropped=N`` log line."""
    found = re.findall(r"sent=(\d+) dropped=(\d+)", stdout)
    assert found, f"the sender logged no totals: {stdout!r}"
    sent, dropped = found[-1]
    return {"sent": int(sent), "dropped": int(dropped)}


@pytest.fixture
def my_sender(tmp_path: Path) -> Path:
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    return script


@pytest.mark.topology(qdisc="tbf rate 1mbit burst 32kb latency 50ms")
@pytest.mark.eagain_rate(min=0.3)
def test_the_drop_counter_matches_what_the_kernel_refused(sender_process, my_sender):
    r = sender_process.run([sys.executable, str(my_sender), "0.5", "4096"], cpu=0)
    own = logged_totals(r.process["stdout"])
    assert own["dropped"] == r.eagain  # UdpSndbufErrors of the sender namespace: only this program sends there
    assert own["sent"] == r.sent  # UdpOutDatagrams
    if r.errno is not None:  # the failed send calls by errno, where they can be counted from outside
        assert r.errno.get("EAGAIN", 0) == own["dropped"]
        assert sum(r.errno.values()) == own["dropped"]  # nothing else failed that the counter would have missed

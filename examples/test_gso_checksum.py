"""UDP GSO on a link without checksum offload: a kernel upgrade changes what your sender sees.

A QUIC stack batches datagrams with UDP GSO (``UDP_SEGMENT``): one send of 14000 bytes that
the stack below cuts into 1400-byte segments.  Each segment's UDP checksum is left to the
device (``CHECKSUM_PARTIAL``).  On a link whose checksum offload is off (some virtual NICs,
tunnels, ``ethtool -K ... tx off``), kernels before 6.11 refuse such a send outright:
``udp_send_skb`` fails it with EIO, every time, and nothing leaves.  That is quic-go #3911
(also quinn #1128, neqo #3032, curl #8909): the stack must notice EIO and fall back to one
datagram per send, and msquic's fallback PR #3867 said "Not sure how to actually test this
fallback".  Commit 10154dbded6d ("udp: Allow GSO transmit from devices with no checksum
offload", 6.11) makes the kernel checksum the segments in software instead: the same program
then sends, only slower.

So the same test has two truths, one per side of 6.11, and the example says both:

* before 6.11 (the kernel lane's 6.1): every GSO send fails with EIO, nothing is sent;
* from 6.11 (the lane's 6.12, this project's 6.18 host): no EIO, the sends go out.

And on either side the program's own count of EIO (and of EAGAIN, if its buffer ever
filled) equals ``SendResult.errno``, counted from outside by tracing its send calls: EIO is
not one of the errors the kernel's ``UdpSndbufErrors`` counts, so without that trace a failing
GSO sender is invisible to every counter.  The control test keeps checksum offload on: GSO
works there on every kernel, so the EIO is the missing offload's, not GSO's.

Seen with this sender in 0.5 s: the 6.1 lane, 4211 EIO and 0 sent; the 6.12 lane, 0 EIO and
1191 sent (2743 with offload); this 6.18 host, 0 EIO and about 52000 sent (67000 with offload;
the plugin's C loop in the same scenario sends about a sixth of its offloaded rate).  The runs
behind the claims: docs/calibration.md.

What your test learns: run your sender here, on both sides of 6.11, and assert that it
falls back (its own "GSO off" counter, datagrams still arriving) where the kernel says EIO.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

# 6.11: commit 10154dbded6d, software checksums for UDP GSO where the device has no offload
SOFTWARE_CHECKSUM = (6, 11)

# A GSO sender that keeps its own books: one non-blocking send() of 14000 bytes per call, cut
# into 1400-byte segments by the kernel; it counts how each call ended and prints the totals.
GSO_SENDER = textwrap.dedent(
    """
    import errno, os, socket, sys, time

    UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1400)
    sock.connect((os.environ["UDPSEND_DST"], int(os.environ["UDPSEND_PORT"])))
    sock.setblocking(False)
    counts = {"ok": 0, "eio": 0, "eagain": 0, "other": 0}
    payload = bytes(14000)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        try:
            sock.send(payload)
            counts["ok"] += 1
        except OSError as exc:
            name = {errno.EIO: "eio", errno.EAGAIN: "eagain"}.get(exc.errno, "other")
            counts[name] += 1
    print(" ".join(f"{k} {v}" for k, v in counts.items()))
    """
)


def own_counts(stdout: str) -> dict[str, int]:
    words = stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


def kernel_at_least(release: str, version: tuple[int, int]) -> bool:
    major, minor = release.split(".")[:2]
    return (int(major), int("".join(c for c in minor if c.isdigit()))) >= version


@pytest.fixture
def gso_sender(tmp_path: Path) -> Path:
    script = tmp_path / "gso_sender.py"
    script.write_text(GSO_SENDER)
    return script


def outside_equals_own(r, own: dict[str, int]) -> None:
    """The program's errors, counted from outside, are the ones it counted itself."""
    if r.errno is None:  # no tracing here (not root, no BTF, no bcc): errno_method says why
        print(f"errno not counted from outside: {r.errno_method}")
        return
    assert r.errno.get("EIO", 0) == own["eio"], (r.errno, own, r.errno_method)
    assert r.errno.get("EAGAIN", 0) == own["eagain"], (r.errno, own, r.errno_method)
    assert sum(r.errno.values()) == own["eio"] + own["eagain"] + own["other"], (r.errno, own)


@pytest.mark.topology(tx_checksum=False)
def test_gso_without_checksum_offload(sender_process, gso_sender):
    r = sender_process.run([sys.executable, str(gso_sender), "0.5"], cpu=0)
    own = own_counts(r.process["stdout"])
    print(f"{r.kernel}: own {own}, sent {r.sent}, errno from outside {r.errno} ({r.errno_method})")
    if kernel_at_least(r.kernel, SOFTWARE_CHECKSUM):  # the kernel checksums in software
        assert own["eio"] == 0 and own["ok"] > 0, own
        assert r.sent >= own["ok"]  # every successful send left, as at least one datagram
    else:  # before 10154dbded6d: the device cannot checksum, so every GSO send is refused
        assert own["eio"] > 0 and own["ok"] == own["other"] == 0, own
        assert r.sent == 0  # nothing left the namespace
    assert r.eagain == own["eagain"]  # UdpSndbufErrors: EIO is not in it, only a full buffer is
    outside_equals_own(r, own)


def test_gso_with_checksum_offload_works_on_every_kernel(sender_process, gso_sender):
    """The control: the same sender on a link that offloads checksums never sees EIO."""
    r = sender_process.run([sys.executable, str(gso_sender), "0.5"], cpu=0)
    own = own_counts(r.process["stdout"])
    print(f"{r.kernel}: own {own}, sent {r.sent}, errno from outside {r.errno} ({r.errno_method})")
    assert own["eio"] == own["other"] == 0 and own["ok"] > 0, own
    assert r.sent >= own["ok"]
    outside_equals_own(r, own)

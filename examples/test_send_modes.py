"""Send patterns production UDP applications use, and where they differ from plain send().

Telemetry agents and QUIC stacks send with ``sendmmsg()`` batches or UDP GSO
(``UDP_SEGMENT``), media relays with ``sendto()`` on one unconnected socket, busy
services from several sockets or threads.  What matters for EAGAIN is how much each
call charges to ``sk_wmem_alloc`` at once:

* GSO charges the whole super-datagram (here 64 KB) in one skb.  The charge check
  only asks "is the buffer already full?", so the first super-datagram always goes
  out, but while it is in flight (RPS moves its release to the other CPU) the next
  one finds the buffer full.  A buffer that 1400-byte sends never fill is full after
  one GSO send.
* A ``sendmmsg()`` batch stops at the first message that does not fit; the kernel
  returns how many went out, not the error.  pytest-udpsend counts such a batch as k
  sent and one EAGAIN attempt, and reports the stops (``result.stops``).

Bounds are wide: they hold 20 runs out of 20 on a loaded 2-core VM (6.18).
"""

from __future__ import annotations

import pytest

# 65536 requested is 131072 effective: room for about 56 1400-byte datagrams (2.3 KB
# of truesize each), but for only two 64 KB GSO super-datagrams.  Measured on 6.18:
# plain send 0 to 0.9 % EAGAIN, GSO 95 to 97 %.
SNDBUF = 65536


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.udpsend(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=SNDBUF)
@pytest.mark.eagain_rate(max=0.05)
def test_plain_send_fits_the_buffer(udpsend_result):
    """1400-byte send()s with RPS: the buffer holds many datagrams in flight."""
    assert udpsend_result.sent > 10_000


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.udpsend(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=SNDBUF, mode="gso", payload=64000, gso_size=1400)
@pytest.mark.eagain_rate(min=0.3)
def test_gso_fills_the_same_buffer_with_one_send(udpsend_result):
    """The same buffer and link with 64 KB GSO super-datagrams: most sends hit EAGAIN."""
    r = udpsend_result
    assert r.segments == r.sent * 46  # 64000 / 1400, rounded up: the wire datagrams
    assert r.snmp["UdpOutDatagrams"] == r.sent  # the kernel counts each super-datagram once
    assert r.wmem["max_bytes"] >= 64000  # one super-datagram's charge at once


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.udpsend(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=4096, mode="sendmmsg", batch=32)
def test_sendmmsg_batches_stop_part_way(udpsend_result):
    """With room for three datagrams, batches of 32 stop part-way: every stop is one
    EAGAIN attempt, the messages before it are sent, the ones after it not tried."""
    r = udpsend_result
    assert r.stops > 0 and r.stops <= r.eagain <= r.snmp["UdpSndbufErrors"]
    assert r.attempts == r.sent + r.eagain + r.enobufs + r.other_errors
    assert r.attempts < r.calls * 32


@pytest.mark.udpsend(duration=1.0, mode="sendto", flows=4, threads=2, cpu=[0, 1])
def test_many_sockets_from_two_threads(udpsend_result):
    """Eight unconnected sockets (distinct source ports), four per pinned thread; the
    result keeps each socket's counts, and the totals are their sums."""
    r = udpsend_result
    assert len({f["sport"] for f in r.flows}) == 8
    assert sum(f["sent"] for f in r.flows) == r.sent == r.snmp["UdpOutDatagrams"]
    assert min(f["sent"] for f in r.flows) > 1_000

"""The EAGAIN story, as a platform team would gate it: copy this file into your suite.

A non-blocking UDP send() fails with EAGAIN when the socket's sk_wmem_alloc (bytes
of TX skbs charged to it, ``skb_set_owner_w``) reaches sk_sndbuf.  The charge is
released by ``sock_wfree``, when the skb is orphaned or freed, and *where* that
runs decides whether a sender ever sees EAGAIN.  Each test pins one kernel
behaviour down; a kernel or sysctl change that moves it fails the gate.

The numbers here are wide bounds measured on a shared 2-core VM (kernel 6.18);
tighten them for your own hardware from a saved --udpsend-json run.
"""

from __future__ import annotations

import pytest

# A small send buffer makes the effect of *where* sock_wfree runs visible: 4096
# requested is 8192 effective (the kernel doubles it), about five 1400-byte datagrams.
SMALL_SNDBUF = 4096


@pytest.mark.udpsend(duration=1.0, cpu=0, sndbuf=SMALL_SNDBUF)
@pytest.mark.eagain_rate(max=0.001)
def test_plain_veth_never_fills_the_send_buffer(udpsend_result):
    """Plain veth, no RPS: the skb keeps its owner across the veth into the peer
    namespace and ``sock_wfree`` runs when ``ip_rcv_core()`` orphans it, inside the
    softirq that the sender's own ``local_bh_enable()`` in ``dev_queue_xmit`` runs,
    before send() returns.  So even a five-datagram send buffer never fills."""
    assert udpsend_result.sent > 10_000
    assert udpsend_result.wmem["max_bytes"] <= 2 * 1472 + 1024  # at most one skb in flight, plus accounting slack


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=SMALL_SNDBUF)
@pytest.mark.eagain_rate(min=0.01)
@pytest.mark.time_squeeze(min=1)
def test_rps_to_a_busy_cpu_with_a_low_budget_gives_eagain(udpsend_result):
    """RPS steers the receive path to CPU 1, which is busy (two hogs and the
    application), and ``netdev_budget=8`` cuts each NET_RX softirq run short
    (time_squeeze).  ``sock_wfree`` now runs later, on another CPU, so datagrams
    stay charged to the sender's socket after send() returned: EAGAIN."""
    r = udpsend_result
    assert r.softnet["1"]["time_squeeze"] >= 1  # the squeeze happens on the RPS CPU
    assert r.wmem["max_bytes"] >= r.sndbuf_effective  # the buffer really was full


@pytest.mark.topology(rps_cpus=[1])
def test_a_bigger_forced_send_buffer_absorbs_the_deferral(udp_sender, sysctl):
    """The remedy for the RPS case: a send buffer large enough for the datagrams in
    flight while sock_wfree is deferred.  ``SO_SNDBUF`` is clamped to
    ``net.core.wmem_max`` (then doubled); ``SO_SNDBUFFORCE`` (CAP_NET_ADMIN) is not."""
    sysctl.set("net.core.wmem_max", 65536)
    clamped = udp_sender.run(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=4 << 20)
    forced = udp_sender.run(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=4 << 20, force_sndbuf=True)
    assert clamped.sndbuf_effective == 2 * 65536
    assert forced.sndbuf_effective == 2 * (4 << 20)
    assert forced.eagain_rate <= 0.001
    assert forced.wmem["max_bytes"] < forced.sndbuf_effective


@pytest.mark.topology(qdisc="tbf rate 200mbit burst 32kb latency 50ms")
@pytest.mark.udpsend(duration=1.0, cpu=0)
@pytest.mark.eagain_rate(min=0.3)
def test_a_shaped_link_makes_the_sender_wait(udpsend_result):
    """A token bucket on the sender's veth holds skbs in the qdisc; they stay charged
    to the socket until dequeued and passed on, so a sender faster than 200 Mbit/s
    fills its send buffer and most attempts get EAGAIN."""
    r = udpsend_result
    rate_bits = r.pps * (r.payload + 42) * 8
    assert rate_bits < 260e6  # the shaper, not the sender, sets the pace
    assert r.snmp["UdpSndbufErrors"] >= r.eagain  # the kernel counted every EAGAIN we saw

"""The exact eBPF probe.  Needs kprobes, bcc and kernel headers: on a host without them
(this project's CI host) these run through the kernel lane, see ci/lane.sh."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.bpf


@pytest.mark.udpsend(duration=1.0, cpu=0)
@pytest.mark.wfree_latency(backend="bpf")
def test_every_datagram_is_released_once_inline_on_plain_veth(udpsend_result):
    r, w = udpsend_result, udpsend_result.wfree
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    assert sum(w["contexts"].values()) == w["count"]
    assert w["contexts"]["inline"] >= 0.9 * w["count"]  # sock_wfree ran in the sender's own syscall
    assert w["p50_us"] <= w["p99_us"] <= w["max_us"] * 1.13  # bucket midpoints may exceed the exact max a little


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.udpsend(duration=1.0, cpu=0, sndbuf=16384)
@pytest.mark.wfree_latency(backend="bpf")
def test_rps_moves_sock_wfree_out_of_the_senders_syscall(udpsend_result):
    r, w = udpsend_result, udpsend_result.wfree
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    assert sum(w["contexts"].values()) == w["count"]
    outside = w["count"] - w["contexts"]["inline"]
    assert outside >= 0.1 * w["count"], w["contexts"]


@pytest.mark.udpsend(duration=0.5, cpu=0, payload=3000)
@pytest.mark.wfree_latency(backend="bpf")
def test_fragmented_datagrams_count_once(udpsend_result):
    """3000 bytes over a 1500 MTU: the head skb is charged once and every fragment gets a
    sock_wfree of its own; the probe must still count one release per datagram."""
    r, w = udpsend_result, udpsend_result.wfree
    assert r.snmp.get("IpFragCreates", 0) >= 2 * r.sent  # the datagrams really were fragmented
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    assert abs(w["charges"] - w["count"]) <= 0.05 * w["count"]

"""Where and when sock_wfree runs: latency bounds that a kernel upgrade must keep.

With ``--udpsend-backend bpf`` (a kernel with kprobes, bcc and headers: see the
kernel lane, ``--udpsend-kernel``) these are exact per-skb figures and contexts;
elsewhere the timestamp estimate is used (see ``pytest_udpsend/probes.py``).
"""

from __future__ import annotations

import pytest


@pytest.mark.udpsend(duration=1.0, cpu=0)
@pytest.mark.wfree_latency(p50_us=200, p99_us=5000)
def test_plain_veth_releases_quickly(udpsend_result, wfree_probe):
    """Without RPS the release happens inside the sender's own softirq: fast."""
    w = udpsend_result.wfree
    assert w["backend"] == wfree_probe.backend
    assert w["count"] >= 0.9 * udpsend_result.received or w["backend"] == "bpf"


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(duration=1.0, cpu=0, receiver_cpu=1)
@pytest.mark.wfree_latency(p99_us=1_000_000)
def test_rps_to_a_busy_cpu_defers_the_release(udpsend_result):
    """With RPS to a busy CPU the release waits for that CPU's softirq; the tail
    grows but the release comes: a p99 of a second would mean releases parked
    for whole seconds.  (The lane's runs reach 113 ms under TCG on 6.1 and 6.12:
    docs/calibration.md; the bound is the mechanism's, not a machine's.)"""
    w = udpsend_result.wfree
    if w["backend"] == "bpf":
        assert w["contexts"].get("inline", 0) < w["count"]  # some ran outside the sender's syscall

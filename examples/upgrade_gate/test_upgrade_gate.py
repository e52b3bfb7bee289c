"""An upgrade gate: the same scenarios under the fleet's kernel and the candidate.

Run once per kernel through the kernel lane and compare (see README, "Gating a
kernel upgrade"); no fixed bounds here: the baseline *is* the bound.  The
scenarios follow the lane table in FIELD-NOTES: a small send buffer (16384
requested), the sender on CPU 0, with and without RPS to CPU 1, a low and the
default netdev_budget, two CPU hogs on the receiving CPU.  6.1 still lets
ksoftirqd take over softirq work under load ("softirq: Let ksoftirqd do its job",
reverted in 6.5): the bpf backend's sock_wfree contexts show where it moved.
"""

from __future__ import annotations

import pytest

SEND = {"duration": 1.0, "cpu": 0, "sndbuf": 16384}


@pytest.mark.sysctl({"net.core.netdev_budget": 4})
@pytest.mark.cpu_pressure(cpus=[0], workers=2)
@pytest.mark.udpsend(**SEND)
def test_no_rps_hogs_on_the_sender_cpu(udpsend_result, wfree_probe):
    """Without RPS nothing raises NET_RX from an IRQ on veth: sock_wfree stays inline."""
    assert udpsend_result.sent > 0


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 4})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(**SEND)
def test_rps_low_budget_hogs_on_the_rps_cpu(udpsend_result, wfree_probe):
    assert udpsend_result.sent > 0


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 4})
@pytest.mark.udpsend(**SEND)
def test_rps_low_budget_idle(udpsend_result, wfree_probe):
    assert udpsend_result.sent > 0


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(**SEND)
def test_rps_default_budget_hogs_on_the_rps_cpu(udpsend_result, wfree_probe):
    assert udpsend_result.sent > 0

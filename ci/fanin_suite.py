"""The suite ``ci/fanin.sh --measure`` runs on each runner: two scenarios, short runs, meant to be
repeated (--udpsend-repeat) so the fan-in gate has samples to judge."""

from __future__ import annotations

import pytest

SEND = {"duration": 0.5, "cpu": 0, "receiver_cpu": 1}


@pytest.mark.udpsend(**SEND)
def test_plain(udpsend_result, wfree_probe):
    """Plain veth: sock_wfree inline, no EAGAIN on any kernel."""
    assert udpsend_result.sent > 0


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(sndbuf=16384, **SEND)
def test_rps_low_budget_hogs(udpsend_result, wfree_probe):
    """RPS to a busy CPU with a low budget: the release deferred, where it ran differs by kernel."""
    assert udpsend_result.sent > 0

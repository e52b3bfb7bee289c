"""netem where the kernel has sch_netem: the lane's Debian kernel ships it as a module.

One guest boot (~60-120 s under TCG).  The delay shows in the receiver-timestamp estimate
(it stamps at reception, so time held in the qdisc counts), loss in ``received``; the
plain pair in the same session is the control.  ci/lane.sh runs it with UDPSEND_LANE_IMAGE.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = [
    pytest.mark.lane,
    pytest.mark.skipif(not os.environ.get("UDPSEND_LANE_IMAGE") or not shutil.which("qemu-system-x86_64"),
                       reason="needs UDPSEND_LANE_IMAGE and qemu (ci/lane.sh sets both up)"),  # fmt: skip
]

GUEST_TESTS = """
import pytest

RUN = dict(duration=1.0, rate=2000, payload=200)


def test_plain(udp_sender, wfree_probe):
    r = udp_sender.run(**RUN)
    assert r.sent > 500 and r.received >= 0.9 * r.sent, (r.sent, r.received)
    assert r.wfree["p50_us"] < 20_000, r.wfree


@pytest.mark.topology(qdisc="netem delay 50ms 1ms")
def test_delay(udp_sender, wfree_probe):
    r = udp_sender.run(**RUN)
    assert r.sent > 500 and r.received > 0.5 * r.sent
    assert r.wfree["p50_us"] >= 45_000, r.wfree


@pytest.mark.topology(qdisc="netem loss 50%")
def test_loss(udp_sender):
    r = udp_sender.run(**RUN)
    assert r.sent > 500 and 0.25 * r.sent < r.received < 0.75 * r.sent, (r.sent, r.received)
"""


def test_netem_delay_and_loss_act_in_the_guest(pytester):
    pytester.makepyfile(test_netem=GUEST_TESTS)
    result = pytester.runpytest_subprocess(
        "--udpsend-kernel", os.environ["UDPSEND_LANE_IMAGE"], "--udpsend-backend", "timestamp",
        "--udpsend-require-privileges", "-p", "no:cacheprovider", "-rA",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.assert_outcomes(passed=3)

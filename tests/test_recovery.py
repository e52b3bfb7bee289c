"""Recovery after a pressure release (issue 27, item 4): the cpu_pressure schedule and resume_ms.

The schedule is checked on the hogs themselves (their state and CPU time in /proc), resume_ms on
synthetic series whose answer is known, and a real run on the starved receive path of
tests/test_backpressure.py: the receiver's NAPI kthread on CPU 1 with the hogs there, so each
release lets the path drain again and the send rate comes back.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure import load, recovery
from pytest_udpsend.results import bounds, store


def _stat(pid: int) -> tuple[str, int]:
    """(state letter, utime + stime in clock ticks) of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[11]) + int(fields[12])


def _at(cycle: load.Cycle, seconds: float) -> None:
    time.sleep(max(0.0, cycle.start_ns / 1e9 + seconds - time.monotonic()))


def test_the_schedule_stops_and_resumes_the_hogs():
    spec = load.make_spec(cpus=[1], workers=1, on_s=0.2, off_s=0.2)
    with load.pressure(spec) as pids, load.cycled(spec, pids) as cycle:
        assert cycle is not None
        cycle.start()
        seen = {}
        for name, t in (("on1", 0.08), ("on2", 0.16), ("off1", 0.26), ("off2", 0.36), ("on3", 0.46), ("on4", 0.56)):
            _at(cycle, t)
            seen[name] = _stat(pids[0])
        cycle.stop()
        after = _stat(pids[0])[0]
    print(
        f"hog state/CPU ticks: {seen}, after stop {after}; releases {cycle.releases} presses {cycle.presses} "
        f"(start {cycle.start_ns}), late max {cycle.late_max_ns} ns, SCHED_FIFO {cycle.realtime}"
    )
    assert seen["on1"][0] == "R" and seen["on4"][0] == "R"
    assert seen["off1"][0] == seen["off2"][0] == "T"  # stopped by SIGSTOP
    assert seen["off2"][1] - seen["off1"][1] <= 1  # 100 ms stopped: no CPU time (one tick of rounding)
    assert seen["on2"][1] > seen["on1"][1] and seen["on4"][1] > seen["on3"][1]  # spinning again after SIGCONT
    assert after != "T"  # stop() leaves them running, for the kill
    release = (cycle.releases[0] - cycle.start_ns) / 1e9
    press = (cycle.presses[0] - cycle.start_ns) / 1e9
    assert 0.2 <= release < 0.25 and 0.4 <= press < 0.45  # recorded on the clock the schedule keeps


def _series(rates_by_ms: list[tuple[int, int, float]], end_ms: int) -> list[float]:
    """10 ms buckets: each (start ms, end ms, sends per bucket)."""
    out = [0.0] * (end_ms // 10)
    for start, end, value in rates_by_ms:
        for b in range(start // 10, end // 10):
            out[b] = value
    return out


def test_resume_ms_on_a_synthetic_series():
    # on 0-200 at 30/bucket; off 200-400: 40, 60, then 100; on 400-600: 30; off 600-800: 100 at once
    sent = _series(
        [(0, 200, 30), (200, 210, 40), (210, 220, 60), (220, 400, 100), (400, 600, 30), (600, 800, 100)], 800
    )
    out = recovery.resume_times(sent, 10, [203.5, 600.0], [400.0], 0.9, 10)
    print(json.dumps(out))
    assert out["reference_pps"] == 10000.0 and out["pressured_pps"] == 3000.0  # 100 and 30 per 10 ms
    assert [r["resume_ms"] for r in out["releases"]] == [16.5, 0.0]  # the bucket from 220 ms; the first one
    assert out["resume_ms"] == 16.5 and out["resume_ms_median"] == 16.5
    # 20 ms windows laid from 210 ms: 210-230 has 160 < 0.9 x 200; 230-250 is back
    assert recovery.resume_times(sent, 10, [203.5], [400.0], 0.9, 20)["releases"][0]["resume_ms"] == 26.5
    # a lower fraction counts the 60 at 210 ms as back
    assert recovery.resume_times(sent, 10, [203.5], [400.0], 0.5, 10)["releases"][0]["resume_ms"] == 6.5


def test_a_release_that_never_comes_back_is_none_and_the_worst():
    sent = _series([(0, 200, 30), (200, 300, 30), (300, 400, 100), (400, 600, 30), (600, 800, 100)], 800)
    out = recovery.resume_times(sent, 10, [200.0, 600.0], [300.0, 800.0], 0.9, 10)
    assert [r["resume_ms"] for r in out["releases"]] == [None, 0.0]
    assert out["resume_ms"] is None and "1 of 2 releases did not come back" in out["note"]
    assert out["resume_ms_median"] is None  # the median of two ranks the missing one in


def test_a_release_the_end_of_the_run_cut_short_is_left_out_unless_it_came_back():
    sent = _series([(0, 200, 30), (200, 400, 100), (400, 600, 30), (600, 640, 30)], 640)
    out = recovery.resume_times(sent, 10, [200.0, 600.0], [400.0], 0.9, 10)  # the run ended 40 ms into an off period
    assert [r["at_ms"] for r in out["releases"]] == [200.0] and out["resume_ms"] == 0.0
    assert "the last release left out" in out["note"]
    sent[-1] = 100  # back within the 40 ms it had: decided, and counted
    assert [r["resume_ms"] for r in recovery.resume_times(sent, 10, [200.0, 600.0], [400.0], 0.9, 10)["releases"]] == [
        0.0,
        30.0,
    ]


def test_a_release_the_host_stalled_the_sender_around_is_left_out():
    # off 200-400 and 600-800; the loop made no call in 530-560 (within 100 ms before the release at 600), and
    # after it the rate stays low: that release is listed, with sender_idle_ms, but not decided
    sent = _series([(0, 200, 30), (200, 400, 100), (400, 600, 30), (600, 800, 30)], 800)
    idle = [530 <= b * 10 < 560 for b in range(80)]
    out = recovery.resume_times(sent, 10, [200.0, 600.0], [400.0, 800.0], 0.9, 10, idle)
    assert [r.get("sender_idle_ms") for r in out["releases"]] == [0, 30.0]
    assert out["resume_ms"] == 0.0 and "1 of 2 releases left out of resume_ms" in out["note"]
    assert "did not come back" not in out["note"]
    idle = [b * 10 >= 420 for b in range(80)]  # every release stalled: no figure, and it says why
    out = recovery.resume_times(sent, 10, [200.0, 600.0], [400.0, 800.0], 0.9, 10, idle)
    assert out["resume_ms"] == 0.0  # the first release's stall-free span still decides it
    idle = [True] * 80
    out = recovery.resume_times(sent, 10, [200.0, 600.0], [400.0, 800.0], 0.9, 10, idle)
    assert out["resume_ms"] is None and "on a host that runs the sender" in out["unavailable"]


def test_idle_buckets_only_for_the_plugins_busy_loop():
    assert recovery.idle_buckets({"attempts": [900, 0, 900], "eagain": [0, 0, 0], "bucket_ms": 10}) == [
        False,
        True,
        False,
    ]
    paced = {"attempts": [1, 0, 1, 0, 1], "eagain": [0] * 5, "bucket_ms": 10}  # 50/s: a call every other bucket
    assert recovery.idle_buckets(paced) is None
    assert recovery.idle_buckets({"sent": [5, 0, 5], "bucket_ms": 10}) is None  # a program's: no attempts


def test_the_marker_bounds_the_worst_release_and_repeats_take_the_median_run():
    bound = bounds.resume_bound(max=50)
    assert (bound.metric, bound.high) == ("recovery.resume_ms", 50.0)
    runs = [{"recovery": {"resume_ms": v}} for v in (10.0, None, 40.0, 90.0, 20.0)]
    assert [ok for _, _, ok in bounds.check([bound], runs[0])] == [True]
    assert [ok for _, _, ok in bounds.check([bound], runs[1])] == [False]  # a release never back fails any bound
    assert bounds.aggregate(runs)["recovery"]["resume_ms"] == 40.0  # None ranks above 90
    assert bounds.aggregate(runs[1:4])["recovery"]["resume_ms"] == 90.0


def test_no_schedule_gives_none_with_the_reason():
    out = recovery.no_schedule()
    assert out["resume_ms"] is None and "cpu_pressure(..., on_s=..., off_s=...)" in out["unavailable"]


def test_a_sampled_counter_is_spread_over_its_buckets():
    # samples at 0, 5, 15, 25 ms (ns); counts 0, 10, 30, 30
    ms = 1_000_000
    assert recovery.spread([(0, 0), (5 * ms, 10), (15 * ms, 30), (25 * ms, 30)], 0, 10) == [20.0, 10.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"on_s": 0.2}, "a schedule needs both"),
        ({"on_s": 0.2, "off_s": 0.02}, "off_s=0.02: "),
        ({"on_s": 0.2, "off_s": 0.2, "window_ms": 15}, "window_ms=15: a multiple of"),
        ({"on_s": 0.2, "off_s": 0.2, "resume_fraction": 1.5}, "resume_fraction=1.5"),
        ({"window_ms": 20}, "give the schedule too"),
    ],
)
def test_schedule_arguments_are_checked(kwargs, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        load.make_spec(cpus=[1], **kwargs)


@pytest.mark.isolated  # times the sender to 10 ms: a test beside it on CPU 0 stalls the loop (seen in CI under -n 2)
@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])  # the starved receive path
@pytest.mark.cpu_pressure(cpus=[1], workers=2, on_s=0.2, off_s=0.2)
@pytest.mark.udpsend(duration=1.2, cpu=0, receiver_cpu=1, sndbuf=4096)
def test_each_release_recovers_within_its_off_period(udpsend_result):
    r = udpsend_result
    rec = r.recovery
    print(f"recovery: {json.dumps(rec)}")
    assert rec["realtime"] == (os.geteuid() == 0)
    assert len(rec["releases"]) in (2, 3)  # at 0.2, 0.6, 1.0 s (left out if the run's end cut it before it came back)
    for release, planned in zip(rec["releases"], (200, 600, 1000)):
        # Never early; late only by what the result owns up to: the schedule is a Python thread (SCHED_FIFO, but it
        # still needs the GIL), and on a busy 2-core host a toggle came 75 ms late once (late_max_ms said 76.7).
        assert -20 < release["at_ms"] - planned < rec["late_max_ms"] + 20, (release, rec["late_max_ms"])
        if not release["sender_idle_ms"]:  # else the host stopped the sender (1 run in 10 here): not decided
            assert release["resume_ms"] is not None and release["resume_ms"] < release["off_ms"]  # back within it
    decided = [x["resume_ms"] for x in rec["releases"] if not x["sender_idle_ms"]]
    assert decided and rec["resume_ms"] == max(decided)
    # The depth of the dip (pressured_pps against reference_pps, about 0.45 on an idle host) is printed, not
    # asserted: another job on this 2-core host moves both rates by more than the hogs do; that the hogs
    # stop and start is test_the_schedule_stops_and_resumes_the_hogs's claim.
    assert "cycled: on 0.2 s, off 0.2 s" in r.pressure and "recovery (to 90% of" in r.summary()
    store.validate(
        store.document(store.environment("tracepoint"), {"t": {"samples": [r.to_dict()]}}), "recovery"
    )  # the schema takes it


MARKED = """
import pytest
@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2, on_s=0.2, off_s=0.2)
@pytest.mark.udpsend(duration=0.9, cpu=0, receiver_cpu=1, sndbuf=4096)
@pytest.mark.resume_ms({bound})
def test_{name}(udpsend_result):
    pass
"""


@pytest.mark.isolated  # times the sender to 10 ms: a test beside it on CPU 0 stalls the loop (seen in CI under -n 2)
def test_resume_ms_marker_fails_an_impossible_bound_and_passes_the_off_period(pytester):
    # every release is found within its 200 ms off period (or is None, which fails any bound): min=200 cannot hold
    pytester.makepyfile(MARKED.format(bound="max=200", name="within") + MARKED.format(bound="min=200", name="never"))
    result = pytester.runpytest_subprocess("-rA")
    out = result.stdout.str()
    print(out)
    result.assert_outcomes(passed=1, failed=1)
    assert re.search(r"^PASSED \S+::test_within$", out, re.M) and re.search(r"^FAILED \S+::test_never", out, re.M)
    assert "udpsend bounds violated" in out and "recovery.resume_ms" in out and ">= 200" in out and " NO" in out
    assert "recovery to 90% of" in out and "per release" in out
    assert "Traceback" not in out


def test_resume_ms_marker_arguments(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.cpu_pressure(cpus=[1], on_s=0.2, off_s=0.2)
        @pytest.mark.resume_ms(max=-1)
        def test_negative(udpsend_result):
            pass
        @pytest.mark.resume_ms(max=50)
        def test_no_schedule(udpsend_result):
            pass
        @pytest.mark.cpu_pressure(cpus=[1], on_s=0.2)
        def test_half_a_schedule(udpsend_result):
            pass
        """
    )
    out = pytester.runpytest_subprocess("--collect-only").stdout.str()
    print(out)
    assert "@pytest.mark.resume_ms: max=-1: " in out
    assert (
        "@pytest.mark.resume_ms: bounds the recovery after each release of a pressure schedule, and this test has "
        "none: add @pytest.mark.cpu_pressure(..., on_s=0.2, off_s=0.2)" in out
    )
    assert "@pytest.mark.cpu_pressure: on_s=0.2, off_s=None: a schedule needs both" in out
    assert "Traceback" not in out


@pytest.mark.isolated  # times the sender to 10 ms: a test beside it on CPU 0 stalls the loop (seen in CI under -n 2)
@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2, on_s=0.2, off_s=0.2)
def test_a_programs_recovery_is_read_from_outside(sender_process, tmp_path):
    """A program's sends are not in a series of ours: UdpOutDatagrams of its netns, sampled every 2 ms."""
    from tests.test_backpressure import build_sender

    r = sender_process.run([str(build_sender(tmp_path)), "busy", "1.0"], cpu=0)
    rec = r.recovery
    print(f"program recovery: {json.dumps(rec)}\nsent per bucket: {r.series['sent']}")
    assert rec["rate_from"].startswith("UdpOutDatagrams")
    assert abs(sum(r.series["sent"]) - r.sent) <= 0.05 * r.sent  # the sampled counter adds up to the delta
    assert len(rec["releases"]) >= 2  # at 0.2 and 0.6 s (and 1.0 s unless the program ended before it came back)
    # The schedule keeps its period from absolute deadlines: releases 400 ms apart, each as late as the
    # result says a toggle came (late_max_ms: 62 to 84 ms seen when the VM was not run).  Where the first
    # one falls on the program's clock depends on how long the program took to start (25 ms seen under CI's load).
    at = [release["at_ms"] for release in rec["releases"]]
    late = rec["late_max_ms"] + 20
    assert at[0] >= 200 - 20 and all(abs(b - a - 400) < late for a, b in zip(at, at[1:])), (at, late)
    for release in rec["releases"]:
        assert (
            release["resume_ms"] is not None and release["resume_ms"] < release["off_ms"]
        )  # back within the off period

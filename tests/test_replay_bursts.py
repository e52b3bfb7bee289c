"""Per-burst results of a replay (issue 28, item 2): a bound over bursts, the report's burst plot, the JSON.

Bounds and the report are checked on result dicts (nothing measured); what a user sees runs real
replays on real namespaces in a pytester subprocess (a tbf link and a small buffer: the bursts overflow
it by several times, so the figures are fixed by the mechanism)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.results import bounds, report, store
from tests.test_report_escaping import EVIL, assert_inert

pytest_plugins = ["pytester"]


def burst(i: int, eagain: int, attempts: int = 200, loop: int = 0) -> dict[str, Any]:
    return {
        "loop": loop,
        "burst": i,
        "start_s": 0.2 * i,
        "span_s": 0.004,
        "datagrams": attempts,
        "bytes": attempts * 700,
        "attempts": attempts,
        "sent": attempts - eagain,
        "sent_bytes": (attempts - eagain) * 700,
        "eagain": eagain,
        "eagain_rate": round(eagain / attempts, 6) if attempts else 0.0,
        "outq_max": 8192,
    }


def replay_sample(eagains: list[int], source: str = "b.pcap") -> dict[str, Any]:
    bursts = [burst(i, e) for i, e in enumerate(eagains)]
    attempts, eagain = sum(b["attempts"] for b in bursts), sum(eagains)
    return {
        "kernel": "6.18.0",
        "attempts": attempts,
        "eagain": eagain,
        "eagain_rate": eagain / attempts,
        "pps": 1e4,
        "sndbuf_effective": 8192,
        "topology": "veth",
        "wfree": {},
        "sysctls": {},
        "replay": {
            "source": source,
            "speed": 1.0,
            "loop": 1,
            "datagrams": attempts,
            "bytes": attempts * 700,
            "span_s": 0.2 * len(bursts),
            "bursts": bursts,
            "burst_rule": "a gap",
            "notes": {},
            "expected_s": 0.2 * len(bursts),
            "timing_error": 0.01,
            "late_mean_us": 3.0,
            "late_max_us": 40.0,
            "worst_burst": max(range(len(bursts)), key=lambda i: bursts[i]["eagain_rate"]),
        },
    }


# ------------------------------------------------------------------------------------------ the bound


def test_per_burst_is_validated_in_one_sentence():
    assert bounds.eagain_bound(max=0.5, per="burst").per == "burst"
    assert (
        bounds.eagain_bound(max=0.5, per="run")
        == bounds.eagain_bound(max=0.5)
        == bounds.min_max("eagain_rate", "eagain_rate", 0.5)
    )
    with pytest.raises(ConfigError) as info:
        bounds.eagain_bound(max=0.5, per="bursts")
    assert "per='bursts': accepted: 'burst'" in str(info.value) and "\n" not in str(info.value)


def test_the_worst_burst_decides_not_the_run():
    """The run's rate (60 of 800, 7.5 %) holds max=0.2; one burst (50 of 200) does not."""
    result = replay_sample([0, 5, 50, 5])
    run, each = bounds.eagain_bound(max=0.2), bounds.eagain_bound(max=0.2, per="burst")
    (_, run_value, run_ok), (_, value, ok) = bounds.check([run, each], result)
    assert run_ok and run_value == pytest.approx(0.075)
    assert not ok and value == 0.25
    assert bounds.worst_burst(each, result)[0] == 2
    # a min bound: the lowest burst decides; a burst without a send attempt has no rate and is left out
    result["replay"]["bursts"].append(burst(4, 0, attempts=0))
    assert bounds.check([bounds.eagain_bound(min=0.02, per="burst")], result) == [
        (bounds.eagain_bound(min=0.02, per="burst"), 0.0, False)
    ]
    assert bounds.worst_burst(bounds.eagain_bound(min=0.02, per="burst"), result)[0] == 0
    # both ends: the burst outside the range
    assert bounds.worst_burst(bounds.eagain_bound(min=0.01, max=0.5, per="burst"), result)[0] == 0
    assert bounds.worst_burst(bounds.eagain_bound(min=0.0, max=0.1, per="burst"), result)[0] == 2


def test_the_failure_table_names_the_worst_burst():
    result = replay_sample([0, 5, 50, 5])
    bound = bounds.eagain_bound(max=0.2, per="burst")
    table = bounds.failure_table(bounds.check([bound], result), result)
    assert "eagain_rate (worst burst)" in table and "<= 0.2 in every burst" in table
    assert (
        "burst    #2 at 0.400 s: 200 datagrams, 50 EAGAIN of 200 attempts" in table and "(worst of 4 bursts)" in table
    )


def test_per_burst_without_bursts_is_refused_in_one_sentence():
    result = {k: v for k, v in replay_sample([1]).items() if k != "replay"}
    bound = bounds.eagain_bound(max=0.5, per="burst")
    text = bounds.failure_table(bounds.check([bound], result), result)
    assert text.startswith(
        "@pytest.mark.eagain_rate(per='burst') bounds each burst of a replay, but this test's result has no bursts"
    )
    assert "\n" not in text and text.count(". ") == 0


def test_repeated_samples_are_judged_on_the_median_worst_burst():
    samples = [replay_sample([0, 10]), replay_sample([0, 100]), replay_sample([0, 40])]
    merged = bounds.aggregate(samples)
    assert bounds.check([bounds.eagain_bound(max=0.3, per="burst")], merged)[0][1:] == (0.2, True)


# ------------------------------------------------------------------------------------------ the report


def document(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return store.document(store.environment("timestamp"), {"t.py::test_r": {"outcome": "passed", "samples": samples}})


def test_the_report_draws_eagain_per_burst_for_a_replay_only():
    plain = {k: v for k, v in replay_sample([1]).items() if k != "replay"}
    assert "EAGAIN per burst" not in report.render(document([plain]))
    page = report.render(document([replay_sample([0, 5, 50, 5], source="shape:telemetry")]))
    assert "EAGAIN per burst, run 1: shape:telemetry at speed 1.0" in page
    assert "burst #2 at 0.400 s: 200 datagrams, 200 attempts, 50 EAGAIN (25.0%)" in page  # the tooltip
    assert "burst start on the capture&#39;s clock (s)" in page
    assert page.count("<rect") >= 8  # attempts and EAGAIN per burst
    old = {k: v for k, v in replay_sample([1]).items()}
    old["replay"] = {}  # an empty replay (the default of a send run) draws nothing
    assert "EAGAIN per burst" not in report.render(document([old]))


def test_the_burst_plot_takes_no_markup_from_the_file():
    evil = replay_sample([0, 3], source="x.pcap" + EVIL)
    evil["replay"]["bursts"][1]["burst"] = 1
    evil["replay"]["speed"] = EVIL
    assert_inert(report.render(document([evil])), "burst plot")


# ------------------------------------------------------------------------------------------ the JSON


def test_bursts_are_in_the_document_and_old_documents_still_read(tmp_path):
    doc = document([replay_sample([0, 5, 50])])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert store.load(path)["tests"]["t.py::test_r"]["samples"][0]["replay"]["bursts"][2]["eagain"] == 50
    bad = copy.deepcopy(doc)
    bad["tests"]["t.py::test_r"]["samples"][0]["replay"]["bursts"][2]["eagain"] = "fifty"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="eagain"):
        store.load(path)
    old = document([{k: v for k, v in replay_sample([1]).items() if k != "replay"}])  # written before replay=
    path.write_text(json.dumps(old))
    assert "replay" not in store.load(path)["tests"]["t.py::test_r"]["samples"][0]


# ------------------------------------------------------------------------------------ what a user sees

TBF = "tbf rate 20mbit burst 16kb latency 50ms"


def test_a_per_burst_bound_fails_on_the_worst_burst_and_refuses_a_plain_run(pytester):
    """shape:media through a 20 Mbit/s tbf with a 32 KB buffer: its two key frames (40 x 1200 bytes, more than
    the buffer holds even before their skbs' overhead) get EAGAIN, its 58 small frames (6 x 1200) do not."""
    pytester.makepyfile(
        f"""
        import pytest
        @pytest.mark.topology(qdisc={TBF!r})
        @pytest.mark.udpsend(replay="shape:media", sndbuf=16384, cpu=0)
        @pytest.mark.eagain_rate(max=0.15)  # the run: 2 key frames in 428 datagrams
        @pytest.mark.eagain_rate(max=0.05, per="burst")
        def test_key_frames(udpsend_result):
            b = udpsend_result.replay["bursts"]
            print("NUMBERS", udpsend_result.eagain_rate, [(x["datagrams"], x["eagain"]) for x in b if x["eagain"]])

        @pytest.mark.udpsend(duration=0.2, cpu=0)
        @pytest.mark.eagain_rate(max=0.5, per="burst")
        def test_plain(udpsend_result):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    out = result.stdout.str()
    print("\n".join(line for line in out.splitlines() if "NUMBERS" in line or "burst" in line))
    result.assert_outcomes(failed=2)
    assert re.search(r"eagain_rate \(worst burst\) +0\.\d+ +<= 0\.05 in every burst +NO", out), out
    assert re.search(r"burst +#(0|30) at (0\.000|1\.000) s: 40 datagrams, \d+ EAGAIN of 40 attempts", out), out
    assert re.search(r"eagain_rate +0\.\d+ +<= 0\.15 +yes", out), out
    assert (
        "@pytest.mark.eagain_rate(per='burst') bounds each burst of a replay, but this test's result has no bursts"
        in out
    )
    assert "Traceback" not in out


def test_per_burst_on_another_marker_is_a_collection_error(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.time_squeeze(max=5, per="burst")
        def test_t(udpsend_result):
            pass
        @pytest.mark.eagain_rate(max=0.5, per="flush")
        def test_e(udpsend_result):
            pass
        """
    )
    out = pytester.runpytest_subprocess("--collect-only", "-p", "no:cacheprovider").stdout.str()
    assert (
        "@pytest.mark.time_squeeze: got an unexpected keyword argument 'per'; accepted arguments: max, min, kernel"
        in out
    )
    assert "@pytest.mark.eagain_rate: per='flush': accepted: 'burst'" in out

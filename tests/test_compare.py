"""Baseline comparison, the compare command and the HTML report."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys

import pytest

from pytest_udpsend.results import compare, report, store


def doc(samples_by_test: dict[str, list[dict]], kernel: str = "6.1.0-56-amd64") -> dict:
    return store.document({"kernel": kernel}, {k: {"outcome": "passed", "samples": v} for k, v in samples_by_test.items()})


def samples(values: list[float], metric: str = "eagain_rate") -> list[dict]:
    return [{metric: v, "kernel": "x"} for v in values]


def test_mann_whitney_exact_and_symmetric():
    assert compare.mann_whitney_greater([6, 7, 8], [1, 2, 3]) == pytest.approx(1 / 20)
    assert compare.mann_whitney_greater([1, 2, 3], [6, 7, 8]) == pytest.approx(1.0)
    p = compare.mann_whitney_greater([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert 0.4 < p < 0.7


def test_a_clear_shift_is_a_regression():
    row = compare.compare_metric("t", "eagain_rate", samples([0.05, 0.06, 0.05, 0.04, 0.05]), samples([0.11, 0.12, 0.10, 0.13, 0.11]))
    assert row.verdict == "regression" and row.p_value < 0.01 and row.change == pytest.approx(1.2)


def test_pps_regresses_downwards():
    row = compare.compare_metric("t", "pps", samples([100, 101, 99, 100, 102], "pps"), samples([60, 61, 59, 62, 60], "pps"))
    assert row.verdict == "regression"
    up = compare.compare_metric("t", "pps", samples([60, 61, 59, 62, 60], "pps"), samples([100, 101, 99, 100, 102], "pps"))
    assert up.verdict == "improved"


def test_significant_but_within_tolerance_is_ok():
    row = compare.compare_metric("t", "eagain_rate", samples([0.100, 0.101, 0.102, 0.100, 0.101]),
                                 samples([0.110, 0.111, 0.112, 0.110, 0.111]))  # fmt: skip
    assert row.p_value < 0.05 and row.verdict == "ok"  # +10 % < 25 % tolerance


def test_absolute_floor_ignores_tiny_rates():
    row = compare.compare_metric("t", "eagain_rate", samples([0.0001] * 5), samples([0.0004, 0.0005, 0.0004, 0.0006, 0.0005]))
    assert row.verdict == "ok"


def test_one_sample_is_never_a_gate():
    row = compare.compare_metric("t", "eagain_rate", samples([0.01]), samples([0.9]))
    assert row.verdict == "too few samples"
    three = compare.compare_test("t", samples([0.01, 0.02, 0.01]), samples([0.9, 0.8, 0.9]))
    assert {r.verdict for r in three if r.metric == "eagain_rate"} == {"too few samples"}  # min p 1/20


def test_a_a_false_alarm_rate_is_low():
    """Same distribution on both sides: a test is flagged (any metric) in at most ~alpha of trials."""
    rng = random.Random(7)
    alarms = 0
    for _ in range(1000):
        def draw() -> list[dict]:
            return [{"eagain_rate": rng.lognormvariate(-3, 0.5), "pps": rng.gauss(2e5, 2e4),
                     "time_squeeze": rng.lognormvariate(5, 0.6)} for _ in range(5)]  # fmt: skip
        alarms += any(r.regressed for r in compare.compare_test("t", draw(), draw()))
    assert alarms / 1000 <= 0.05


def test_missing_entries_are_reported_not_crashes():
    rows = compare.compare_docs(doc({"a": samples([0.1] * 3)}), doc({"b": samples([0.1] * 3)}))
    verdicts = {(r.test, r.verdict) for r in rows}
    assert ("b", "no baseline") in verdicts and ("a", "missing in new run") in verdicts


def test_kernel_lane_suffix_is_ignored():
    assert compare.base_key("tests/t.py::test_x[kernel=6.12.95+deb12-amd64]") == "tests/t.py::test_x"
    assert compare.base_key("tests/t.py::test_x[1]") == "tests/t.py::test_x[1]"


def test_compare_command_exit_codes(tmp_path):
    base, same, worse = tmp_path / "b.json", tmp_path / "s.json", tmp_path / "w.json"
    store.write(base, doc({"t::x": samples([0.05, 0.06, 0.05, 0.04, 0.05])}))
    store.write(same, doc({"t::x": samples([0.05, 0.05, 0.06, 0.04, 0.05])}, "6.12.95+deb12-amd64"))
    store.write(worse, doc({"t::x": samples([0.11, 0.12, 0.10, 0.13, 0.11])}, "6.12.95+deb12-amd64"))
    run = [sys.executable, "-m", "pytest_udpsend.cli", "compare"]
    ok = subprocess.run([*run, str(base), str(same)], capture_output=True, text=True)
    bad = subprocess.run([*run, str(base), str(worse)], capture_output=True, text=True)
    assert ok.returncode == 0 and "0 regression(s)" in ok.stdout
    assert bad.returncode == 1 and "regression" in bad.stdout and "6.12.95+deb12-amd64" in bad.stdout
    broken = tmp_path / "x.json"
    broken.write_text("{}")
    err = subprocess.run([*run, str(broken), str(same)], capture_output=True, text=True)
    assert err.returncode == 2 and "not a pytest-udpsend results file" in err.stderr


def test_baseline_gate_fails_a_regressed_test(pytester, tmp_path):
    pytester.makepyfile(
        test_gate="""
        import pytest
        @pytest.mark.topology(qdisc="tbf rate 100mbit burst 32kb latency 20ms")
        @pytest.mark.udpsend(duration=0.2)
        def test_shaped(udpsend_result):
            pass
        """
    )
    base = tmp_path / "base.json"
    pytester.runpytest_subprocess("--udpsend-json", str(base), "--udpsend-repeat", "5").assert_outcomes(passed=1)
    saved = json.loads(base.read_text())
    (nodeid,) = saved["tests"]
    for rate, sample in zip((0.01, 0.02, 0.015, 0.012, 0.018), saved["tests"][nodeid]["samples"]):
        sample["eagain_rate"] = rate  # as if the old kernel had hardly any EAGAIN on this link
    base.write_text(json.dumps(saved))
    result = pytester.runpytest_subprocess("--udpsend-baseline", str(base), "--udpsend-repeat", "5",
                                           "--udpsend-json", str(tmp_path / "new.json"))  # fmt: skip
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "udpsend baseline regression" in out and re.search(r"eagain_rate .* regression", out)
    assert "udpsend baseline comparison" in out  # the terminal summary section
    new = json.loads((tmp_path / "new.json").read_text())
    (entry,) = new["tests"].values()  # its id may differ: the rootdir moves with option paths
    assert len(entry["samples"]) == 5


def test_bad_baseline_file_is_a_usage_error(pytester, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    result = pytester.runpytest_subprocess("--udpsend-baseline", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--udpsend-baseline" in result.stderr.str() and "not JSON" in result.stderr.str()


def _synthetic_sample(rate: float) -> dict:
    series = {"bucket_ms": 10, "attempts": [100] * 50, "eagain": [int(rate * 100)] * 50, "outq_max": [8192] * 50}
    hist = {"edges_us": [1, 10, 100], "counts": [0, 5, 3, 1]}
    return {"eagain_rate": rate, "pps": 1e5, "kernel": "6.1", "topology": "veth", "series": series,
            "softnet": {"0": {"time_squeeze": 1}, "1": {"time_squeeze": 9}},
            "wfree": {"backend": "bpf", "histograms": {"inline": hist, "softirq": hist}}}  # fmt: skip


def test_report_is_self_contained_with_plots(tmp_path):
    new = doc({"t::x": [_synthetic_sample(0.1 + i / 1000) for i in range(5)]}, "6.12")
    base = doc({"t::x": [_synthetic_sample(0.05 + i / 1000) for i in range(5)]})
    html = report.render(new, base)
    assert html.count("<svg") >= 5
    for title in ("EAGAIN rate over the run", "SIOCOUTQ occupancy", "sock_wfree latency histogram by context",
                  "time_squeeze per CPU", "eagain_rate: regression", "Baseline comparison"):  # fmt: skip
        assert title in html
    assert not re.search(r"(src|href)=[\"']?https?:", html) and "<script" not in html
    res, out = tmp_path / "r.json", tmp_path / "r.html"
    store.write(res, new)
    done = subprocess.run([sys.executable, "-m", "pytest_udpsend.cli", "report", str(res), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and out.read_text().startswith("<!DOCTYPE html>")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium to render the report")
def test_report_renders_in_headless_chromium(tmp_path):
    """The report opens in a real browser: the DOM it builds has every plot as an SVG element."""
    html = tmp_path / "r.html"
    html.write_text(report.render(doc({"t::x": [_synthetic_sample(0.1 + i / 1000) for i in range(5)]}),
                                  doc({"t::x": [_synthetic_sample(0.05 + i / 1000) for i in range(5)]})))  # fmt: skip
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") >= 6 and "sock_wfree latency histogram by context" in dom.stdout
    shot = tmp_path / "r.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000  # a page with plots, not a blank one

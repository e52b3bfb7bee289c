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
    return store.document(
        {"kernel": kernel}, {k: {"outcome": "passed", "samples": v} for k, v in samples_by_test.items()}
    )


def samples(values: list[float], metric: str = "eagain_rate") -> list[dict]:
    return [{metric: v, "kernel": "x"} for v in values]


S = compare.Settings()


def test_p_values_come_from_scipy_and_handle_ties_exactly():
    assert compare.p_greater([6, 7, 8], [1, 2, 3]) == pytest.approx(1 / 20)  # exact, no ties
    assert compare.p_greater([1, 2, 3], [6, 7, 8]) == pytest.approx(1.0)
    # With ties: the exact permutation distribution (the old code fell back to the normal approximation):
    # of the C(6,3) = 20 arrangements of {1,1,2,2,3,3}, U >= 8.5 for 2 of them ({2,3,3} twice) and 1 ({3,3,2}... )
    exact = compare.p_greater([2, 3, 3], [1, 1, 2], lvl=1.0)
    import itertools

    pool = [1, 1, 2, 2, 3, 3]

    def u(x, y):
        return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)

    observed = u([2, 3, 3], [1, 1, 2])
    splits = list(itertools.combinations(range(6), 3))
    count = sum(u([pool[i] for i in c], [pool[i] for i in range(6) if i not in c]) >= observed for c in splits)
    assert exact == pytest.approx(count / len(splits))


def test_a_shift_beyond_the_noise_floor_is_a_regression():
    row = compare.compare_metric(
        "t",
        "eagain_rate",
        samples([0.02, 0.021, 0.019, 0.02, 0.022]),
        samples([0.11, 0.12, 0.10, 0.13, 0.11]),
        0.25,
        0.01,
    )
    assert row.verdict == "regression" and row.p_value < 0.01 and row.change == pytest.approx(4.5)
    assert row.direction == "worse"


def test_a_shift_within_session_drift_is_not_a_regression():
    """pps 20 % lower in every sample: two sessions of an unchanged host differ that much (FIELD-NOTES)."""
    base, new = samples([100, 101, 99, 100, 102, 100], "pps"), samples([80, 81, 79, 80, 82, 80], "pps")
    row = compare.compare_metric("t", "pps", base, new, 0.25, 0.01)
    assert row.verdict == "ok" and row.change == pytest.approx(-0.2) and row.direction == "worse"
    assert row.allowed == pytest.approx(0.375)  # the pps session noise floor: a factor 1.6


def test_pps_regresses_downwards_and_the_change_is_signed_as_measured():
    row = compare.compare_metric(
        "t", "pps", samples([100, 101, 99, 100, 102], "pps"), samples([50, 51, 49, 52, 50], "pps"), 0.25, 0.01
    )
    assert row.verdict == "regression" and row.change == pytest.approx(-0.5) and row.direction == "worse"
    assert "-50% worse" in compare.table([row])
    up = compare.compare_metric(
        "t", "pps", samples([50, 51, 49, 52, 50], "pps"), samples([100, 101, 99, 100, 102], "pps"), 0.25, 0.01
    )
    assert up.verdict == "improved" and "+100% better" in compare.table([up])


def test_tolerance_above_the_noise_floor_widens_what_is_allowed():
    base, new = samples([0.02] * 3 + [0.021, 0.019]), samples([0.11, 0.12, 0.10, 0.13, 0.11])
    assert compare.compare_metric("t", "eagain_rate", base, new, 9.0, 0.01).verdict == "ok"  # odds x6 < x10


def test_a_rate_moves_on_its_odds_so_a_high_rate_can_still_regress():
    """x4 on the rate itself allowed any rise from 25 % (the held-out 6.1 -> 6.12 rise, 48 -> 79 %, passed)."""
    base = samples([0.30, 0.34, 0.29, 0.31, 0.33, 0.32])
    assert (
        compare.compare_metric(
            "t", "eagain_rate", base, samples([0.80, 0.82, 0.79, 0.85, 0.81, 0.83]), 0.25, 0.01
        ).verdict
        == "regression"
    )
    row = compare.compare_metric("t", "eagain_rate", base, samples([0.58, 0.60, 0.57, 0.62, 0.59, 0.61]), 0.25, 0.01)
    four_times_the_odds = 4 * 0.315 / 0.685 / (1 + 4 * 0.315 / 0.685)  # 0.648
    assert row.verdict == "ok" and row.allowed == pytest.approx((four_times_the_odds - 0.315) / 0.315)
    assert compare.moved("eagain_rate", [0.0, 0.5, 1.0], 0.5, 0.25, worse=True) == [0.01, 0.8, 1.0]
    assert compare.moved("eagain_rate", [0.005, 0.5], 0.5, 0.25, worse=False) == pytest.approx([0.0, 0.2])


def test_one_command_takes_the_square_root_of_each_session_floor():
    """--udpsend-gate-against: both sides measured minutes apart by one command (README, "One command")."""
    one = compare.Settings(one_command=True)
    assert one.noise("eagain_rate") == 2.0 and one.noise("pps") == pytest.approx(1.265, abs=0.001)
    assert compare.Settings().noise("eagain_rate") == 4.0
    base, new = (
        samples([0.09, 0.10, 0.11, 0.10, 0.09, 0.11]),
        samples([0.27, 0.28, 0.29, 0.30, 0.27, 0.29]),
    )  # odds x3.6
    rows = {s.one_command: compare.compare_test("t", base, new, s, 6, metrics=["eagain_rate"])[0] for s in (one, S)}
    assert rows[True].verdict == "regression" and rows[False].verdict == "ok"
    assert "noise floor for one command" in compare.header(one, 6) and "session noise floor" in compare.header(S, 6)


def test_absolute_floor_ignores_tiny_rates():
    row = compare.compare_metric(
        "t", "eagain_rate", samples([0.0001] * 5), samples([0.004, 0.005, 0.004, 0.006, 0.005]), 0.25, 0.01
    )
    assert row.verdict == "ok"


def test_family_is_tests_times_measured_metrics_and_sets_the_level():
    base = {f"t{i}": [{"eagain_rate": 0.1, "pps": 1.0, "time_squeeze": 3}] for i in range(10)}
    assert compare.family_size(base, S) == 30
    assert compare.family_size(base, compare.Settings(metrics=("pps",))) == 10
    assert compare.level(S, 30) == pytest.approx(0.05 / 30)


def test_too_few_samples_are_refused_with_what_is_needed():
    row = compare.compare_metric("t", "eagain_rate", samples([0.01] * 5), samples([0.9] * 5), 0.25, 0.05 / 40)
    assert row.verdict == "too few samples"  # 1/C(10,5) = 0.004 > 0.00125
    why = compare.needed_samples(5, 5, S, 40)
    assert why and "--udpsend-repeat 6" in why and "40 comparisons" in why
    assert compare.needed_samples(6, 6, S, 40) is None


def _session(rng: random.Random, shift: float = 1.0) -> dict:
    """One synthetic session of a 10-test suite with FIELD-NOTES "Session drift" magnitudes: per test a
    session-level factor (between-session drift, log-sd: pps 0.14, EAGAIN 0.48, time_squeeze 0.37) and
    per-sample noise within the session; t3 is shaped by a qdisc (its pps hardly drifts) and ``shift``
    scales its rate."""
    tests = {}
    for t in range(10):
        shaped = t == 3
        pps_drift, pps_noise = (0.02, 0.01) if shaped else (0.14, 0.09)
        level = {
            "pps": rng.lognormvariate(0, pps_drift),
            "eagain_rate": rng.lognormvariate(0, 0.48),
            "time_squeeze": rng.lognormvariate(0, 0.37),
        }
        tests[f"t{t}"] = [
            {
                "pps": 2.5e5 * (shift if shaped else 1.0) * level["pps"] * rng.lognormvariate(0, pps_noise),
                "eagain_rate": min(1.0, 0.2 * level["eagain_rate"] * rng.lognormvariate(0, 0.8)),
                "time_squeeze": round(200 * level["time_squeeze"] * rng.lognormvariate(0, 0.5)),
                "enobufs": 0,
            }
            for _ in range(6)
        ]
    return doc(tests)


def test_suite_a_a_across_sessions_rarely_flags_anything():
    rng = random.Random(11)
    runs = [compare.compare_docs(_session(rng), _session(rng), S) for _ in range(60)]
    flagged = sum(any(r.regressed for r in rows) for rows in runs)
    assert flagged <= 3, flagged  # at most 5 % of suite runs with any false alarm


def test_suite_a_b_finds_a_halved_rate_and_nothing_else():
    rng = random.Random(12)
    runs = [compare.compare_docs(_session(rng), _session(rng, 0.5), S) for _ in range(40)]
    found = sum(any(r.regressed and r.test == "t3" for r in rows) for rows in runs)
    others = sum(r.regressed and r.test != "t3" for rows in runs for r in rows)
    assert found >= 38 and others <= 2, (found, others)


def test_missing_entries_are_reported_not_crashes():
    rows = compare.compare_docs(doc({"a": samples([0.1] * 3)}), doc({"b": samples([0.1] * 3)}), S)
    verdicts = {(r.test, r.verdict) for r in rows}
    assert ("b", "no baseline") in verdicts and ("a", "missing in new run") in verdicts


def test_kernel_lane_suffix_is_ignored():
    assert compare.base_key("tests/t.py::test_x[kernel=6.12.95+deb12-amd64]") == "tests/t.py::test_x"
    assert compare.base_key("tests/t.py::test_x[1]") == "tests/t.py::test_x[1]"


def test_environments_measured_differently_are_named():
    base = {"backend": "timestamp", "cpu_model": "AMD EPYC", "cpu_count": 2, "kernel": "6.1"}
    lane = {"backend": "bpf", "cpu_model": "QEMU TCG CPU", "cpu_count": 2, "kernel": "6.12", "lane": {"accel": "tcg"}}
    what = compare.env_mismatch(base, lane)
    assert what and "backend 'timestamp' vs 'bpf'" in what and "bare host vs kernel lane" in what
    assert compare.env_mismatch(base, {**base, "kernel": "6.12"}) is None  # the kernel is what is gated


def test_samples_sent_differently_are_measured_differently():
    base = [{"pps": 1.0, "params": {"payload": 1400, "duration": 0.3, "sndbuf": 8192}}] * 6
    new = [{"pps": 1.0, "params": {"payload": 200, "duration": 0.3, "sndbuf": 65536}}] * 6
    (row,) = compare.compare_test("t", base, new, S, 1)
    assert row.verdict == "measured differently" and "payload 1400 -> 200" in row.note and "sndbuf" not in row.note
    rows = compare.compare_test("t", base, new, compare.Settings(allow_mixed=True), 1)
    assert rows[0].metric != "-" and "payload" in rows[-1].note


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_udpsend.cli", *args], capture_output=True, text=True)


def test_compare_command_exit_codes(tmp_path):
    base, same, worse, few = (tmp_path / f"{n}.json" for n in "bswf")
    store.write(base, doc({"t::x": samples([0.02, 0.021, 0.019, 0.02, 0.022])}))
    store.write(same, doc({"t::x": samples([0.02, 0.02, 0.021, 0.019, 0.02])}, "6.12.95+deb12-amd64"))
    store.write(worse, doc({"t::x": samples([0.11, 0.12, 0.10, 0.13, 0.11])}, "6.12.95+deb12-amd64"))
    store.write(few, doc({"t::x": samples([0.11])}, "6.12.95+deb12-amd64"))
    ok, bad = _cli("compare", str(base), str(same)), _cli("compare", str(base), str(worse))
    assert ok.returncode == 0 and "0 regression(s)" in ok.stdout
    assert bad.returncode == 1 and "regression" in bad.stdout and "6.12.95+deb12-amd64" in bad.stdout
    assert "+450% worse" in bad.stdout
    short = _cli("compare", str(base), str(few))
    assert short.returncode == 2 and "cannot be judged" in short.stderr and "--udpsend-repeat" in short.stderr
    loose = _cli("compare", str(base), str(worse), "--tolerance", "9", "--alpha", "0.01", "--metrics", "eagain_rate")
    assert loose.returncode == 0 and "alpha 0.01 over 1 comparisons" in loose.stdout
    assert _cli("compare", str(base), str(worse), "--metrics", "nope").returncode == 2
    broken = tmp_path / "x.json"
    broken.write_text("{}")
    err = _cli("compare", str(broken), str(same))
    assert err.returncode == 2 and "not a pytest-udpsend results file" in err.stderr


def test_compare_refuses_a_mixed_comparison_unless_allowed(tmp_path):
    base, lane = tmp_path / "b.json", tmp_path / "l.json"
    store.write(
        base, store.document({"kernel": "6.1", "backend": "timestamp"}, {"t::x": {"samples": samples([0.02] * 5)}})
    )
    store.write(
        lane,
        store.document(
            {"kernel": "6.12", "backend": "bpf", "lane": {"accel": "tcg (single-threaded)"}},
            {"t::x": {"samples": samples([0.02] * 5)}},
        ),
    )
    refused = _cli("compare", str(base), str(lane))
    assert refused.returncode == 2 and refused.stdout == ""
    (sentence,) = refused.stderr.strip().splitlines()
    assert (
        "measured differently" in sentence
        and "backend 'timestamp' vs 'bpf'" in sentence
        and "--allow-mixed" in sentence
    )
    allowed = _cli("compare", str(base), str(lane), "--allow-mixed")
    assert allowed.returncode == 0 and "mixed comparison (allowed)" in allowed.stdout


def test_report_shows_the_verdicts_the_gate_recorded(tmp_path):
    base = doc({"t::x": samples([0.02, 0.021, 0.019, 0.02, 0.022])})
    new = doc({"t::x": samples([0.11, 0.12, 0.10, 0.13, 0.11])})
    settings = compare.Settings(tolerance=9.0)  # a lenient ini: the gate said ok
    rows = compare.compare_test("t::x", base["tests"]["t::x"]["samples"], new["tests"]["t::x"]["samples"], settings, 1)
    new["gate"] = compare.gate_record(settings, 1, base, rows)
    shown, head, _ = report.gate_rows(new, base)
    assert [r.verdict for r in shown if r.metric == "eagain_rate"] == ["ok"] and "the verdicts the gate gave" in head
    assert "tolerance 9" in head
    html = report.render(new, base)
    table = html.split("Baseline comparison")[1].split("</pre>")[0]
    assert (
        "eagain_rate: ok" in html
        and re.search(r"eagain_rate .* ok$", table, re.M)
        and not re.search(r" regression$", table, re.M)
    )
    redone, head, _ = report.gate_rows(new, base, {"tolerance": 0.25})  # flags given: recomputed, same rule
    assert [r.verdict for r in redone if r.metric == "eagain_rate"] == ["regression"] and "recomputed" in head


def test_report_shows_each_test_s_own_sysctls_topology_and_pressure():
    sample = {
        **_synthetic_sample(0.1),
        "topology": "veth rps_cpus=[1]",
        "pressure": "2 hogs on CPUs [1]",
        "sysctls": {"net.core.netdev_budget": "8"},
        "params": {"payload": 1400, "duration": 0.3},
    }
    d = store.document(
        {"kernel": "6.18", "sysctls": {"net.core.netdev_budget": "300"}}, {"t::x": {"samples": [sample]}}
    )
    html = report.render(d)
    section = html.split("<section>")[1]
    assert "this test ran with" in section and "veth rps_cpus=[1]" in section and "2 hogs on CPUs [1]" in section
    assert "net.core.netdev_budget</th><td>8 <em>(session: 300)</em>" in section and "payload=1400" in section
    assert "sysctls in force at session end" in html.split("<section>")[0]


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
    result = pytester.runpytest_subprocess(
        "--udpsend-baseline", str(base), "--udpsend-repeat", "5", "--udpsend-json", str(tmp_path / "new.json")
    )
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
    return {
        "eagain_rate": rate,
        "pps": 1e5,
        "kernel": "6.1",
        "topology": "veth",
        "series": series,
        "softnet": {"0": {"time_squeeze": 1}, "1": {"time_squeeze": 9}},
        "wfree": {"backend": "bpf", "histograms": {"inline": hist, "softirq": hist}},
    }


def test_report_is_self_contained_with_plots(tmp_path):
    new = doc({"t::x": [_synthetic_sample(0.5 + i / 1000) for i in range(5)]}, "6.12")
    base = doc({"t::x": [_synthetic_sample(0.05 + i / 1000) for i in range(5)]})
    html = report.render(new, base)
    assert html.count("<svg") >= 5
    for title in (
        "EAGAIN rate over the run",
        "SIOCOUTQ occupancy",
        "sock_wfree latency histogram by context",
        "time_squeeze per CPU",
        "eagain_rate: regression",
        "Baseline comparison",
    ):
        assert title in html
    assert not re.search(r"(src|href)=[\"']?https?:", html) and "<script" not in html
    res, out = tmp_path / "r.json", tmp_path / "r.html"
    store.write(res, new)
    done = subprocess.run(
        [sys.executable, "-m", "pytest_udpsend.cli", "report", str(res), "-o", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0 and out.read_text().startswith("<!DOCTYPE html>")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium to render the report")
def test_report_renders_in_headless_chromium(tmp_path):
    """The report opens in a real browser: the DOM it builds has every plot as an SVG element."""
    html = tmp_path / "r.html"
    html.write_text(
        report.render(
            doc({"t::x": [_synthetic_sample(0.1 + i / 1000) for i in range(5)]}),
            doc({"t::x": [_synthetic_sample(0.05 + i / 1000) for i in range(5)]}),
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") >= 6 and "sock_wfree latency histogram by context" in dom.stdout
    shot = tmp_path / "r.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a page with plots, not a blank one

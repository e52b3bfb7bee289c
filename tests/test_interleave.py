"""--udpsend-interleave: two arms in one run, judged on the per-round pairs (results/paired.py).

The measuring cases use what the mechanism fixes: a paced sender's pps is its rate, so a
candidate paced at half the rate is worse by half in every pair, and a baseline against itself
(a control) is not flagged beyond its family-wise level.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from pytest_udpsend.frontend.interleave import orders
from pytest_udpsend.host.state import FileLock
from pytest_udpsend.results import paired

pytest_plugins = ["pytester"]

TOL = ["-o", "udpsend_compare_metrics=pps eagain_rate", "-o", "udpsend_tolerance=0.05", "-p", "no:cacheprovider"]


def _rounds(base: list[float], cand: list[float], metric: str = "pps") -> list[dict[str, list[dict[str, float]]]]:
    return [{"baseline": [{metric: b}], "candidate": [{metric: c}]} for b, c in zip(base, cand)]


# --- the rule, on numbers ---------------------------------------------------------------------


def test_every_pair_beyond_the_allowed_change_is_a_regression_at_the_smallest_p() -> None:
    rounds = _rounds([100.0] * 10, [80.0 + i * 0.1 for i in range(10)])
    row = paired.judge("t", rounds, "pps", tolerance=0.05, level=0.01)
    assert row.verdict == "regressed"
    assert row.p == pytest.approx(0.5**10)
    assert row.low is not None and row.high is not None and row.estimate is not None
    assert 1.05 < row.low <= row.estimate <= row.high  # the interval excludes the allowed change
    assert row.estimate == pytest.approx(100 / 80.45, rel=0.01)


def test_a_change_inside_the_tolerance_is_not_flagged_however_consistent() -> None:
    rounds = _rounds([100.0] * 12, [97.0 + (i % 3) * 0.1 for i in range(12)])
    row = paired.judge("t", rounds, "pps", tolerance=0.05, level=0.01)
    assert row.verdict == "ok"
    assert row.estimate is not None and row.estimate < 1.05


def test_the_same_numbers_drifting_together_are_not_a_change() -> None:
    rng = random.Random(7)
    drift = [1000.0 * (1 + 0.3 * math.sin(i)) for i in range(16)]  # both arms drift alike: 30 % swings
    rounds = _rounds(drift, [d * rng.uniform(0.99, 1.01) for d in drift])
    assert paired.judge("t", rounds, "pps", tolerance=0.05, level=0.0025).verdict == "ok"


def test_zero_eagain_in_both_arms_is_no_change_whatever_the_send_counts() -> None:
    rounds = [
        {
            "baseline": [{"eagain_rate": 0.0, "eagain": 0, "attempts": 100000}],
            "candidate": [{"eagain_rate": 0.0, "eagain": 0, "attempts": 50000}],
        }
        for _ in range(10)
    ]
    assert paired.shifts(rounds, "eagain_rate") == [0.0] * 10
    assert paired.judge("t", rounds, "eagain_rate", 0.05, 0.01).verdict == "ok"


def test_eagain_from_zero_has_a_logit_and_doubled_odds_are_found() -> None:
    base = [{"eagain_rate": 0.0, "eagain": 0, "attempts": 10000}]
    cand = [{"eagain_rate": 0.2, "eagain": 2000, "attempts": 10000}]
    rounds = [{"baseline": base, "candidate": cand}] * 10
    assert all(s > 0 for s in paired.shifts(rounds, "eagain_rate"))
    assert paired.judge("t", rounds, "eagain_rate", 0.05, 0.01).verdict == "regressed"


def test_a_change_within_the_absolute_floor_is_not_news() -> None:
    rounds = [
        {
            "baseline": [{"eagain_rate": 0.001, "eagain": 10, "attempts": 10000}],
            "candidate": [{"eagain_rate": 0.004, "eagain": 40, "attempts": 10000}],
        }
        for _ in range(10)
    ]
    row = paired.judge("t", rounds, "eagain_rate", 0.05, 0.01)
    assert row.p is not None and row.p < 0.01
    assert row.verdict == "ok" and "absolute floor" in row.note


def test_too_few_rounds_for_the_family_are_refused_in_one_sentence() -> None:
    why = paired.refusal(10, 0.05, 60, 6)
    assert why is not None and "\n" not in why
    assert "--udpsend-interleave 13" in why and "udpsend_compare_metrics" in why
    assert paired.refusal(16, 0.05, 20, 2) is None


def test_orders_are_balanced_over_each_two_rounds() -> None:
    plan = orders(16, random.Random(3))
    assert plan.count(("baseline", "candidate")) == plan.count(("candidate", "baseline")) == 8
    assert all(plan[i] != plan[i + 1] for i in range(0, 16, 2))
    assert len({tuple(orders(16, random.Random(s))) for s in range(20)}) > 1  # random, not fixed


# --- what a user sees -------------------------------------------------------------------------

MEASURING = """
import json, os
import pytest

@pytest.mark.udpsend(duration=0.3, cpu=0, rate=20000)
@pytest.mark.candidate(udpsend={"rate": 10000})
def test_slower(udpsend_result):
    assert udpsend_result.sent > 0

@pytest.mark.udpsend(duration=0.3, cpu=0, rate=20000)
def test_control(udpsend_result, udpsend_arm):
    with open(os.environ["ARMS_SEEN"], "a") as f:
        f.write(udpsend_arm + "\\n")

def test_not_ours():
    pass
"""


def test_a_slower_candidate_fails_with_the_paired_table_and_a_control_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(MEASURING)
    arms = pytester.path / "arms.txt"
    monkeypatch.setenv("ARMS_SEEN", str(arms))
    result = pytester.runpytest(
        "--udpsend-interleave", "8", "--udpsend-require-privileges", "--udpsend-json", "out.json", *TOL
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_slower _*",
            "udpsend interleaved A/B: the candidate regressed",
            "pps * 8 *regressed",
            "candidates that regressed: *test_slower pps*",
            "controls that moved (the host was noisy; in-run A/A): none",
        ]
    )
    # the udpsend_arm fixture sees both arms, 8 rounds each: here it changes nothing, so the test is not a control
    assert sorted(arms.read_text().split()) == ["baseline"] * 8 + ["candidate"] * 8
    from pytest_udpsend.results import store

    doc = store.load(pytester.path / "out.json")
    slower = next(v for k, v in doc["tests"].items() if k.endswith("test_slower"))
    record = slower["interleave"]
    assert len(record["rounds"]) == 8 and not record["control"]
    assert sorted(r["order"] for r in record["rounds"]) == ["BC"] * 4 + ["CB"] * 4
    assert all(s["pps"] < 12000 for r in record["rounds"] for s in r["candidate"])
    assert len(slower["samples"]) == 8  # the baseline arm's samples: what a later two-session gate reads


def test_a_bound_broken_in_one_arm_names_the_arm_and_round(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.udpsend(duration=0.2, cpu=0, rate=20000)
        @pytest.mark.candidate(udpsend={"rate": 5000})
        def test_floor(udpsend_result):
            assert udpsend_result.pps > 10000, "too slow"
    """)
    result = pytester.runpytest("--udpsend-interleave", "8", "--udpsend-require-privileges", *TOL)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*too slow*", "*this run failed in the candidate arm of round [12] of 8*"])


def test_a_misspelled_candidate_argument_is_one_sentence_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.udpsend(duration=0.2)
        @pytest.mark.candidate(udpsnd={"rate": 5000})
        def test_typo(udpsend_result):
            pass

        @pytest.mark.udpsend(duration=0.2)
        @pytest.mark.candidate(udpsend={"rat": 5000})
        def test_typo_inside(udpsend_result):
            pass
    """)
    result = pytester.runpytest("--udpsend-interleave", "8", *TOL)
    result.stdout.fnmatch_lines(
        [
            "*test_typo: @pytest.mark.candidate: unknown argument 'udpsnd'; accepted arguments: topology, sysctl, udpsend, cpu_pressure",
            "*test_typo_inside: @pytest.mark.candidate(udpsend={...}): unknown argument 'rat'*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_rounds_that_cannot_reach_the_level_are_refused_before_measuring(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MEASURING)
    result = pytester.runpytest("--udpsend-interleave", "3", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--udpsend-interleave 3: with 12 comparisons (2 test(s) x 6 metric(s))*use --udpsend-interleave*"]
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--udpsend-candidate-sysctl", "net.core.netdev_budget=8"],
            "*defines the candidate arm of --udpsend-interleave*",
        ),
        (
            ["--udpsend-interleave", "8", "--udpsend-candidate-sysctl", "net.core.no_such_knob=8"],
            "*unknown sysctl net.core.no_such_knob*",
        ),
        (
            ["--udpsend-interleave", "8", "--udpsend-candidate-sysctl", "net.core.netdev_budget"],
            "*use KEY=VALUE, e.g. --udpsend-candidate-sysctl net.core.netdev_budget=8*",
        ),
        (["--udpsend-interleave", "1"], "*--udpsend-interleave 1: one round is one pair*"),
        (
            ["--udpsend-interleave", "8", "--udpsend-kernel", "host", "--udpsend-kernel", "host"],
            "*alternates the boots of two*",
        ),
    ],
)
def test_bad_interleave_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], expected: str) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "Traceback" not in result.stderr.str()


def test_a_candidate_sysctl_is_set_in_the_candidate_arm_only_and_restored(pytester: pytest.Pytester) -> None:
    knob = Path("/proc/sys/net/core/netdev_budget")
    with FileLock("host"):  # another worker's test may hold the knob changed: see its resting value
        before = knob.read_text().strip()
    pytester.makepyfile(f"""
        import os
        from pathlib import Path

        def test_seen(udp_sender, udpsend_arm):
            udp_sender.run(duration=0.1, cpu=0, rate=2000)
            with open("seen.txt", "a") as f:
                f.write(f"{{udpsend_arm}} {{Path('{knob}').read_text().strip()}}\\n")
    """)
    result = pytester.runpytest(
        "--udpsend-interleave",
        "8",
        "--udpsend-candidate-sysctl",
        "net.core.netdev_budget=17",
        "--udpsend-require-privileges",
        *TOL,
    )
    result.assert_outcomes(passed=1)
    seen = (pytester.path / "seen.txt").read_text().split("\n")
    assert sorted(x for x in seen if x) == [f"baseline {before}"] * 8 + ["candidate 17"] * 8
    with FileLock("host"):
        assert knob.read_text().strip() == before


def _doc(tmp_path: Path, cand_pps: float, control: bool = False) -> Path:
    from pytest_udpsend.results import store

    rounds = [
        {"order": "BC" if i % 2 else "CB", "baseline": [{"pps": 1000.0 + i}], "candidate": [{"pps": cand_pps + i}]}
        for i in range(10)
    ]
    record = {
        "control": control,
        "rounds": rounds,
        "level": 0.05,
        "family": 1,
        "tolerance": 0.05,
        "paired": [paired.judge("t.py::t", rounds, "pps", 0.05, 0.05, control).to_dict()],
    }
    doc = store.document(
        {"kernel": "6.18", "backend": "timestamp"},
        {"t.py::t": {"outcome": "passed", "samples": [s for r in rounds for s in r["baseline"]], "interleave": record}},
    )
    path = tmp_path / "run.json"
    store.write(path, doc)
    store.load(path)  # the schema takes it
    return path


def test_udpsend_compare_judges_one_interleaved_document_by_the_same_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_udpsend.cli import main

    slow = _doc(tmp_path, 800.0)
    assert main(["compare", str(slow)]) == 1
    assert "1 candidate(s) regressed: t.py::t" in capsys.readouterr().out
    assert main(["compare", str(slow), "--tolerance", "0.5"]) == 0  # recomputed with the knob given
    assert main(["compare", str(_doc(tmp_path, 800.0, control=True))]) == 0
    assert "control(s) moved (the host was noisy): t.py::t" in capsys.readouterr().out
    assert main(["compare", str(slow), "--alpha", "0.0001"]) == 2  # 10 pairs cannot reach 0.0001
    assert "10 rounds: with 6 comparisons" in capsys.readouterr().err


def test_the_report_shows_both_arms_round_by_round_and_the_paired_verdict(tmp_path: Path) -> None:
    from pytest_udpsend.results import store
    from pytest_udpsend.results.report import render

    html = render(store.load(_doc(tmp_path, 800.0)))
    assert "interleaved baseline and candidate: candidate" in html
    assert "pps per round, both arms" in html
    assert "regression: pps" in html  # the overview line


def test_two_kernels_boot_alternately_and_the_other_is_judged_on_the_pairs(pytester: pytest.Pytester) -> None:
    """host against host (an A/A check of the boots' interleaving): every round runs both, in balanced order."""
    pytester.makepyfile(
        test_paced="""
        import pytest

        @pytest.mark.udpsend(duration=0.2, cpu=0, rate=20000)
        def test_paced(udpsend_result):
            pass
    """
    )
    result = pytester.runpytest(
        "--udpsend-kernel",
        "host",
        "--udpsend-kernel",
        "host",
        "--udpsend-gate-against",
        "host",
        "--udpsend-interleave",
        "6",
        "--udpsend-require-privileges",
        "--udpsend-json",
        "k.json",
        "-o",
        "udpsend_compare_metrics=pps",
        "-o",
        "udpsend_tolerance=0.05",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    from pytest_udpsend.results import store

    doc = store.load(pytester.path / "k.json")  # the schema takes the paired record
    ref, other = doc["runs"]
    assert len(next(iter(ref["tests"].values()))["samples"]) == 6  # one per boot of the reference
    record = next(iter(other["tests"].values()))["interleave"]
    assert sorted(r["order"] for r in record["rounds"]) == ["BC"] * 3 + ["CB"] * 3
    assert [r["verdict"] for r in record["paired"]] == ["ok"]


def test_a_candidate_that_sends_nothing_regressed_and_a_lost_metric_fails() -> None:
    zero = [{"baseline": [{"pps": 1000.0 + i}], "candidate": [{"pps": 0.0}]} for i in range(10)]
    assert paired.judge("t", zero, "pps", 0.05, 0.01).verdict == "regressed"
    lost = [
        {"baseline": [{"pps": 1000.0, "wfree": {"p99_us": 50.0}}], "candidate": [{"pps": 1000.0}]} for _ in range(10)
    ]
    row = paired.judge("t", lost, "wfree.p99_us", 0.05, 0.01)
    assert row.verdict == "lost" and row.fails
    control = paired.judge("t", lost, "wfree.p99_us", 0.05, 0.01, control=True)
    assert control.fails  # a control that lost a metric is a broken measurement, not noise


def test_what_n_buys_is_found_four_times_in_five_by_the_test_itself() -> None:
    import numpy as np

    spread, n, level, allowed = 0.1, 10, 0.0025, math.log(1.05)
    d = list(np.random.default_rng(5).normal(0, spread, n))
    shift = math.log(paired._factor(paired.resolvable(d, allowed, level)) or 1.0)
    rng = np.random.default_rng(1)
    found = sum(
        paired.p_worse(list(rng.normal(shift, float(np.std(d, ddof=1)), n)), allowed) < level for _ in range(300)
    )
    assert 0.7 <= found / 300 <= 0.9
    assert shift > allowed


def test_a_summary_lists_a_control_that_moved_apart_from_candidates() -> None:
    from pytest_udpsend.frontend.reporting import interleave_summary

    moved = {
        "control": True,
        "rounds": [],
        "paired": [{"metric": "pps", "verdict": "regressed", "pairs": 10, "estimate": 1.3, "resolvable": 1.1}],
    }
    lines = interleave_summary({"a.py::t": {"samples": [], "interleave": moved}})
    assert lines[0] == "candidates that regressed: none"
    assert lines[1] == "controls that moved (the host was noisy; in-run A/A): a.py::t pps"


def test_an_arm_that_stops_early_leaves_the_next_module_working(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.fixture(scope="module")
        def shared():
            yield "a"

        def test_fails_in_the_candidate(udpsend_arm, shared):
            assert udpsend_arm == "baseline", "the candidate is broken"

        def test_skips_in_the_candidate(udpsend_arm, shared):
            if udpsend_arm == "candidate":
                pytest.skip("not on the candidate")
    """,
        test_b="""
        def test_after(udpsend_arm):
            pass
    """,
    )
    result = pytester.runpytest("--udpsend-interleave", "8", *TOL, "-rA", "--udpsend-json", "o.json")
    result.assert_outcomes(failed=1, skipped=1, passed=1)
    result.stdout.fnmatch_lines(["*this run failed in the candidate arm of round [12] of 8*"])
    assert "not torn down properly" not in result.stdout.str()


def test_a_control_is_judged_and_recorded_as_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.udpsend(duration=0.2, cpu=0, rate=20000)
        def test_plain(udpsend_result):
            pass
    """)
    result = pytester.runpytest(
        "--udpsend-interleave", "8", "--udpsend-require-privileges", *TOL, "--udpsend-json", "o.json"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_plain [[]control[]] pps: *: ok"])
    from pytest_udpsend.results import store

    record = next(iter(store.load(pytester.path / "o.json")["tests"].values()))["interleave"]
    assert record["control"] and record["metrics"] == ["pps", "eagain_rate"] and record["alpha"] == 0.05


def test_an_udpsend_override_that_no_fixture_reads_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.candidate(udpsend={"rate": 5000})
        def test_by_hand(udp_sender):
            udp_sender.run(duration=0.2, rate=20000)
    """)
    result = pytester.runpytest("--udpsend-interleave", "8", *TOL)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.candidate(udpsend={...}): this test does not use udpsend_result*udpsend_arm fixture"]
    )


def test_compare_recomputes_with_the_runs_own_knobs_where_none_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_udpsend.cli import main
    from pytest_udpsend.results import store

    path = _doc(tmp_path, 800.0)
    doc = store.load(path)
    for entry in doc["tests"].values():
        entry["interleave"].update(alpha=0.05, metrics=["pps"])
    store.write(path, doc)
    assert main(["compare", str(path), "--tolerance", "0.05"]) == 1  # 10 rounds, 1 metric: reachable, and regressed
    assert "10 rounds" not in capsys.readouterr().err

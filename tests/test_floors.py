"""Per-test noise floors learned from a baseline of several sessions (results/floors.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pytest_udpsend.cli import main
from pytest_udpsend.results import floors, store

pytest_plugins = ["pytester"]


def _session(pps: list[float]) -> dict[str, dict[str, list[dict[str, float]]]]:
    return {"t.py::stable": {"samples": [{"pps": v} for v in pps]}}


def test_a_stable_test_gets_a_tight_floor_and_a_noisy_one_a_wide_one() -> None:
    rng = random.Random(1)
    stable = [_session([1000 * rng.uniform(0.99, 1.01) for _ in range(4)]) for _ in range(6)]
    noisy = [_session([1000 * rng.uniform(0.5, 1.5) for _ in range(4)]) for _ in range(6)]
    tight = floors.learned(stable)["t.py::stable"]["pps"]
    wide = floors.learned(noisy)["t.py::stable"]["pps"]
    assert tight["sessions"] == 6
    assert 1.0 < tight["factor"] < 1.1 < wide["factor"]


def test_too_few_sessions_learn_nothing_and_the_bound_is_above_the_estimate() -> None:
    assert floors.learned([_session([1000.0, 1001.0])] * (floors.MIN_SESSIONS - 1)) == {}
    medians = [0.0, 0.01, -0.01, 0.02, -0.02]
    import statistics

    assert floors.spread_bound(medians) > 2 * statistics.stdev(medians)  # 5 sessions: the 95 % bound is wide


def _write(path: Path, tests: dict[str, object]) -> str:
    env = {
        "kernel": "6.18",
        "backend": "timestamp",
        "machine": "x86_64",
        "cpu_model": "m",
        "cpu_count": 2,
        "virtualized": True,
    }
    store.write(path, store.document(env, tests))  # type: ignore[arg-type]
    return str(path)


def test_a_merged_baseline_of_stable_sessions_finds_a_drop_the_global_floor_lets_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(2)
    sessions = [
        _write(
            tmp_path / f"s{i}.json",
            {
                "t.py::stable": {
                    "outcome": "passed",
                    "samples": [{"pps": 1000 * rng.uniform(0.99, 1.01)} for _ in range(6)],
                }
            },
        )
        for i in range(6)
    ]
    new = _write(
        tmp_path / "new.json",
        {"t.py::stable": {"outcome": "passed", "samples": [{"pps": 850.0 + i} for i in range(6)]}},
    )
    assert main(["merge", str(tmp_path / "base.json"), *sessions]) == 0
    capsys.readouterr()
    assert main(["compare", sessions[0], new, "--tolerance", "0.05"]) == 0  # one session: the global pps floor, 37.5 %
    assert main(["compare", str(tmp_path / "base.json"), new, "--tolerance", "0.05"]) == 1  # six: this test's own
    assert "this test's own floor" in capsys.readouterr().out


def test_the_pytest_gate_uses_the_floors_of_a_merged_baseline(pytester: pytest.Pytester, tmp_path: Path) -> None:
    env = store.environment("timestamp")
    rng = random.Random(3)
    paths = []
    for i in range(6):
        doc = store.document(
            env,
            {
                "test_paced.py::test_paced": {
                    "outcome": "passed",
                    "samples": [{"pps": 24000 * rng.uniform(0.995, 1.005)} for _ in range(5)],
                }
            },
        )
        store.write(tmp_path / f"s{i}.json", doc)
        paths.append(str(tmp_path / f"s{i}.json"))
    assert main(["merge", str(tmp_path / "base.json"), *paths]) == 0
    pytester.makepyfile(
        test_paced="""
        import pytest

        @pytest.mark.udpsend(duration=0.2, cpu=0, rate=20000)
        def test_paced(udpsend_result):
            pass
    """
    )
    args = [
        "-p",
        "no:cacheprovider",
        "--udpsend-backend",
        "timestamp",
        "--udpsend-require-privileges",
        "--udpsend-repeat",
        "3",
        "-o",
        "udpsend_tolerance=0.05",
        "-o",
        "udpsend_compare_metrics=pps",
    ]
    one = pytester.runpytest(*args, "--udpsend-baseline", paths[0])
    one.assert_outcomes(passed=1)  # 24000 -> 20000 pps is within the global floor (a factor 1.6)
    merged = pytester.runpytest(*args, "--udpsend-baseline", str(tmp_path / "base.json"))
    merged.assert_outcomes(failed=1)
    merged.stdout.fnmatch_lines(["*udpsend baseline regression*", "*this test's own floor*6 baseline sessions*"])

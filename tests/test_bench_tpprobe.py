"""The overhead figure of ci/bench_tpprobe.py: each arm's cost from the rounds' pairs, by the
interleaved gate's rule.  The pps runs themselves are a benchmark."""

from __future__ import annotations

from types import ModuleType

import pytest

from .conftest import ci_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return ci_script("bench_tpprobe")


def test_a_cost_hidden_by_a_drifting_load_is_found_from_the_pairs(bench: ModuleType) -> None:
    # the load halves the rate over the rounds (a median of each arm alone would see +-50 %), the arm is 4 % slower
    without = [300_000 - 15_000 * i for i in range(10)]
    arm = [w * 0.96 * (1 + 0.002 * (-1) ** i) for i, w in enumerate(without)]
    said = bench.paired_cost(without, arm)
    assert said.startswith("4.0% fewer, interval 3.") and said.endswith("to 4.2% (10 rounds)"), said


def test_no_cost_gives_an_interval_around_zero(bench: ModuleType) -> None:
    without = [200_000.0 + 1000 * (i % 3) for i in range(8)]
    arm = [w * (1 + 0.01 * (-1) ** i) for i, w in enumerate(without)]
    low, high = bench.paired_cost(without, arm).split("interval ")[1].split(" (")[0].split(" to ")
    assert float(low.rstrip("%")) < 0 < float(high.rstrip("%"))


def test_too_few_rounds_say_so(bench: ModuleType) -> None:
    assert bench.paired_cost([1.0] * 5, [1.0] * 5) == "5 rounds: too few for an interval (--rounds 6 or more)"

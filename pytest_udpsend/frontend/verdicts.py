"""After the test body: check the assertion markers and the baseline against the test's samples."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from pytest_udpsend.frontend.keys import COMPARE_KEY, RESULTS_KEY, udpsend_session
from pytest_udpsend.frontend.markers import SCENARIO_KEY, Scenario
from pytest_udpsend.results import compare
from pytest_udpsend.results.bounds import aggregate, check, failure_table


def check_item(item: pytest.Item) -> None:
    """Fail the test (no traceback) with a table if a bound is violated or the baseline regressed."""
    scenario = item.stash.get(SCENARIO_KEY, None) or Scenario()
    results = item.stash.get(RESULTS_KEY, [])
    samples = [r.to_dict() for r in results]
    failures = [f for f in (_baseline_failure(item, scenario, samples), _bounds_failure(scenario, samples)) if f]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def _bounds_failure(scenario: Scenario, samples: list[dict[str, Any]]) -> str | None:
    if not scenario.bounds.bounds:
        return None
    if not samples:
        return (
            "assertion markers (eagain_rate, time_squeeze, wfree_latency) need a measurement: "
            "use the udpsend_result fixture or call udp_sender.run() in the test"
        )
    merged = aggregate(samples)
    rows = check(scenario.bounds, merged)
    if all(ok for _, _, ok in rows):
        return None
    label = f" (median of {len(samples)} samples)" if len(samples) > 1 else ""
    return failure_table(rows, merged, label)


def _baseline_failure(item: pytest.Item, scenario: Scenario, samples: list[dict[str, Any]]) -> str | None:
    session = udpsend_session(item.config)
    baseline = session.baseline
    if baseline is None or not samples:
        return None
    key = compare.base_key(item.nodeid)
    tolerance = scenario.baseline.tolerance if scenario.baseline.tolerance is not None else session.tolerance
    metrics = scenario.baseline.metrics or session.compare_metrics
    rows = compare.compare_test(key, compare.find(key, session.baseline_samples), samples, tolerance, session.alpha, metrics)
    item.stash[COMPARE_KEY] = [asdict(r) for r in rows]
    if not any(r.regressed for r in rows):
        return None
    env = {"kernel": samples[-1].get("kernel")}
    return "udpsend baseline regression:\n" + compare.table(rows, baseline.get("environment"), env)

"""After the test body: check the assertion markers and the baseline against the test's samples."""

from __future__ import annotations

import os
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
    release = str(samples[-1].get("kernel") or os.uname().release) if samples else os.uname().release
    applied, skipped = scenario.bounds.split(release)
    if not applied:
        return None
    if not samples:
        return (
            "assertion markers (eagain_rate, time_squeeze, wfree_latency, busy_wait, resume_ms) need a measurement: "
            "use the udpsend_result fixture or call udp_sender.run() in the test"
        )
    merged = aggregate(samples)
    rows = check(applied, merged)
    if all(ok for _, _, ok in rows):
        return None
    label = f" (median of {len(samples)} samples)" if len(samples) > 1 else ""
    return failure_table(rows, merged, label, skipped)


def _baseline_failure(item: pytest.Item, scenario: Scenario, samples: list[dict[str, Any]]) -> str | None:
    session = udpsend_session(item.config)
    baseline = session.baseline
    if baseline is None:
        return None
    key = compare.base_key(item.nodeid)
    base = compare.find(key, session.baseline_samples)
    if not samples and not base:
        return None  # measured on neither side: not a test the gate is about
    # a test the baseline measured that measured nothing here is refused (compare_test: "no samples")
    rows = compare.compare_test(
        key,
        base,
        samples,
        session.gate,
        session.gate_family,
        scenario.baseline.tolerance,
        scenario.baseline.metrics,
        compare.find(key, session.baseline_floors),
    )
    item.stash[COMPARE_KEY] = [asdict(r) for r in rows]
    if rows[0].verdict == "measured differently":
        return f"udpsend baseline: {compare.mixed_refusal(rows[0].note, '--udpsend-allow-mixed')}"
    if why := compare.refusal(rows, session.gate, session.gate_family, "--udpsend-allow-mixed"):
        return f"udpsend baseline: this test cannot be judged: {why}"
    if not any(r.regressed for r in rows):
        return None
    env = {"kernel": samples[-1].get("kernel")}
    head = compare.header(session.gate, session.gate_family)
    return "udpsend baseline regression:\n" + compare.table(rows, baseline.get("environment"), env, head)

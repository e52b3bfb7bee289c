"""After the test body: check the assertion markers against the test's SendResult(s)."""

from __future__ import annotations

import pytest

from . import assertions
from .fixtures import RESULTS_KEY
from .markers import SCENARIO_KEY


def check_item(item: pytest.Item) -> None:
    """Fail the test (no traceback) with the bounds table if a bound is violated."""
    scenario = item.stash.get(SCENARIO_KEY, None)
    if scenario is None or not scenario.bounds.bounds:
        return
    results = item.stash.get(RESULTS_KEY, [])
    if not results:
        pytest.fail(
            "assertion markers (eagain_rate, time_squeeze, wfree_latency) need a measurement: "
            "use the udpsend_result fixture or call udp_sender.run() in the test",
            pytrace=False,
        )
    samples = [r.to_dict() for r in results]
    merged = assertions.aggregate(samples)
    rows = assertions.check(scenario.bounds, merged)
    if not all(ok for _, _, ok in rows):
        label = f" (median of {len(samples)} samples)" if len(samples) > 1 else ""
        pytest.fail(assertions.failure_table(rows, merged, label), pytrace=False)

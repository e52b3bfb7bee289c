"""What a metric is and how to read it from a result: one place for bounds, the gate and the report.

A metric is a dotted path into a SendResult dict (``"wfree.p99_us"`` reads
``result["wfree"]["p99_us"]``) with the direction in which it gets worse and the
absolute floor below which a change means nothing (an EAGAIN rate moving from
0.0001 to 0.0003 is +200 % and meaningless).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# metric -> (direction of "worse", absolute floor of the allowed change)
METRICS: dict[str, tuple[str, float]] = {
    "eagain_rate": ("higher", 0.005),
    "time_squeeze": ("higher", 5.0),
    "enobufs": ("higher", 10.0),
    "wfree.p50_us": ("higher", 5.0),
    "wfree.p99_us": ("higher", 20.0),
    "pps": ("lower", 0.0),
}


def lookup(result: Mapping[str, Any], metric: str) -> Any:
    value: Any = result
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def values(samples: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """The numeric values of ``metric`` over ``samples`` (samples that lack it are left out)."""
    return [float(v) for v in (lookup(s, metric) for s in samples) if isinstance(v, (int, float))]

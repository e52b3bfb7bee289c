"""What a metric is and how to read it from a result: one place for bounds, the gate and the report.

A metric is a dotted path into a SendResult dict (``"wfree.p99_us"`` reads
``result["wfree"]["p99_us"]``) with the direction in which it gets worse, the
absolute floor below which a change means nothing (an EAGAIN rate moving from
0.0001 to 0.0003 is +200 % and meaningless), and its session noise floor: the
factor by which two sessions of an unchanged host may differ (see ``Metric.noise``).
A rate (a fraction of the sends, bounded by 1) takes that factor on its odds,
rate / (1 - rate): x4 on the rate itself would allow any rise from 25 % (a rate of
0.53 "may" become 2.1), while x4 on the odds lets 0.01 become 0.04 and 0.53 become 0.82.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    worse: str  # "higher" or "lower": the direction in which the metric gets worse
    floor: float  # absolute change that never counts, whatever the relative change
    # Session noise floor, a factor in the worse direction: two sessions of an unchanged host
    # differ by up to this much.  Set from FIELD-NOTES "Session drift" (6 sessions, CV of the
    # per-session medians: pps 0.14, max 0.21; eagain_rate 0.48, max 1.19; time_squeeze 0.37,
    # max 0.74, with single A/A pairs as far apart as 33 -> 308): about 2.2 x sqrt(2) x the
    # larger CVs in log terms.  The wfree and enobufs figures are not measured; they follow
    # the EAGAIN rate's.
    noise: float
    scale: str = "linear"  # "odds": the noise factor applies to value / (1 - value) (a rate in [0, 1])
    most: float = math.inf  # the largest value it can take: a bound above it is a mistake


def most(metric: str) -> float:
    """The largest value ``metric`` can take (1 for a rate; no limit for counts, times and metrics not listed)."""
    spec = METRICS.get(metric) or BOUND_ONLY.get(metric)
    return spec.most if spec else math.inf


METRICS: dict[str, Metric] = {
    "eagain_rate": Metric("higher", 0.01, 4.0, "odds", 1.0),
    "time_squeeze": Metric("higher", 50.0, 4.0),
    "enobufs": Metric("higher", 10.0, 4.0),
    "wfree.p50_us": Metric("higher", 5.0, 2.0),
    "wfree.p99_us": Metric("higher", 20.0, 3.0),
    "pps": Metric("lower", 0.0, 1.6),
}


# Metrics that assertion markers bound but the gate does not compare by default: None by design where
# there is nothing to measure (busy_wait: the send buffer never filled), which the gate would call "lost",
# and absent from every result saved before it existed.
BOUND_ONLY: dict[str, Metric] = {
    # fraction of one CPU while the send buffer was full (a program's processes together may use more than one)
    "busy_wait": Metric("higher", 0.1, 1.5),
}


def odds_scaled(rate: float, factor: float) -> float:
    """The rate whose odds are ``factor`` times those of ``rate`` (0 and 1 stay where they are)."""
    if rate >= 1.0 or rate <= 0.0:
        return rate
    odds = rate / (1.0 - rate) * factor
    return odds / (1.0 + odds)


def lookup(result: Mapping[str, Any], metric: str) -> Any:
    value: Any = result
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def values(samples: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """The numeric values of ``metric`` over ``samples`` (samples that lack it are left out)."""
    return [float(v) for v in (lookup(s, metric) for s in samples) if isinstance(v, (int, float))]

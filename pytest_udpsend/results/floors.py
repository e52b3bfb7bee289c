"""Per-test noise floors learned from a baseline made of several sessions.

The session floors in ``metrics.METRICS`` come from six sessions of one host and hold for
every test alike, so a stable test is judged as loosely as the noisiest one.  A baseline
made from several sessions (``udpsend merge`` of their documents, or fan-in history) says
how far *this* test's per-session medians drift apart, and the two-session gate uses that
(rustc-perf's per-benchmark significance thresholds):

* per session, the median of the test's samples on the metric's log scale (log odds for a
  rate, ``log1p`` for a count, log otherwise);
* their standard deviation over at least ``MIN_SESSIONS`` sessions, raised to its upper
  95 % confidence bound (chi-square, k - 1 degrees of freedom), so that a quiet history of
  a few lucky sessions does not let false alarms through;
* the floor is ``exp(MULTIPLIER x that bound)``, the same multiple of the spread the global
  floors were set from (about 2.2 x sqrt(2) x the drift, in log terms).

The 95 % is per test and metric, not over the family: the floors widen what counts as
noise, and the gate's family-wise level still controls the false alarms on top of them.
Identical sessions (one file merged twice) count once.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

from pytest_udpsend.results.metrics import METRICS, values

MIN_SESSIONS = 5
CONFIDENCE = 0.95
MULTIPLIER = 2.2 * math.sqrt(2)
COUNTS = ("time_squeeze", "enobufs")


def _scaled(metric: str, value: float) -> float | None:
    if METRICS[metric].scale == "odds":
        rate = min(max(value, 1e-4), 1 - 1e-4)  # a session with no EAGAIN at all: a floor, not minus infinity
        return math.log(rate / (1 - rate))
    if metric in COUNTS:
        return math.log1p(max(value, 0.0))
    return math.log(value) if value > 0 else None


def spread_bound(medians: Sequence[float]) -> float:
    """Upper confidence bound on the standard deviation of ``medians`` (chi-square)."""
    k = len(medians)
    return statistics.stdev(medians) * math.sqrt((k - 1) / float(stats.chi2.ppf(1 - CONFIDENCE, k - 1)))


def _distinct(sessions: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[Mapping[str, Mapping[str, Any]]]:
    seen: dict[str, Mapping[str, Mapping[str, Any]]] = {}
    for session in sessions:
        seen.setdefault(json.dumps(session, sort_keys=True, default=str), session)
    return list(seen.values())


def learned(
    sessions: Sequence[Mapping[str, Mapping[str, Any]]], names: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """``{test: {metric: {"factor": f, "sessions": k}}}`` from sessions' ``tests`` tables (nodeid -> entry with samples);
    only tests and metrics measured in at least ``MIN_SESSIONS`` sessions get one."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    sessions = _distinct(sessions)  # one file merged twice is one session, not a spread of zero
    tests = {t for s in sessions for t in s}
    for test in sorted(tests):
        for metric in names or METRICS:
            medians = []
            for session in sessions:
                found = values((session.get(test) or {}).get("samples", []), metric)
                scaled = _scaled(metric, statistics.median(found)) if found else None
                if scaled is not None:
                    medians.append(scaled)
            if len(medians) >= MIN_SESSIONS:
                factor = math.exp(MULTIPLIER * spread_bound(medians))
                out.setdefault(test, {})[metric] = {"factor": factor, "sessions": len(medians)}
    return out

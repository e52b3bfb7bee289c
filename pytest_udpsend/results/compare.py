"""Baseline comparison: is a metric *significantly* worse, and by more than the tolerance?

Method (documented in the README):

* For each metric, the baseline's samples and the new samples of one test are
  compared with a one-sided Mann-Whitney U test in the metric's "worse"
  direction (exact distribution for small samples, normal approximation with tie
  correction beyond).  It makes no normality assumption; these rates are skewed.
* A regression needs both: p < alpha / k (default alpha 0.05; k metrics compared
  per test, Bonferroni, so that a test's false-alarm rate stays under alpha however
  many metrics it has) *and* the median moved in the worse direction by more than
  the tolerance: ``tolerance x |baseline median|``,
  but at least the metric's absolute floor (an EAGAIN rate going from 0.0001 to
  0.0003 is +200 % and meaningless).
* Where the sample counts cannot reach significance at all (the smallest possible
  p, 1 / C(n+m, n), is not below the per-metric alpha) the row says "too few
  samples": a single sample is never a gate.  5 samples a side suffice for up to
  12 metrics; use --udpsend-repeat 5 or more when gating.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pytest_udpsend.results.metrics import METRICS, values

DEFAULT_TOLERANCE = 0.25
DEFAULT_ALPHA = 0.05
MIN_SAMPLES = 3
_KERNEL_SUFFIX = re.compile(r"\[kernel=[^\]]*\]$|@[^/\s]+$")


def base_key(nodeid: str) -> str:
    """The comparison key of a test: its node id without a kernel-lane suffix."""
    return _KERNEL_SUFFIX.sub("", nodeid)


def find(key: str, by_test: Mapping[str, Any]) -> Any:
    """``by_test[key]``, or the one entry whose id matches ``key`` on a path boundary.

    Node ids are relative to pytest's rootdir, which moves when it is not pinned by
    an ini file (a path given to an option counts when pytest picks it), so
    ``gate/test_x.py::t`` and ``test_x.py::t`` must meet.
    """
    if key in by_test:
        return by_test[key]
    matches = [k for k in by_test if k.endswith("/" + key) or key.endswith("/" + k)]
    return by_test[matches[0]] if len(matches) == 1 else None


@lru_cache(maxsize=256)
def _u_distribution(n: int, m: int) -> tuple[int, ...]:
    """Counts of each U value (0..n*m) over all C(n+m, n) arrangements, no ties."""
    # f(n, m, u) = f(n-1, m, u-m) + f(n, m-1, u)
    table = [[[0] * (n * m + 1) for _ in range(m + 1)] for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 or j == 0:
                table[i][j][0] = 1
                continue
            for u in range(i * j + 1):
                table[i][j][u] = (table[i - 1][j][u - j] if u >= j else 0) + table[i][j - 1][u]
    return tuple(table[n][m])


def mann_whitney_greater(new: Sequence[float], base: Sequence[float]) -> float:
    """One-sided p-value for H1: ``new`` tends to be larger than ``base``."""
    n, m = len(new), len(base)
    u = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in new for y in base)
    ties = len(set(new) & set(base)) or len(set(new)) < n or len(set(base)) < m
    if n <= 12 and m <= 12 and not ties:
        dist = _u_distribution(n, m)
        return sum(dist[int(u) :]) / math.comb(n + m, n)
    ranks: dict[float, list[int]] = {}
    for rank, value in enumerate(sorted([*new, *base]), start=1):
        ranks.setdefault(value, []).append(rank)
    tie_term = sum(len(r) ** 3 - len(r) for r in ranks.values())
    sigma = math.sqrt(n * m / 12 * ((n + m + 1) - tie_term / ((n + m) * (n + m - 1))))
    if sigma == 0:
        return 1.0
    z = (u - n * m / 2 - 0.5) / sigma  # continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class Row:
    test: str
    metric: str
    base_median: float | None
    new_median: float | None
    change: float | None  # relative, in the worse direction positive
    p_value: float | None
    verdict: str  # "regression", "ok", "improved", "too few samples", "no baseline", "not measured"

    @property
    def regressed(self) -> bool:
        return self.verdict == "regression"


def compare_metric(test: str, metric: str, base: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]],
                   tolerance: float = DEFAULT_TOLERANCE, alpha: float = DEFAULT_ALPHA) -> Row:  # fmt: skip
    direction, floor = METRICS[metric]
    b, n = values(base, metric), values(new, metric)
    if not b or not n:
        return Row(test, metric, None, None, None, None, "not measured")
    bm, nm = statistics.median(b), statistics.median(n)
    sign = 1 if direction == "higher" else -1
    moved = sign * (nm - bm)
    change = moved / abs(bm) if bm else (math.inf if moved > 0 else 0.0)
    if len(b) < MIN_SAMPLES or len(n) < MIN_SAMPLES or 1 / math.comb(len(b) + len(n), len(n)) >= alpha:
        return Row(test, metric, bm, nm, change, None, "too few samples")  # significance is out of reach
    p = mann_whitney_greater(n, b) if direction == "higher" else mann_whitney_greater(b, n)
    allowed = max(tolerance * abs(bm), floor)
    if p < alpha and moved > allowed:
        verdict = "regression"
    else:
        q = mann_whitney_greater(b, n) if direction == "higher" else mann_whitney_greater(n, b)
        verdict = "improved" if q < alpha and -moved > allowed else "ok"
    return Row(test, metric, bm, nm, change, p, verdict)


def compare_test(test: str, base: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]],
                 tolerance: float = DEFAULT_TOLERANCE, alpha: float = DEFAULT_ALPHA,
                 metrics: Sequence[str] | None = None) -> list[Row]:  # fmt: skip
    names = list(metrics or METRICS)
    if base is None:
        return [Row(test, "-", None, None, None, None, "no baseline")]
    measured = [m for m in names if values(base, m) and values(new, m)]
    per_metric = alpha / max(len(measured), 1)  # Bonferroni over the metrics this test really has
    return [compare_metric(test, m, base, new, tolerance, per_metric) for m in names]


def samples_by_test(doc: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    return {base_key(k): v.get("samples", []) for k, v in doc.get("tests", {}).items()}


def compare_docs(base: Mapping[str, Any], new: Mapping[str, Any], tolerance: float = DEFAULT_TOLERANCE,
                 alpha: float = DEFAULT_ALPHA) -> list[Row]:  # fmt: skip
    b, n = samples_by_test(base), samples_by_test(new)
    rows: list[Row] = []
    for test in sorted(n):
        rows += compare_test(test, find(test, b), n[test], tolerance, alpha)
    rows += [Row(test, "-", None, None, None, None, "missing in new run") for test in sorted(b) if find(test, n) is None]
    return rows


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == math.inf:
        return "+inf"
    return f"{value:.4g}"


def table(rows: Sequence[Row], base_env: Mapping[str, Any] | None = None, new_env: Mapping[str, Any] | None = None) -> str:
    lines = []
    if base_env or new_env:
        lines.append(f"baseline: kernel {(base_env or {}).get('kernel', '?')}   new: kernel {(new_env or {}).get('kernel', '?')}")
    width = max([len(r.test) for r in rows] + [4])
    lines.append(f"{'test':<{width}}  {'metric':<13} {'baseline':>10} {'new':>10} {'change':>8} {'p':>7}  verdict")
    for r in rows:
        change = "-" if r.change is None else ("+inf" if r.change == math.inf else f"{r.change:+.0%}")
        p = "-" if r.p_value is None else f"{r.p_value:.3f}"
        lines.append(f"{r.test:<{width}}  {r.metric:<13} {_num(r.base_median):>10} {_num(r.new_median):>10} {change:>8} {p:>7}  {r.verdict}")
    return "\n".join(lines)


def compare_files(base_path: str, new_path: str, tolerance: float | None = None) -> int:
    """``udpsend compare``: print the table; 1 on regression, 0 otherwise."""
    from pytest_udpsend.results import store

    base, new = store.load(base_path), store.load(new_path)
    rows = compare_docs(base, new, DEFAULT_TOLERANCE if tolerance is None else tolerance)
    print(table(rows, base.get("environment"), new.get("environment")))
    bad = [r for r in rows if r.regressed]
    print(f"\n{len(bad)} regression(s) in {len({r.test for r in rows})} test(s)")
    return 1 if bad else 0

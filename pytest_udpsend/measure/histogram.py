"""Latency histograms shared by both sock_wfree probes.

Two binnings: the report's log-spaced edges (``HIST_EDGES_US``, 5 per decade,
1 us .. 10 s), which every backend's result uses so that plots and comparisons
line up; and the eBPF probe's log-linear buckets (``SUB`` bits: 8 sub-buckets per
power of two, at most 12.5 % wide), which the C program fills in the kernel and
which are re-binned onto the report's edges here.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from pytest_udpsend.measure.shapes import Latency

SUB = 3  # log-linear sub-bucket bits; mirrored by SUB in bpfprobe.PROGRAM

# log-spaced histogram edges in microseconds, 1 us .. 10 s, 5 per decade
HIST_EDGES_US = [round(10 ** (i / 5), 3) for i in range(0, 36)]


def latency_stats(samples_ns: Sequence[int]) -> Latency:
    """count, p50/p90/p99/max (us, nearest rank) and a log histogram of ``samples_ns``."""
    values = sorted(samples_ns)
    n = len(values)
    if not n:
        return {"count": 0, "p50_us": None, "p90_us": None, "p99_us": None, "max_us": None, "histogram": {}}

    def pct(q: float) -> float:
        return round(values[min(n - 1, max(0, int(q * n + 0.5) - 1))] / 1000, 2)

    counts = [0] * (len(HIST_EDGES_US) + 1)
    for v in values:
        counts[bisect.bisect_right(HIST_EDGES_US, v / 1000)] += 1
    return {
        "count": n,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": round(values[-1] / 1000, 2),
        "histogram": {"edges_us": HIST_EDGES_US, "counts": counts},
    }


def bucket_bounds_ns(index: int) -> tuple[float, float]:
    """[low, high) of a log-linear bucket, in ns (mirror of bucket() in the C)."""
    if index < (1 << SUB):
        return float(index), float(index + 1)
    level = (index >> SUB) + SUB - 1
    sub = index & ((1 << SUB) - 1)
    width = 1 << (level - SUB)
    low = (1 << level) + sub * width
    return float(low), float(low + width)


def percentile_us(counts: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile from bucket counts, at the bucket's midpoint, in us."""
    total = sum(counts)
    if not total:
        return None
    rank = max(1, int(q * total + 0.5))
    seen = 0
    for index, n in enumerate(counts):
        seen += n
        if seen >= rank:
            low, high = bucket_bounds_ns(index)
            return round((low + high) / 2 / 1000, 2)
    return None


def rebin(counts: Sequence[int]) -> list[int]:
    """Fine buckets -> the report's log edges (HIST_EDGES_US), by bucket midpoint."""
    out = [0] * (len(HIST_EDGES_US) + 1)
    for index, n in enumerate(counts):
        if n:
            low, high = bucket_bounds_ns(index)
            out[bisect.bisect_right(HIST_EDGES_US, (low + high) / 2000)] += n
    return out

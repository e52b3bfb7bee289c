"""Assertion markers: bounds on a SendResult, checked after the test body ran.

A failing bound fails the test with a table: metric, measured, bound, and the
context that makes the number meaningful (kernel, backend, topology, sysctls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.results.metrics import lookup

BACKENDS = ("any", "bpf", "timestamp")


@dataclass(frozen=True)
class Bound:
    marker: str
    metric: str  # dotted path into the result, e.g. "wfree.p99_us"
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g} .. {self.high:g}"
        return f"<= {self.high:g}" if self.high is not None else f">= {self.low:g}"

    def holds(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Bounds:
    bounds: tuple[Bound, ...] = ()
    backend: str = "any"  # what wfree_latency demands

    @property
    def wants_wfree(self) -> bool:
        return any(b.marker == "wfree_latency" for b in self.bounds) or self.backend != "any"


def _num(marker: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{key}={value!r}: must be a non-negative number")
    return float(value)


def min_max(marker: str, metric: str, max: Any = None, min: Any = None) -> Bound:  # noqa: A002
    low, high = _num(marker, "min", min), _num(marker, "max", max)
    if low is None and high is None:
        raise ConfigError("give max= and/or min=")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"min={low:g} is above max={high:g}")
    return Bound(marker, metric, low, high)


def wfree_bounds(p50_us: Any = None, p99_us: Any = None, max_us: Any = None, backend: Any = "any") -> tuple[list[Bound], str]:
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: accepted: {', '.join(BACKENDS)}")
    bounds = [
        Bound("wfree_latency", f"wfree.{key}", None, _num("wfree_latency", key, val))
        for key, val in (("p50_us", p50_us), ("p99_us", p99_us), ("max_us", max_us))
        if val is not None
    ]
    # A bound-less wfree_latency still demands a measurement with samples.
    bounds.append(Bound("wfree_latency", "wfree.count", 1, None))
    return bounds, str(backend)


def check(bounds: Bounds, result: Mapping[str, Any]) -> list[tuple[Bound, Any, bool]]:
    rows = []
    for bound in bounds.bounds:
        value = lookup(result, bound.metric)
        ok = isinstance(value, (int, float)) and bound.holds(float(value))
        rows.append((bound, value, ok))
    return rows


def aggregate(samples: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """With --udpsend-repeat, bounds are checked on the per-metric median of the samples."""
    if len(samples) == 1:
        return dict(samples[0])

    def median_at(path: str) -> Any:
        values = sorted(v for v in (lookup(s, path) for s in samples) if isinstance(v, (int, float)))
        return values[len(values) // 2] if values else None

    merged: dict[str, Any] = dict(samples[-1])
    for metric in ("eagain_rate", "time_squeeze", "pps"):
        merged[metric] = median_at(metric)
    merged["wfree"] = dict(samples[-1].get("wfree") or {})
    for key in ("p50_us", "p90_us", "p99_us", "max_us", "count"):
        merged["wfree"][key] = median_at(f"wfree.{key}")
    return merged


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "not measured" if value is None else str(value)


def failure_table(rows: list[tuple[Bound, Any, bool]], result: Mapping[str, Any], label: str = "") -> str:
    """The text a failing assertion marker shows."""
    width = max(len(r[0].metric) for r in rows) + 2
    lines = [f"udpsend bounds violated{label}:", f"  {'metric':<{width}}{'measured':>14}  {'bound':<16}ok"]
    for bound, value, ok in rows:
        lines.append(f"  {bound.metric:<{width}}{_fmt(value):>14}  {bound.describe():<16}{'yes' if ok else 'NO'}")
    wfree = result.get("wfree") or {}
    sysctls = result.get("sysctls") or {}
    lines += [
        "  context:",
        f"    kernel   {result.get('kernel')}",
        f"    backend  {wfree.get('backend') or 'none'} ({wfree.get('method', 'sock_wfree timing not measured')})",
        f"    topology {result.get('topology', '?')}",
        f"    sender   {result.get('pps', 0):.0f} pps, {result.get('attempts')} attempts, {result.get('eagain')} EAGAIN, "
        f"sndbuf {result.get('sndbuf_effective')} effective",
        "    sysctls  " + (", ".join(f"{k}={v}" for k, v in sorted(sysctls.items())) or "-"),
    ]
    return "\n".join(lines)

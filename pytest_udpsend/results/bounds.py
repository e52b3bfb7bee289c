"""Assertion markers: bounds on a SendResult, checked after the test body ran.

A failing bound fails the test with a table: metric, measured, bound, and the
context that makes the number meaningful (kernel, backend, topology, sysctls).

Where the truth differs by kernel, a bound carries ``kernel=``: a version
specifier (``"<6.5"``, ``">=6.5,<6.12"``, PEP 440 syntax via ``packaging``)
matched against the numeric prefix of the release the samples were measured on
(``6.1.0-56-amd64`` -> 6.1.0).  Markers of one kind stack, each for its kernels;
one whose kernel does not match is not checked, and the table says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure.params import number
from pytest_udpsend.results.metrics import lookup, most

BACKENDS = ("any", "bpf", "timestamp")
_RELEASE_PREFIX = re.compile(r"^\d+(?:\.\d+){0,2}")


def kernel_version(release: str) -> Version:
    """The numeric prefix of a kernel release: ``6.12.95+deb12-amd64`` -> 6.12.95."""
    match = _RELEASE_PREFIX.match(release)
    return Version(match.group(0) if match else "0")


def kernel_spec(value: Any) -> str | None:
    """Validate a ``kernel=`` argument (None: every kernel); ConfigError says what is accepted."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or not str(SpecifierSet(value)):
            raise InvalidSpecifier(str(value))
    except InvalidSpecifier:
        raise ConfigError(
            f"kernel={value!r}: not a version specifier; use comparisons such as '<6.5' or '>=6.5,<6.12'"
        ) from None
    return value


def kernel_matches(spec: str | None, release: str) -> bool:
    return spec is None or SpecifierSet(spec).contains(kernel_version(release), prereleases=True)


@dataclass(frozen=True)
class Bound:
    marker: str
    metric: str  # dotted path into the result, e.g. "wfree.p99_us"
    low: float | None = None
    high: float | None = None
    kernel: str | None = None  # version specifier; None: every kernel

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"{self.low:g} .. {self.high:g}"
        else:
            text = f"<= {self.high:g}" if self.high is not None else f">= {self.low:g}"
        return text + (f" (kernel {self.kernel})" if self.kernel else "")

    def holds(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Bounds:
    bounds: tuple[Bound, ...] = ()
    backends: tuple[tuple[str, str | None], ...] = ()  # (backend wfree_latency demands, its kernel spec)

    def wants_wfree(self, release: str) -> bool:
        """Does a wfree_latency marker apply on this kernel (so sock_wfree timing must be measured)?"""
        return any(b.marker == "wfree_latency" and kernel_matches(b.kernel, release) for b in self.bounds)

    def backend_for(self, release: str) -> str:
        """The strictest backend a wfree_latency marker for this kernel demands ("any" if none)."""
        wanted = {backend for backend, spec in self.backends if kernel_matches(spec, release)}
        return next((b for b in ("bpf", "timestamp") if b in wanted), "any")

    def split(self, release: str) -> tuple[list[Bound], list[Bound]]:
        """(bounds checked on this kernel, bounds meant for other kernels)."""
        applied = [b for b in self.bounds if kernel_matches(b.kernel, release)]
        return applied, [b for b in self.bounds if b not in applied]


def _num(key: str, value: Any, metric: str) -> float | None:
    """A bound's value: a number from 0 to the largest the metric can take (1 for a rate), never NaN."""
    return None if value is None else float(number(key, value, 0.0, most(metric)))


def min_max(marker: str, metric: str, max: Any = None, min: Any = None, kernel: Any = None) -> Bound:  # noqa: A002
    low, high = _num("min", min, metric), _num("max", max, metric)
    if low is None and high is None:
        raise ConfigError("give max= and/or min=")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"min={low:g} is above max={high:g}")
    return Bound(marker, metric, low, high, kernel_spec(kernel))


def wfree_bounds(
    p50_us: Any = None, p99_us: Any = None, max_us: Any = None, backend: Any = "any", kernel: Any = None
) -> tuple[list[Bound], tuple[str, str | None]]:
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: accepted: {', '.join(BACKENDS)}")
    spec = kernel_spec(kernel)
    bounds = [
        Bound("wfree_latency", f"wfree.{key}", None, _num(key, val, f"wfree.{key}"), spec)
        for key, val in (("p50_us", p50_us), ("p99_us", p99_us), ("max_us", max_us))
        if val is not None
    ]
    if not bounds and backend == "any":
        raise ConfigError("no bound given, so nothing would be checked: give p50_us=, p99_us= and/or max_us= "
                          "(microseconds), or backend='bpf' to demand the exact measurement "
                          "(the wfree_probe fixture measures without a bound)")  # fmt: skip
    # A bound-less wfree_latency that names a backend still demands a measurement with samples.
    bounds.append(Bound("wfree_latency", "wfree.count", 1, None, spec))
    return bounds, (str(backend), spec)


def check(bounds: Sequence[Bound], result: Mapping[str, Any]) -> list[tuple[Bound, Any, bool]]:
    rows = []
    for bound in bounds:
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
    for metric in ("eagain_rate", "time_squeeze", "pps", "busy_wait"):
        merged[metric] = median_at(metric)
    merged["wfree"] = dict(samples[-1].get("wfree") or {})
    for key in ("p50_us", "p90_us", "p99_us", "max_us", "count"):
        merged["wfree"][key] = median_at(f"wfree.{key}")
    return merged


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "not measured" if value is None else str(value)


def failure_table(
    rows: list[tuple[Bound, Any, bool]], result: Mapping[str, Any], label: str = "", skipped: Sequence[Bound] = ()
) -> str:
    """The text a failing assertion marker shows: the bounds that applied on this kernel, then the others."""
    width = max(len(r[0].metric) for r in rows) + 2
    bwidth = max([len(r[0].describe()) for r in rows] + [16]) + 2
    lines = [f"udpsend bounds violated{label}:", f"  {'metric':<{width}}{'measured':>14}  {'bound':<{bwidth}}ok"]
    for bound, value, ok in rows:
        lines.append(f"  {bound.metric:<{width}}{_fmt(value):>14}  {bound.describe():<{bwidth}}{'yes' if ok else 'NO'}")
    for bound in skipped:
        lines.append(f"  not checked on {result.get('kernel')}: {bound.metric} {bound.describe()}")
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
    if any(bound.metric == "busy_wait" for bound, _, _ in rows):  # what the figure was read from, or why it is none
        busy = result.get("busy_wait_detail") or {}
        lines.append(f"    busy-wait send buffer full {busy.get('full_s', 0)} s: sender CPU {busy.get('cpu_s', 0)} s, asleep "
                     f"{busy.get('asleep_s', 0)} s ({busy.get('unavailable') or busy.get('method') or 'not measured'})")  # fmt: skip
    findings = result.get("diagnosis") or []  # measure/diagnosis.py: why, and what lifts it
    lines += ["  diagnosis:"] + [f"    - {d['finding']}\n      ({d['evidence']})" for d in findings] if findings else []
    return "\n".join(lines)

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

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure.params import number
from pytest_udpsend.results.metrics import lookup, most

BACKENDS = ("any", "bpf", "tracepoint", "timestamp")
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
    per: str | None = None  # "burst": the bound holds for every burst of a replay (the worst one decides)

    @property
    def name(self) -> str:
        return self.metric + (" (worst burst)" if self.per == "burst" else "")

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"{self.low:g} .. {self.high:g}"
        else:
            text = f"<= {self.high:g}" if self.high is not None else f">= {self.low:g}"
        return (
            text
            + (" in every burst" if self.per == "burst" else "")
            + (f" (kernel {self.kernel})" if self.kernel else "")
        )

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
        return next((b for b in ("bpf", "tracepoint", "timestamp") if b in wanted), "any")

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


def resume_bound(max: Any = None, min: Any = None, kernel: Any = None) -> Bound:  # noqa: A002
    """resume_ms: the worst release's recovery time (ms) of a cpu_pressure schedule (measure/recovery.py)."""
    return min_max("resume_ms", "recovery.resume_ms", max, min, kernel)


PER = (None, "run", "burst")


def eagain_bound(max: Any = None, min: Any = None, kernel: Any = None, per: Any = None) -> Bound:  # noqa: A002
    """eagain_rate: of the whole run, or with ``per="burst"`` of every burst of a replay (the worst decides)."""
    if per not in PER:
        raise ConfigError(
            f"per={per!r}: accepted: 'burst' (every burst of a replay) or 'run' (the whole run, the default)"
        )
    bound = min_max("eagain_rate", "eagain_rate", max, min, kernel)
    return Bound(bound.marker, bound.metric, bound.low, bound.high, bound.kernel, "burst" if per == "burst" else None)


def worst_burst(bound: Bound, result: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]] | None:
    """(index, burst) of a replay's burst that decides a per-burst bound: the highest value against a max
    (the lowest against a min only), the one outside the range for both; bursts without a send attempt
    have no rate and are left out.  None: the result has no bursts (not a replay)."""
    found = [
        (i, b)
        for i, b in enumerate(lookup(result, "replay.bursts") or [])
        if isinstance(b, Mapping) and b.get("attempts") and isinstance(b.get(bound.metric), (int, float))
    ]
    if not found:
        return None
    high = max(found, key=lambda ib: float(ib[1][bound.metric]))
    low = min(found, key=lambda ib: float(ib[1][bound.metric]))
    if bound.high is None:
        return low
    return high if bound.low is None or not bound.holds(float(high[1][bound.metric])) else low


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
        raise ConfigError(
            "no bound given, so nothing would be checked: give p50_us=, p99_us= and/or max_us= "
            "(microseconds), or backend='bpf' (or 'tracepoint') to demand that exact measurement "
            "(the wfree_probe fixture measures without a bound)"
        )
    # A bound-less wfree_latency that names a backend still demands a measurement with samples.
    bounds.append(Bound("wfree_latency", "wfree.count", 1, None, spec))
    return bounds, (str(backend), spec)


def check(bounds: Sequence[Bound], result: Mapping[str, Any]) -> list[tuple[Bound, Any, bool]]:
    rows = []
    for bound in bounds:
        if bound.per == "burst":
            worst = worst_burst(bound, result)
            value = None if worst is None else worst[1].get(bound.metric)
        else:
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
    recoveries = sorted((s.get("recovery") or {} for s in samples), key=_resume_key)  # a release never back ranks worst
    merged["recovery"] = recoveries[len(recoveries) // 2]  # the median sample's, with its releases
    replays = sorted((s for s in samples if (s.get("replay") or {}).get("bursts")), key=_worst_rate)
    if replays:  # per-burst bounds: the bursts of the replay whose worst burst is the median one
        merged["replay"] = replays[len(replays) // 2]["replay"]
    return merged


def _resume_key(recovery: Mapping[str, Any]) -> float:
    value = recovery.get("resume_ms")
    return float(value) if isinstance(value, (int, float)) else math.inf


def _worst_rate(sample: Mapping[str, Any]) -> float:
    return max(float(b.get("eagain_rate") or 0.0) for b in sample["replay"]["bursts"])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "not measured" if value is None else str(value)


def failure_table(
    rows: list[tuple[Bound, Any, bool]], result: Mapping[str, Any], label: str = "", skipped: Sequence[Bound] = ()
) -> str:
    """The text a failing assertion marker shows: the bounds that applied on this kernel, then the others."""
    if any(b.per == "burst" and worst_burst(b, result) is None for b, _, _ in rows):
        return (
            f"@pytest.mark.{next(b.marker for b, _, _ in rows if b.per == 'burst')}(per='burst') bounds each burst "
            "of a replay, but this test's result has no bursts (it was not a replay): send with replay= (a capture "
            "or a built-in shape such as replay='shape:telemetry') or drop per='burst'"
        )
    width = max(len(r[0].name) for r in rows) + 2
    bwidth = max([len(r[0].describe()) for r in rows] + [16]) + 2
    lines = [f"udpsend bounds violated{label}:", f"  {'metric':<{width}}{'measured':>14}  {'bound':<{bwidth}}ok"]
    for bound, value, ok in rows:
        lines.append(f"  {bound.name:<{width}}{_fmt(value):>14}  {bound.describe():<{bwidth}}{'yes' if ok else 'NO'}")
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
    for bound, _, _ in rows:  # a per-burst bound: which burst decided, where it sits in the capture
        if bound.per == "burst" and (worst := worst_burst(bound, result)) is not None:
            i, b = worst
            lines.append(
                f"    burst    #{b.get('burst', i)}"
                + (f" of loop {b['loop']}" if b.get("loop") else "")
                + f" at {b.get('start_s', 0):.3f} s: {b.get('datagrams')} datagrams, {b.get('eagain')} EAGAIN "
                f"of {b.get('attempts')} attempts, SIOCOUTQ peak {b.get('outq_max')} B "
                f"(worst of {len((result.get('replay') or {}).get('bursts') or [])} bursts)"
            )
    if any(bound.marker == "resume_ms" for bound, _, _ in rows):  # each release, the rates it was read against
        rec = result.get("recovery") or {}
        back = ", ".join(
            f"{r['at_ms']:.0f} ms: {'never' if r['resume_ms'] is None else format(r['resume_ms'], 'g') + ' ms'}"
            + (f" (sender idle {r['sender_idle_ms']:g} ms, left out)" if r.get("sender_idle_ms") else "")
            for r in rec.get("releases") or []
        )
        lines.append(
            f"    recovery to {rec.get('resume_fraction', 0.9):.0%} of {rec.get('reference_pps')} pps "
            f"({rec.get('reference', 'not measured')}), {rec.get('window_ms', 10)} ms windows, pressured "
            f"{rec.get('pressured_pps')} pps; per release {back or '-'}"
            + "".join(f"; {rec[k]}" for k in ("unavailable", "note") if rec.get(k))
        )
    if any(bound.metric == "busy_wait" for bound, _, _ in rows):  # what the figure was read from, or why it is none
        busy = result.get("busy_wait_detail") or {}
        lines.append(
            f"    busy-wait send buffer full {busy.get('full_s', 0)} s: sender CPU {busy.get('cpu_s', 0)} s, asleep "
            f"{busy.get('asleep_s', 0)} s ({busy.get('unavailable') or busy.get('method') or 'not measured'})"
        )
    findings = result.get("diagnosis") or []  # measure/diagnosis.py: why, and what lifts it
    lines += ["  diagnosis:"] + [f"    - {d['finding']}\n      ({d['evidence']})" for d in findings] if findings else []
    return "\n".join(lines)

"""Recovery after a pressure release: how long the send rate took to come back (``SendResult.recovery``).

The ``cpu_pressure`` schedule (``on_s``, ``off_s``; ``measure/load.py``) stops the hogs at each
release.  The send rate is read from the run's 10 ms series (the C loop's attempts - EAGAIN per
bucket; a program's UdpOutDatagrams sampled every ``SentSampler.PERIOD_S``), in windows of
``window_ms`` (a whole number of buckets):

* reference (the unpressured rate): the median rate of the windows that lie wholly in the
  second half of an off period, pooled over the run.  Read there, not at the release, so it is
  the rate once the sender has settled without pressure, measured in the same run on the same
  path; ``off_s`` is at least four windows long, so every off period gives one or more.
* ``resume_ms`` of a release: from the release to the start of the first window (windows laid
  from the first whole bucket after the release) whose rate reaches ``resume_fraction`` x the
  reference, within that off period; None if none does.  Its resolution is one window: 0 means
  the first whole window after the release was already back.  A release whose off period the end
  of the run cut short, and that had not come back by then, is left out (undecided; a note says so).
* the result's ``resume_ms`` is the worst release's (None if one never came back), the figure the
  ``resume_ms`` marker bounds: a bound on recovery is a promise about every release.
  ``resume_ms_median`` sits beside it.
* a release around which the C send loop made no call for a whole bucket is left out of both
  (``sender_idle_ms``, a note): the host stopped the sender, so it says nothing about the kernel.
  Seen once in 10 runs of the tests on this shared 2-vCPU VM: 90 ms without a call, then the
  schedule's own toggle 66 ms late.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NotRequired, Protocol, TypedDict

from pytest_udpsend.host.netns import Namespace
from pytest_udpsend.measure.counters import SnmpReader
from pytest_udpsend.measure.load import Cycle
from pytest_udpsend.measure.shapes import Series

NO_SCHEDULE = "no pressure schedule: give cpu_pressure(..., on_s=..., off_s=...) to cycle the hogs during the run"
REFERENCE = "median send rate of the windows wholly in the second half of the off periods"
# A busy send loop that makes no call for a whole bucket was not running: the host (steal, another tenant)
# stopped it, not the kernel path under test.  A release with such a bucket in its off period, or this long
# before it, is left out of resume_ms (it stays listed, with sender_idle_ms).
IDLE_LOOKBACK_MS = 100.0


class Release(TypedDict):
    at_ms: float  # the release (hogs stopped), from the start of the series
    off_ms: float  # how long the off period lasted within the run
    resume_ms: float | None  # release -> start of the first window back at resume_fraction x reference
    pps: float | None  # that window's rate
    sender_idle_ms: NotRequired[float]  # the send loop made no call at all for this long around the release


class Recovery(TypedDict, total=False):
    resume_ms: float | None  # the worst release's; None if one never came back (or nothing measured)
    resume_ms_median: float | None
    unavailable: str  # why there are no figures
    resume_fraction: float
    window_ms: int
    on_s: float
    off_s: float
    reference: str  # how the unpressured rate was read
    reference_pps: float | None
    pressured_pps: float | None  # median window rate in the on periods, for the depth of the dip
    releases: list[Release]
    rate_from: str  # which counts gave the send rate
    late_max_ms: float  # the latest a stop or continue came after its deadline
    realtime: bool  # the schedule's thread ran at SCHED_FIFO
    note: str


def no_schedule(reason: str = NO_SCHEDULE) -> Recovery:
    return {"resume_ms": None, "unavailable": reason}


def idle_buckets(series: Series) -> list[bool] | None:
    """Per bucket, whether the C send loop made no call at all; None for a program's series (no attempts)
    and for a loop paced so slowly that a bucket without a call is its schedule, not a stall."""
    attempts = series.get("attempts") if "sent" not in series else None
    if not attempts or statistics.median(attempts) < 10:
        return None
    return [a == 0 for a in attempts]


def sent_per_bucket(series: Series) -> list[float]:
    """Datagrams sent per bucket: the series' ``sent``, else attempts - EAGAIN (the C loop's)."""
    if "sent" in series:
        return [float(v) for v in series["sent"]]
    return [float(a - e) for a, e in zip(series.get("attempts", []), series.get("eagain", []))]


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _windows(rates: Sequence[float], first: int, stop: int, k: int) -> list[tuple[int, float]]:
    """(first bucket, sum) of windows of ``k`` buckets laid from bucket ``first``, wholly before bucket ``stop``."""
    return [(b, sum(rates[b : b + k])) for b in range(first, stop - k + 1, k)]


def resume_times(
    sent: Sequence[float],
    bucket_ms: float,
    releases_ms: Sequence[float],
    presses_ms: Sequence[float],
    fraction: float,
    window_ms: int,
    idle: Sequence[bool] | None = None,
) -> Recovery:
    """The recovery of each release, from whole buckets of ``sent`` (the last, partial one is the caller's to drop).

    ``presses_ms[i]`` ends the off period that ``releases_ms[i]`` began (missing: the run ended first);
    ``idle[b]``: the send loop made no call in bucket b (see IDLE_LOOKBACK_MS)."""
    k = max(1, round(window_ms / bucket_ms))
    per_s = 1000.0 / (k * bucket_ms)
    end_ms = len(sent) * bucket_ms
    ends = [presses_ms[i] if i < len(presses_ms) else math.inf for i in range(len(releases_ms))]
    offs = [(r, min(p, end_ms)) for r, p in zip(releases_ms, ends) if 0 <= r < end_ms]
    cut = [p > end_ms for r, p in zip(releases_ms, ends) if 0 <= r < end_ms]  # the run ended within the off period
    ref_windows = [
        s for r, p in offs for _, s in _windows(sent, math.ceil((r + p) / 2 / bucket_ms), math.floor(p / bucket_ms), k)
    ]
    reference = _median(ref_windows)
    ons = [(a, b) for a, b in zip([0.0, *(p for _, p in offs)], [r for r, _ in offs] + [end_ms]) if b > a]
    pressured = _median(
        [s for a, b in ons for _, s in _windows(sent, math.ceil(a / bucket_ms), math.floor(b / bucket_ms), k)]
    )
    out: Recovery = {
        "resume_fraction": fraction,
        "window_ms": int(k * bucket_ms),
        "reference": REFERENCE,
        "reference_pps": None if reference is None else round(reference * per_s, 1),
        "pressured_pps": None if pressured is None else round(pressured * per_s, 1),
        "releases": [],
    }
    if reference is None or reference <= 0:
        out.update(
            {
                "resume_ms": None,
                "resume_ms_median": None,
                "unavailable": "no send rate to recover to: no whole window in the second half of an off period, "
                "or nothing sent there",
            }
        )
        return out
    skipped = 0
    for (r, p), ended in zip(offs, cut):
        windows = _windows(sent, math.ceil(r / bucket_ms), math.floor(p / bucket_ms), k)
        back = next(((b, s) for b, s in windows if s >= fraction * reference), None)
        if back is None and ended:  # the run ended during this off period, before the rate came back: undecided
            skipped += 1
            continue
        release: Release = {
            "at_ms": round(r, 2),
            "off_ms": round(p - r, 2),
            "resume_ms": None if back is None else round(back[0] * bucket_ms - r, 2),
            "pps": None if back is None else round(back[1] * per_s, 1),
        }
        if idle is not None:
            span = idle[max(0, math.floor((r - IDLE_LOOKBACK_MS) / bucket_ms)) : math.ceil(p / bucket_ms)]
            release["sender_idle_ms"] = sum(span) * bucket_ms
        out["releases"].append(release)
    stalled = sum(1 for x in out["releases"] if x.get("sender_idle_ms"))
    times = [x["resume_ms"] for x in out["releases"] if not x.get("sender_idle_ms")]
    ordered = sorted(times, key=lambda t: math.inf if t is None else t)
    out["resume_ms"] = ordered[-1] if ordered else None
    out["resume_ms_median"] = ordered[len(ordered) // 2] if ordered else None
    notes = []
    if stalled:
        notes.append(
            f"{stalled} of {len(out['releases'])} releases left out of resume_ms: the send loop made no call at all "
            f"for sender_idle_ms in their off period or the {IDLE_LOOKBACK_MS:.0f} ms before (the host did not run it)"
        )
    if not ordered:
        out["unavailable"] = "no release was decided before the run ended: run for at least on_s + off_s" + (
            ", on a host that runs the sender" if stalled else ""
        )
    elif None in times:
        notes.append(
            f"{times.count(None)} of {len(times)} releases did not come back to {fraction:.0%} of the reference "
            "within their off period"
        )
    if any(x["resume_ms"] is not None and x["resume_ms"] > x["off_ms"] / 2 for x in out["releases"]):
        notes.append(
            "a resume past half its off period: the reference may include windows still recovering; lengthen off_s"
        )
    if skipped:
        notes.append(
            "the last release left out: the run ended before its off period did, and before the rate came back"
        )
    if notes:
        out["note"] = "; ".join(notes)
    return out


def measure(cycle: Cycle, series: Series, t0_ns: int, elapsed_s: float, rate_from: str) -> Recovery:
    """SendResult.recovery of one run: the series starts at CLOCK_MONOTONIC ``t0_ns`` and lasted ``elapsed_s``."""
    spec = cycle.spec
    if spec.on_s is None or spec.off_s is None:
        return no_schedule()
    bucket_ms = float(series.get("bucket_ms") or 10)
    whole = int(elapsed_s * 1000 // bucket_ms)  # whole buckets only
    sent = sent_per_bucket(series)[:whole]
    idle = idle_buckets(series)
    out = resume_times(
        sent,
        bucket_ms,
        [(t - t0_ns) / 1e6 for t in cycle.releases],
        [(t - t0_ns) / 1e6 for t in cycle.presses],
        spec.resume_fraction,
        spec.window_ms,
        None if idle is None else idle[:whole],
    )
    out.update(
        {
            "on_s": spec.on_s,
            "off_s": spec.off_s,
            "rate_from": rate_from,
            "late_max_ms": round(cycle.late_max_ns / 1e6, 3),
            "realtime": cycle.realtime,
        }
    )
    return out


class SentSampler:
    """A program's sent datagrams over time, from outside: ``count()`` (the netns's UdpOutDatagrams) every
    ``PERIOD_S`` by a thread of ours; ``series()`` spreads each increment over its interval's buckets."""

    PERIOD_S = 0.002
    RATE_FROM = "UdpOutDatagrams of the sender netns, sampled every 2 ms, spread over 10 ms buckets"

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.samples: list[tuple[int, int]] = []  # (monotonic ns, count)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udpsend-sent-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic_ns(), self._count()))
            if self._done.wait(self.PERIOD_S):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def series(self, t0_ns: int, bucket_ms: int) -> list[float]:
        return spread(self.samples, t0_ns, bucket_ms)


def spread(samples: Sequence[tuple[int, int]], t0_ns: int, bucket_ms: int) -> list[float]:
    """Per-bucket increments of a sampled counter, each split over the buckets its interval covers."""
    width = bucket_ms * 1_000_000
    out: list[float] = []
    for (ta, ca), (tb, cb) in zip(samples, samples[1:]):
        a, b = ta - t0_ns, tb - t0_ns
        if b <= 0 or tb <= ta:
            continue
        a = max(a, 0)
        while len(out) <= (b - 1) // width:
            out.append(0.0)
        for i in range(a // width, (b - 1) // width + 1):
            overlap = min(b, (i + 1) * width) - max(a, i * width)
            out[i] += (cb - ca) * overlap / (tb - ta)
    return [round(v, 2) for v in out]


class _Result(Protocol):
    """The parts of a SendResult that recovery reads and writes (result.py imports this module)."""

    series: Series
    duration_s: float
    recovery: Recovery


class ProgramWatch:
    """A program's run under a schedule: the cycle and its sent datagrams sampled from outside."""

    def __init__(self, cycle: Cycle, reader: SnmpReader) -> None:
        self.cycle = cycle
        self.sampler = SentSampler(lambda: _out_datagrams(reader.read()))

    def start(self) -> None:
        self.sampler.start()
        self.cycle.start()

    def stop(self) -> None:
        self.cycle.stop()
        self.sampler.stop()

    def finish(self, result: _Result, t0_s: float) -> None:
        """Stop, and give ``result`` its sent series (from ``t0_s``, the series' start) and its recovery."""
        self.stop()
        t0_ns = int(t0_s * 1e9) if t0_s else self.cycle.start_ns
        result.series["sent"] = self.sampler.series(t0_ns, int(result.series.get("bucket_ms") or 10))
        # read up to the sample before the program's last send (it stopped somewhere after it): the time it took
        # to finish is not a release that failed to come back
        grew = [t for (_, c), (t, before) in zip(self.sampler.samples[1:], self.sampler.samples) if c > before]
        until_s = min(result.duration_s, (grew[-1] - t0_ns) / 1e9) if grew else result.duration_s
        result.recovery = measure(self.cycle, result.series, t0_ns, until_s, SentSampler.RATE_FROM)


def _out_datagrams(snmp: Mapping[str, int]) -> int:
    return snmp.get("UdpOutDatagrams", 0) + snmp.get("Udp6OutDatagrams", 0)


@contextlib.contextmanager
def watching(cycle: Cycle | None, ns: Namespace) -> Iterator[ProgramWatch | None]:
    """A ProgramWatch for ``cycle`` (None without a schedule), for the caller to start with the program; stopped
    and closed on exit."""
    if cycle is None:
        yield None
        return
    reader = SnmpReader(ns)
    watch = ProgramWatch(cycle, reader)
    try:
        yield watch
    finally:
        watch.stop()
        reader.close()

"""A self-contained HTML report: inline SVG plots, no scripts, no fetches.

Per test: EAGAIN rate over the run, SIOCOUTQ occupancy over the run, for a
replay EAGAIN per burst over the capture's timeline, the sock_wfree latency
histogram per context, per-CPU time_squeeze; and, with a
baseline, baseline-versus-new samples per metric.

Series are named by what differs between a test's runs (``run_labels``), a plot
whose series are all zero becomes one line of text, and axes carry ticks at
1, 2, 2.5 or 5 x 10^k with their unit (``nice_ticks``, ``Axis``).

This module builds the page's data; templates/report.html lays it out, escaping
every string (templating.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.results import compare, metrics, paired, store, sweep_report, templating, upgrade_report
from pytest_udpsend.results.templating import Figure, Shape, shape

W, H, PAD = 440, 180, 52
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
MAX_SERIES = len(COLORS)  # more lines than colours cannot be told apart: the last runs are drawn
LABEL_CHARS = 40  # a legend row holds twice this; a longer name is cut, its whole text is its tooltip
LEGEND_ROW = 13

NICE = (1.0, 2.0, 2.5, 5.0)  # tick steps: these x 10^k


def nice_ticks(top: float, intervals: int = 5, integer: bool = False) -> list[float]:
    """Ticks from 0 up to the first one at or above ``top``, at most ``intervals`` steps of 1, 2, 2.5
    or 5 x 10^k: 0.735 gives 0, 0.2, ..., 0.8 (a reader reads 0.4, not 0.367).  ``integer``: steps
    of whole numbers, for counts such as rounds.  A ``top`` of 0 (or not a number) gives [0, 1]."""
    if not math.isfinite(top) or top <= 0:
        return [0.0, 1.0]
    raw = top / intervals
    exp = math.floor(math.log10(raw))
    steps = [m * 10.0**e for e in (exp, exp + 1) for m in NICE]
    if integer:
        steps = [s for s in steps if s >= 1 and s == int(s)] or [1.0]
    step = next((s for s in steps if s >= raw * (1 - 1e-9)), steps[-1])
    count = max(1, math.ceil(top / step - 1e-9))
    return [round(i * step, 12) for i in range(count + 1)]


# unit -> (threshold on the axis' top, scale, suffix), largest first: the top picks one for every tick
SCALES: dict[str, list[tuple[float, float, str]]] = {
    "%": [(0.0, 0.01, "%")],  # a fraction shown in per cent
    "B": [(1e9, 1e9, " GB"), (1e6, 1e6, " MB"), (1e3, 1e3, " kB"), (0.0, 1.0, " B")],
    "s": [(1.0, 1.0, " s"), (1e-3, 1e-3, " ms"), (0.0, 1e-6, " us")],
    "us": [(1e6, 1e6, " s"), (1e3, 1e3, " ms"), (0.0, 1.0, " us")],
    "": [(1e6, 1e6, "M"), (1e4, 1e3, "k"), (0.0, 1.0, "")],
}


@dataclass(frozen=True)
class Axis:
    """An axis' ticks (from 0; the last is its top) and the unit its tick labels carry (a key of SCALES)."""

    ticks: list[float]
    unit: str = ""

    @property
    def top(self) -> float:
        return self.ticks[-1]

    def labels(self) -> list[str]:
        """One label per tick, all in the scale the top picks: "0", "250 ms", "500 ms"; "0", "20%", "40%"."""
        _, scale, suffix = next(s for s in SCALES.get(self.unit, SCALES[""]) if self.top >= s[0])
        step = (self.ticks[1] - self.ticks[0]) / scale if len(self.ticks) > 1 else 1.0
        digits = len(f"{step:.9f}".rstrip("0").partition(".")[2])  # as many decimals as the step has
        return ["0" if t == 0 else f"{t / scale:.{digits}f}{suffix}" for t in self.ticks]


def axis(top: float, unit: str = "", integer: bool = False) -> Axis:
    return Axis(nice_ticks(top, integer=integer), unit)


def _frame(
    title: str,
    body: Sequence[Shape],
    xlabel: str,
    ylabel: str,
    y: Axis,
    x: Axis | None = None,
    legend: Sequence[tuple[str, str]] = (),
) -> Figure:
    """Axes with their ticks and labels around a plot's shapes, and a legend of (name, colour) rows under the
    plot, where it hides no data (data: see templating.Figure)."""
    frame = [shape("text", title, x=W / 2, y=12, text_anchor="middle", font_size=11, font_weight="bold")]
    for tick, text in zip(y.ticks, y.labels()):
        _, ty = _xy(0, tick, 1, y.top)
        frame += [
            shape("line", x1=PAD, x2=W - 8, y1=f"{ty:.1f}", y2=f"{ty:.1f}", stroke="#eee"),
            shape("text", text, x=PAD - 4, y=f"{ty + 3:.1f}", text_anchor="end", font_size=9),
        ]
    for tick, text in zip(x.ticks, x.labels()) if x else ():
        tx, _ = _xy(tick, 0, x.top if x else 1, 1)
        anchor = "end" if tx > W - 30 else "middle"  # the last label ends at the frame, not past it
        frame += [
            shape("line", x1=f"{tx:.1f}", x2=f"{tx:.1f}", y1=H - PAD, y2=H - PAD + 3, stroke="#333"),
            shape("text", text, x=f"{tx:.1f}", y=H - PAD + 12, text_anchor=anchor, font_size=9),
        ]
    frame += [
        shape("line", x1=PAD, y1=H - PAD, x2=W - 8, y2=H - PAD, stroke="#333"),
        shape("line", x1=PAD, y1=18, x2=PAD, y2=H - PAD, stroke="#333"),
        shape("text", xlabel, x=(W + PAD) / 2, y=H - 8, text_anchor="middle", font_size=10),
        shape("text", ylabel, x=10, y=H / 2, transform=f"rotate(-90 10 {H / 2})", text_anchor="middle", font_size=10),
    ]
    for k, (name, color) in enumerate(legend):
        ly = H + 4 + LEGEND_ROW * k
        short = name if len(name) <= LABEL_CHARS * 2 else name[: LABEL_CHARS * 2 - 1] + "\u2026"
        frame += [
            shape("line", x1=PAD, x2=PAD + 16, y1=ly - 3, y2=ly - 3, stroke=color, stroke_width=3),
            shape("text", short, title=name if short != name else "", x=PAD + 22, y=ly, font_size=10, fill=color),
        ]
    return Figure(W, H + (LEGEND_ROW * len(legend) + 6 if legend else 0), [*frame, *body], title=title)


def _fmtnum(v: float | None) -> str:
    if v is None:
        return ""
    if v and (abs(v) >= 1e5 or abs(v) < 1e-2):
        return f"{v:.1e}"
    return f"{v:.3g}"


def _xy(i: float, v: float, xmax: float, ymax: float) -> tuple[float, float]:
    x = PAD + (W - 8 - PAD) * (i / xmax if xmax else 0)
    y = H - PAD - (H - PAD - 18) * (v / ymax if ymax else 0)
    return x, y


def line_plot(
    title: str,
    series: Sequence[tuple[str, Sequence[float]]],
    step: float,
    xlabel: str,
    ylabel: str,
    xunit: str = "",
    yunit: str = "",
    start: float = 0.0,
) -> Figure | None:
    """One line per named series, point i at ``start + i * step`` on x; None without values."""
    values = [v for _, s in series for v in s]
    if not values:
        return None
    whole = float(step).is_integer() and float(start).is_integer()  # rounds: ticks at whole numbers
    xs = axis(start + (max(len(s) for _, s in series) - 1) * step or step, xunit, integer=whole)
    ys = axis(max(values), yunit)
    body: list[Shape] = []
    legend: list[tuple[str, str]] = []
    for k, (name, s) in enumerate(series):
        pts = " ".join("%.1f,%.1f" % _xy(start + i * step, v, xs.top, ys.top) for i, v in enumerate(s))  # numbers only
        color = COLORS[k % len(COLORS)]
        body.append(shape("polyline", fill="none", stroke=color, stroke_width=1.2, points=pts))
        legend.append((name, color))
    if len(series) == 1 and series[0][0] == "run 1":
        legend = []  # one plain run: a legend would name nothing
    return _frame(title, body, xlabel, ylabel, ys, xs, legend)


def bar_plot(
    title: str,
    labels: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float]]],
    xlabel: str,
    ylabel: str,
    yunit: str = "",
) -> Figure | None:
    values = [v for _, g in groups for v in g]
    if not values:
        return None
    ys = axis(max(values), yunit, integer=all(float(v).is_integer() for v in values))
    slot = (W - 8 - PAD) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(groups), 1)
    body: list[Shape] = []
    for k, (name, g) in enumerate(groups):
        for i, v in enumerate(g):
            x = PAD + i * slot + slot * 0.1 + k * bar
            _, y = _xy(0, v, 1, ys.top)
            body.append(
                shape(
                    "rect",
                    title=f"{name} {labels[i]}: {v:g}",
                    x=f"{x:.1f}",
                    y=f"{y:.1f}",
                    width=f"{max(bar - 1, 1):.1f}",
                    height=f"{H - PAD - y:.1f}",
                    fill=COLORS[k % len(COLORS)],
                )
            )
    for i, label in enumerate(labels):
        if len(labels) <= 10 or i % max(1, -(-len(labels) // 8)) == 0:
            body.append(
                shape(
                    "text", label, x=f"{PAD + (i + 0.5) * slot:.1f}", y=H - PAD + 11, text_anchor="middle", font_size=8
                )
            )
    legend = [(n, COLORS[k % len(COLORS)]) for k, (n, _) in enumerate(groups)] if len(groups) > 1 else []
    return _frame(title, body, xlabel, ylabel, ys, legend=legend)


def burst_plot(title: str, replay: Mapping[str, Any]) -> Figure | None:
    """A replay's EAGAIN over the capture's timeline: per burst (loops summed) a grey bar of its send attempts
    and a red one of those that got EAGAIN, at its start time and as wide as its span; None without bursts."""
    by_burst: dict[int, dict[str, Any]] = {}
    for b in replay.get("bursts") or []:
        row = by_burst.setdefault(
            int(b.get("burst", len(by_burst))),
            {
                "start_s": float(b.get("start_s") or 0.0),
                "span_s": float(b.get("span_s") or 0.0),
                "datagrams": int(b.get("datagrams") or 0),
                "attempts": 0,
                "eagain": 0,
                "outq_max": 0,
            },
        )
        row["attempts"] += int(b.get("attempts") or 0)
        row["eagain"] += int(b.get("eagain") or 0)
        row["outq_max"] = max(row["outq_max"], int(b.get("outq_max") or 0))
    if not by_burst:
        return None
    xs = axis(max(r["start_s"] + r["span_s"] for r in by_burst.values()) or 1e-3)  # seconds: the x label says so
    ys = axis(float(max(r["attempts"] for r in by_burst.values()) or 1), integer=True)
    body: list[Shape] = []
    for i, r in sorted(by_burst.items()):
        x0, _ = _xy(r["start_s"], 0, xs.top, ys.top)
        x1, _ = _xy(r["start_s"] + r["span_s"], 0, xs.top, ys.top)
        width = max(x1 - x0, 3.0)
        rate = r["eagain"] / r["attempts"] if r["attempts"] else 0.0
        tip = (
            f"burst #{i} at {r['start_s']:.3f} s: {r['datagrams']} datagrams, {r['attempts']} attempts, "
            f"{r['eagain']} EAGAIN ({rate:.1%}), SIOCOUTQ peak {r['outq_max']} B"
        )
        for k, value in ((0, r["attempts"]), (1, r["eagain"])):
            _, y = _xy(0, value, 1, ys.top)
            body.append(
                shape(
                    "rect",
                    title=tip,
                    x=f"{x0:.1f}",
                    y=f"{y:.1f}",
                    width=f"{width:.1f}",
                    height=f"{H - PAD - y:.1f}",
                    fill="#bbb" if k == 0 else COLORS[1],
                )
            )
    legend = [("attempts", "#bbb"), ("EAGAIN", COLORS[1])]
    return _frame(title, body, "burst start on the capture's clock (s)", "datagrams", ys, xs, legend)


Run = tuple[str, Mapping[str, Any]]  # a run's name (run_labels) and its sample


def replay_plots(runs: Sequence[Run], last: int = 4) -> list[Figure | None]:
    """One burst plot per replay among the test's last ``last`` runs (a test may replay several times)."""
    found = [
        (name, s["replay"]) for name, s in runs if isinstance(s.get("replay"), Mapping) and s["replay"].get("bursts")
    ]
    return [
        burst_plot(
            f"EAGAIN per burst, {name}: {r.get('source')} at speed {r.get('speed')}"
            + (f", {r.get('loop')} loops summed" if (r.get("loop") or 1) > 1 else ""),
            r,
        )
        for name, r in found[-last:]
    ]


def metric_unit(metric: str) -> str:
    """The unit of a metric's values, for its axis: rates are fractions, ``*_us`` microseconds."""
    return "%" if metric.endswith("_rate") else "us" if metric.endswith("_us") else ""


def strip_plot(title: str, base: Sequence[float], new: Sequence[float], verdict: str) -> Figure | None:
    values = [*base, *new]
    if not values:
        return None
    ys = axis(max(values), metric_unit(title))
    body: list[Shape] = []
    for k, (name, vs) in enumerate((("baseline", base), ("new", new))):
        cx = PAD + (W - 8 - PAD) * (0.3 + 0.4 * k)
        for j, v in enumerate(vs):
            _, y = _xy(0, v, 1, ys.top)
            body.append(
                shape(
                    "circle",
                    title=f"{v:g}",
                    cx=f"{cx + (j % 7 - 3) * 4:.1f}",
                    cy=f"{y:.1f}",
                    r=3,
                    fill=COLORS[k],
                    fill_opacity=0.7,
                )
            )
        body.append(shape("text", name, x=f"{cx:.1f}", y=H - PAD + 12, text_anchor="middle", font_size=10))
    return _frame(f"{title}: {verdict}", body, "", title, ys)


def _bytes(n: int) -> str:
    """A buffer size as the kernel's knobs are set: 9216 is "9 KB", 16777216 "16 MB"."""
    for shift, suffix in ((30, "GB"), (20, "MB"), (10, "KB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {suffix}"
    return f"{n} B"


def _sndbuf(sample: Mapping[str, Any]) -> str:
    """The send buffer a run had, and how it came to be: forced (SO_SNDBUFFORCE), or clamped to wmem_max
    (SO_SNDBUF doubles what it grants, so an effective size under twice the request was clamped)."""
    params = sample.get("params") or {}
    requested, effective = sample.get("sndbuf_requested") or params.get("sndbuf"), sample.get("sndbuf_effective")
    if not isinstance(effective, int) or not isinstance(requested, (int, type(None))):
        return f"sndbuf {effective}"  # not what the plugin writes: shown as it is
    clamped = bool(requested and effective and effective < 2 * requested)
    how = " forced" if params.get("force_sndbuf") else " clamped" if clamped else ""
    size = _bytes(effective) if effective else f"{_bytes(requested)} requested" if requested else "default"
    return f"sndbuf {size}{how}"


def _facts(sample: Mapping[str, Any]) -> dict[str, str]:
    """What a sample records about how its run was set up, each as the text a legend shows."""
    params = sample.get("params") or {}
    facts = {
        "sndbuf": _sndbuf(sample),
        "kernel": f"kernel {sample.get('kernel')}",
        "topology": str(sample.get("topology") or "-"),
        "pressure": str(sample.get("pressure") or "no CPU pressure"),
    }
    for name, value in sorted(params.items()):
        if name in ("sndbuf", "force_sndbuf", "external"):
            continue  # in "sndbuf"; external goes with argv
        if name == "argv" and isinstance(value, list):
            facts["param argv"] = " ".join(map(str, value))
        else:
            facts[f"param {name}"] = f"{name}={'default' if value is None else value}"
    for name, value in sorted((sample.get("sysctls") or {}).items()):  # the knobs in force during the run
        facts[f"sysctl {name}"] = f"{name.rsplit('.', 1)[-1]}={value}"
    return facts


def run_labels(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    """A name per run from what differs between the test's runs, as their samples record it (send buffer,
    sender parameters, topology, pressure, sysctls in force, kernel): "sndbuf 9 KB clamped" and
    "sndbuf 16 MB forced"; runs that differ in nothing recorded (repeats) stay "run 1", "run 2"."""
    facts = [_facts(s) for s in samples]
    differ = [k for k in dict.fromkeys(k for f in facts for k in f) if len({f.get(k) for f in facts}) > 1]
    if not differ:
        return [f"run {i + 1}" for i in range(len(samples))]
    names = [", ".join(f[k] for k in differ if k in f) or f"run {i + 1}" for i, f in enumerate(facts)]
    seen: dict[str, int] = {}
    repeated = {n for n in names if names.count(n) > 1}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(f"{n} ({seen[n]})" if n in repeated else n)  # the same set-up repeated: numbered in order
    return out


def runs(entry: Mapping[str, Any]) -> list[Run]:
    """The test's runs in order, named: by interleaved arm and round ("candidate, round 3"), else run_labels."""
    rounds = (entry.get("interleave") or {}).get("rounds") or []
    arms = [(f"{arm}, round {k + 1}", s) for k, r in enumerate(rounds) for arm in paired.ARMS for s in r.get(arm) or []]
    if arms:
        # several runs in one arm: named within it too
        per_arm = {a: [s for n, s in arms if n.startswith(a)] for a in paired.ARMS}
        inner = {id(s): lab for group in per_arm.values() for s, lab in zip(group, run_labels(group))}
        return [(name + ("" if inner[id(s)].startswith("run ") else f": {inner[id(s)]}"), s) for name, s in arms]
    samples = entry.get("samples") or []
    return list(zip(run_labels(samples), samples))


def _shown(found: Sequence[tuple[str, Sequence[float]]], title: str) -> tuple[list[tuple[str, Sequence[float]]], str]:
    """At most MAX_SERIES series (the last ones), and the title saying so when some are left out."""
    if len(found) <= MAX_SERIES:
        return list(found), title
    return list(found[-MAX_SERIES:]), f"{title} (last {MAX_SERIES} of {len(found)} runs)"


@dataclass(frozen=True)
class SysctlRow:
    name: str
    values: str  # every value seen in the test's runs, " | "-joined
    session: str | None  # the session's value where the test ran with another, else None


@dataclass(frozen=True)
class RanWith:
    rows: list[tuple[str, str]]
    sysctls: list[SysctlRow]


@dataclass(frozen=True)
class Section:
    """One test's section as data (templates/test_section.html); its plots are Figures: geometry from numbers."""

    anchor: str
    nodeid: str
    outcome: str
    summary: str  # kernel, samples, last pps / EAGAIN / sndbuf, sock_wfree backend: one line of text
    stacks: list[tuple[str, str]]  # context, its most frequent kernel stack at sock_wfree (bpf)
    ran_with: RanWith
    diagnosis: list[tuple[str, str]]  # finding, evidence
    plots: list[Figure]
    interleave: PairedView | None = None
    flat: list[str] = field(default_factory=list)  # what was measured as zero throughout: one line each, no empty plot


@dataclass(frozen=True)
class PairedView:
    """--udpsend-interleave: the paired verdicts of one test, as text cells (templates/test_section.html)."""

    kind: str  # "candidate" or "control (in-run A/A)"
    level: str
    rows: list[tuple[str, ...]]  # metric, pairs, baseline, candidate, factor, interval, allowed, p, 80 % finds, verdict


def _cell(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def paired_view(record: Mapping[str, Any]) -> PairedView:
    rows: list[tuple[str, ...]] = [
        (
            str(r["metric"]),
            str(r["pairs"]),
            _cell(r.get("baseline")),
            _cell(r.get("candidate")),
            _cell(r.get("estimate"), 3),
            f"[{_cell(r.get('low'), 3)}, {_cell(r.get('high'), 3)}]",
            _cell(r.get("allowed"), 3),
            _cell(r.get("p"), 2),
            _cell(r.get("resolvable"), 3),
            str(r["verdict"]) + (f" ({r['note']})" if r.get("note") else ""),
        )
        for r in record.get("paired", [])
    ]
    kind = "control (in-run A/A)" if record.get("control") else "candidate"
    if stop := record.get("stopped"):
        kind += f"; not judged: the test failed or skipped in the {stop.get('arm')} arm of round {stop.get('round')}"
    return PairedView(kind, _cell(record.get("level"), 2), rows)


def paired_plots(record: Mapping[str, Any]) -> list[Figure | None]:
    """Per compared metric, both arms round by round: drift is a trend in both, a change a gap between them."""
    rounds = record.get("rounds", [])
    plots: list[Figure | None] = []
    for row in record.get("paired", []):
        metric = str(row["metric"])
        series = [
            (arm, [v for r in rounds if (v := paired.arm_median([r], arm, metric)) is not None]) for arm in paired.ARMS
        ]
        if any(v for _, vals in series for v in vals):  # an all-zero metric carries nothing to look at
            title = f"{metric} per round, both arms"
            plots.append(line_plot(title, series, 1.0, "round", metric, yunit=metric_unit(metric), start=1.0))
    return plots


@dataclass(frozen=True)
class Overview:
    """One line of the table that opens the report: a test at a glance, linked to its section."""

    anchor: str
    test: str
    verdict: str
    failed: bool
    eagain: str  # medians over the test's samples, as text
    pps: str
    wfree_p99: str
    diagnosis: str  # the first line of the first finding


def _median(samples: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    vals = metrics.values(samples, metric)
    return statistics.median(vals) if vals else None


def overview(sec: Section, samples: Sequence[Mapping[str, Any]], rows: Sequence[compare.Row]) -> Overview:
    worse = [r.metric for r in rows if r.regressed]
    if sec.interleave is not None:
        worse += [r[0] for r in sec.interleave.rows if r[-1].startswith("regressed")]
        if worse and sec.interleave.kind != "candidate":
            worse = [f"control moved: {', '.join(worse)}"]
    verdict = sec.outcome + (f"; regression: {', '.join(worse)}" if worse else "")
    eagain, pps, p99 = (_median(samples, m) for m in ("eagain_rate", "pps", "wfree.p99_us"))
    first = sec.diagnosis[0][0].splitlines()[0] if sec.diagnosis and sec.diagnosis[0][0] else ""
    return Overview(
        sec.anchor,
        sec.nodeid,
        verdict,
        sec.outcome == "failed" or bool(worse),
        "-" if eagain is None else f"{eagain:.2%}",
        "-" if pps is None else f"{pps:,.0f}",
        "-" if p99 is None else f"{p99:.4g} us",
        first,
    )


def findings(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The diagnosis of one sample (``SendResult.diagnosis``): (finding, evidence) pairs."""
    return [(str(d.get("finding", "")), str(d.get("evidence", ""))) for d in sample.get("diagnosis") or []]


def ran_with(samples: Sequence[Mapping[str, Any]], session_sysctls: Mapping[str, Any]) -> RanWith:
    """The test's own conditions: topology, CPU pressure, sender parameters, and the sysctls in force during
    its runs (those that differ from the session's environment are marked)."""

    def distinct(key: str) -> str:
        seen = list(dict.fromkeys(str(s.get(key) or "") for s in samples))
        return " | ".join(v for v in seen if v) or "-"

    params: dict[str, list[str]] = {}  # every value each parameter had over the runs: the story's runs differ in one
    for sample in samples:
        for k, v in (sample.get("params") or {}).items():
            if v is not None and str(v) not in params.setdefault(k, []):
                params[k].append(str(v))
    rows = [
        ("topology", distinct("topology")),
        ("CPU pressure", distinct("pressure") if distinct("pressure") != "-" else "none"),
        ("sender", ", ".join(f"{k}={' | '.join(v)}" for k, v in sorted(params.items()) if v) or "-"),
    ]
    sysctls: dict[str, list[str]] = {}
    for sample in samples:
        for name, value in (sample.get("sysctls") or {}).items():
            if str(value) not in sysctls.setdefault(name, []):
                sysctls[name].append(str(value))
    cells = []
    for name, seen in sorted(sysctls.items()):
        changed = [v for v in seen if v != str(session_sysctls.get(name, v))]
        cells.append(SysctlRow(name, " | ".join(seen), str(session_sysctls.get(name)) if changed else None))
    return RanWith(rows, cells)


def _every(runs: int) -> str:
    return "the run" if runs == 1 else f"all {runs} runs"


def _all_zero(series: Sequence[tuple[str, Sequence[float]]]) -> bool:
    return bool(series) and not any(v for _, s in series for v in s)


def section(
    nodeid: str,
    entry: Mapping[str, Any],
    base: Sequence[Mapping[str, Any]] | None,
    rows: Sequence[compare.Row],
    session_sysctls: Mapping[str, Any],
    anchor: str,
) -> Section:
    """One test's section: what it ran with, what it measured (last sample), plots over its runs, each series
    named by what differs between the runs; a plot with nothing but zeros is one line of text instead."""
    samples = entry.get("samples", [])
    last = samples[-1]
    named = runs(entry)
    last_name = next((n for n, s in named if s is last), run_labels(samples)[-1])
    of_last = "" if last_name.startswith("run ") else f" ({last_name})"  # the plots of one run say which
    summary = (
        f"kernel {last.get('kernel')}; {len(samples)} sample(s); last{of_last}: {last.get('pps', 0):,.0f} pps, "
        f"EAGAIN {last.get('eagain_rate', 0):.2%}, sndbuf {last.get('sndbuf_effective')} B, "
        f"sock_wfree backend {(last.get('wfree') or {}).get('backend') or 'not measured'}"
    )
    top: dict[str, str] = {}  # bpf: the most frequent kernel stack at sock_wfree of each context
    for stack in (last.get("wfree") or {}).get("stacks") or []:
        top.setdefault(str(stack.get("context")), str(stack.get("text", "")))
    plots: list[Figure | None] = []
    flat: list[str] = []  # plots that would show only zeros, as one line each
    step = (last.get("series") or {}).get("bucket_ms", 10) / 1000
    eagain = [
        (name, [e / a if a else 0.0 for a, e in zip(s["series"].get("attempts", []), s["series"].get("eagain", []))])
        for name, s in named
        if s.get("series")
    ]
    if _all_zero(eagain):
        flat.append(f"EAGAIN: 0 throughout {_every(len(eagain))}")
    else:
        shown, title = _shown(eagain, "EAGAIN rate over the run")
        plots.append(line_plot(title, shown, step, "time", "EAGAIN share of attempts", "s", "%"))
    outq = [(name, s["series"].get("outq_max", [])) for name, s in named if (s.get("series") or {}).get("outq_max")]
    if _all_zero(outq):
        flat.append(f"SIOCOUTQ occupancy: 0 bytes throughout {_every(len(outq))}")
    else:
        shown, title = _shown(outq, "SIOCOUTQ occupancy (max per bucket)")
        plots.append(line_plot(title, shown, step, "time", "bytes queued", "s", "B"))
    plots += replay_plots(named)  # replay=: EAGAIN over the capture's timeline, per burst
    wfree = last.get("wfree") or {}
    hist = wfree.get("histogram") or {}
    by_ctx = wfree.get("histograms") or ({"all": hist} if hist else {})
    if by_ctx:
        edges = next(iter(by_ctx.values())).get("edges_us", [])
        labels = ["<" + _fmtnum(edges[0])] + [_fmtnum(e) for e in edges]
        groups = [(str(ctx), h.get("counts", [])) for ctx, h in by_ctx.items()]
        used = [i for i in range(len(labels)) if any(i < len(g) and g[i] for _, g in groups)]
        if used:
            lo, hi = used[0], used[-1] + 1
            plots.append(
                bar_plot(
                    f"sock_wfree latency histogram by context{of_last}",
                    labels[lo:hi],
                    [(n, g[lo:hi]) for n, g in groups],
                    "us (bucket start)",
                    "skbs",
                )
            )
        else:
            flat.append(f"sock_wfree latency{of_last}: no release timed in any context")
    softnet = last.get("softnet") or {}
    if softnet:
        cpus = sorted(softnet, key=int)
        squeeze = [softnet[c].get("time_squeeze", 0) for c in cpus]
        if any(squeeze):
            plots.append(
                bar_plot(
                    f"time_squeeze per CPU{of_last}",
                    [f"cpu{c}" for c in cpus],
                    [("time_squeeze", squeeze)],
                    "CPU",
                    "increments",
                )
            )
        else:
            flat.append(f"time_squeeze{of_last}: 0 on every CPU")
    if base is not None:
        for row in rows:
            old, new = metrics.values(base, row.metric), metrics.values(samples, row.metric)
            if (old or new) and not any(old) and not any(new):
                flat.append(f"{row.metric}: 0 in every baseline and new sample ({row.verdict})")
            else:
                plots.append(strip_plot(row.metric, old, new, row.verdict))
    record = entry.get("interleave")
    if record:
        plots += paired_plots(record)
    return Section(
        anchor,
        nodeid,
        str(entry.get("outcome")),
        summary,
        list(top.items()),
        ran_with(samples, session_sysctls),
        findings(last),
        [p for p in plots if p is not None],
        paired_view(record) if record else None,
        flat,
    )


def gate_rows(
    doc: Mapping[str, Any], baseline: Mapping[str, Any] | None, given: Mapping[str, Any] | None = None
) -> tuple[list[compare.Row], str, Mapping[str, Any]]:
    """The comparison rows to show, a header saying where they come from, and the baseline's environment.

    The verdicts the gate recorded in ``doc`` win, unless gate flags are given or the baseline
    is not the one the gate used; then they are recomputed with the same rule as the gate.
    """
    record = doc.get("gate") or {}
    flags = {k: v for k, v in (given or {}).items() if v is not None and v is not False}
    same_base = baseline is None or compare.baseline_digest(baseline) == (record.get("baseline") or {}).get("digest")
    if record and not flags and same_base:
        settings = compare.Settings.from_dict(record.get("settings") or {})
        head = "the verdicts the gate gave; " + compare.header(settings, int(record.get("family", 1)))
        return compare.rows_from(record), head, (record.get("baseline") or {}).get("environment") or {}
    if baseline is None:
        return [], "", {}
    settings = compare.settings_for(doc, flags)
    base_env = baseline.get("environment", {})
    mixed = compare.env_mismatch(base_env, doc.get("environment", {}))
    if mixed and not settings.allow_mixed:
        return [], "refused: " + compare.mixed_refusal(mixed, "--allow-mixed"), base_env
    family = compare.family_size(compare.samples_by_test(baseline), settings)
    why = "the gate compared with another baseline; " if record and not same_base else ""
    head = f"recomputed ({why}same rule as the gate); " + compare.header(settings, family)
    return compare.compare_docs(baseline, doc, settings), head, base_env


def render(
    doc: Mapping[str, Any], baseline: Mapping[str, Any] | None = None, given: Mapping[str, Any] | None = None
) -> str:
    env = doc.get("environment", {})
    base_tests = compare.samples_by_test(baseline) if baseline else {}
    rows, head, base_env = gate_rows(doc, baseline, given)  # once: the summary and the plots share them
    rows_by_test: dict[str, list[compare.Row]] = {}
    for row in rows:
        rows_by_test.setdefault(row.test, []).append(row)
    session_sysctls = env.get("sysctls") or {}
    measured = [(nodeid, entry) for nodeid, entry in sorted(doc.get("tests", {}).items()) if entry.get("samples")]
    sections = [
        section(
            nodeid,
            entry,
            compare.find(compare.base_key(nodeid), base_tests) if baseline else None,
            rows_by_test.get(compare.base_key(nodeid), []),
            session_sysctls,
            f"test-{i}",
        )
        for i, (nodeid, entry) in enumerate(measured)
    ]
    overviews = [
        overview(sec, entry["samples"], rows_by_test.get(compare.base_key(nodeid), []))
        for sec, (nodeid, entry) in zip(sections, measured)
    ]
    if shift := compare.common_shift(rows):
        head += f"\nnote: {shift}"
    comparison = (compare.table(rows, base_env, env, head) if rows else head) if rows or head else None
    return templating.render(
        "report.html",
        page_title="pytest-udpsend report",
        kernel=str(env.get("kernel")),
        environment=[(k, str(v)) for k, v in sorted(env.items()) if k not in ("sysctls", "gate")],
        sysctls=[(k, str(v)) for k, v in sorted(session_sysctls.items())],
        comparison=comparison,
        sweep=sweep_report.section(doc),  # remedy sweep cells: heatmap and line plots
        upgrade=upgrade_report.doc_section(doc),  # tests x kernels, where the document spans several kernels
        overview=overviews,
        sections=sections,
    )


def write_report(
    results_path: str, output: str, baseline_path: str | None = None, given: Mapping[str, Any] | None = None
) -> None:
    doc = store.load(results_path)
    baseline = store.load(baseline_path) if baseline_path else None
    atomic_write(output, render(doc, baseline, given))  # O_EXCL temporary, then rename

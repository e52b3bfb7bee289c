"""A self-contained HTML report: inline SVG plots, no scripts, no fetches.

Per test: EAGAIN rate over the run, SIOCOUTQ occupancy over the run, the
sock_wfree latency histogram per context, per-CPU time_squeeze; and, with a
baseline, baseline-versus-new samples per metric.

This module builds the page's data; templates/report.html lays it out, escaping
every string (templating.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.results import compare, metrics, paired, store, sweep_report, templating, upgrade_report
from pytest_udpsend.results.templating import Figure, Shape, shape

W, H, PAD = 440, 180, 52
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _frame(
    title: str, body: Sequence[Shape], xlabel: str, ylabel: str, ymax: float, xmax: float | None = None
) -> Figure:
    """Axes, three y ticks, the last x tick and the labels around a plot's shapes (data: see templating.Figure)."""
    frame = [shape("text", title, x=W / 2, y=12, text_anchor="middle", font_size=11, font_weight="bold")]
    for f in (0, 0.5, 1):
        y = H - PAD - f * (H - PAD - 18)
        frame += [shape("line", x1=PAD, x2=W - 8, y1=f"{y:.1f}", y2=f"{y:.1f}", stroke="#eee"),
                  shape("text", _fmtnum(ymax * f), x=PAD - 4, y=f"{y + 3:.1f}", text_anchor="end", font_size=9)]  # fmt: skip
    if xmax:
        frame.append(shape("text", _fmtnum(xmax), x=W - 8, y=H - PAD + 12, text_anchor="end", font_size=9))
    frame += [
        shape("line", x1=PAD, y1=H - PAD, x2=W - 8, y2=H - PAD, stroke="#333"),
        shape("line", x1=PAD, y1=18, x2=PAD, y2=H - PAD, stroke="#333"),
        shape("text", xlabel, x=(W + PAD) / 2, y=H - 8, text_anchor="middle", font_size=10),
        shape("text", ylabel, x=10, y=H / 2, transform=f"rotate(-90 10 {H / 2})", text_anchor="middle", font_size=10),
    ]
    return Figure(W, H, [*frame, *body], title=title)


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
    title: str, series: Sequence[tuple[str, Sequence[float]]], step: float, xlabel: str, ylabel: str
) -> Figure | None:
    values = [v for _, s in series for v in s]
    if not values:
        return None
    ymax = max(values) or 1.0
    xmax = max(len(s) for _, s in series) * step
    body: list[Shape] = []
    legend: list[Shape] = []
    for k, (name, s) in enumerate(series):
        pts = " ".join("%.1f,%.1f" % _xy(i * step, v, xmax, ymax) for i, v in enumerate(s))  # numbers only
        color = COLORS[k % len(COLORS)]
        body.append(shape("polyline", fill="none", stroke=color, stroke_width=1.2, points=pts))
        legend.append(shape("text", name, x=W - 10, y=28 + 11 * k, text_anchor="end", font_size=9, fill=color))
    return _frame(title, body + legend, xlabel, ylabel, ymax, xmax)


def bar_plot(
    title: str, labels: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]], xlabel: str, ylabel: str
) -> Figure | None:
    values = [v for _, g in groups for v in g]
    if not values:
        return None
    ymax = max(values) or 1.0
    slot = (W - 8 - PAD) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(groups), 1)
    body: list[Shape] = []
    for k, (name, g) in enumerate(groups):
        for i, v in enumerate(g):
            x = PAD + i * slot + slot * 0.1 + k * bar
            _, y = _xy(0, v, 1, ymax)
            body.append(shape("rect", title=f"{name} {labels[i]}: {v:g}", x=f"{x:.1f}", y=f"{y:.1f}",
                              width=f"{max(bar - 1, 1):.1f}", height=f"{H - PAD - y:.1f}", fill=COLORS[k % len(COLORS)]))  # fmt: skip
    for i, label in enumerate(labels):
        if len(labels) <= 10 or i % max(1, -(-len(labels) // 8)) == 0:
            body.append(
                shape(
                    "text", label, x=f"{PAD + (i + 0.5) * slot:.1f}", y=H - PAD + 11, text_anchor="middle", font_size=8
                )
            )
    body += [shape("text", n, x=W - 10, y=28 + 11 * k, text_anchor="end", font_size=9, fill=COLORS[k % len(COLORS)])
             for k, (n, _) in enumerate(groups)]  # fmt: skip
    return _frame(title, body, xlabel, ylabel, ymax)


def strip_plot(title: str, base: Sequence[float], new: Sequence[float], verdict: str) -> Figure | None:
    values = [*base, *new]
    if not values:
        return None
    ymax = max(values) or 1.0
    body: list[Shape] = []
    for k, (name, vs) in enumerate((("baseline", base), ("new", new))):
        cx = PAD + (W - 8 - PAD) * (0.3 + 0.4 * k)
        for j, v in enumerate(vs):
            _, y = _xy(0, v, 1, ymax)
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
    return _frame(f"{title}: {verdict}", body, "", title, ymax)


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


@dataclass(frozen=True)
class PairedView:
    """--udpsend-interleave: the paired verdicts of one test, as text cells (templates/test_section.html)."""

    kind: str  # "candidate" or "control (in-run A/A)"
    level: str
    rows: list[tuple[str, ...]]  # metric, pairs, baseline, candidate, factor, interval, allowed, p, 80 % finds, verdict


def _cell(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def paired_view(record: Mapping[str, Any]) -> PairedView:
    rows: list[tuple[str, ...]] = [(str(r["metric"]), str(r["pairs"]), _cell(r.get("baseline")), _cell(r.get("candidate")), _cell(r.get("estimate"), 3),
             f"[{_cell(r.get('low'), 3)}, {_cell(r.get('high'), 3)}]", _cell(r.get("allowed"), 3), _cell(r.get("p"), 2),
             _cell(r.get("resolvable"), 3), str(r["verdict"]) + (f" ({r['note']})" if r.get("note") else ""))
            for r in record.get("paired", [])]  # fmt: skip
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
            plots.append(line_plot(f"{metric} per round, both arms", series, 1.0, "round", metric))
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
    return Overview(sec.anchor, sec.nodeid, verdict, sec.outcome == "failed" or bool(worse),
                    "-" if eagain is None else f"{eagain:.2%}", "-" if pps is None else f"{pps:,.0f}",
                    "-" if p99 is None else f"{p99:.4g} us", first)  # fmt: skip


def findings(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The diagnosis of one sample (``SendResult.diagnosis``): (finding, evidence) pairs."""
    return [(str(d.get("finding", "")), str(d.get("evidence", ""))) for d in sample.get("diagnosis") or []]


def ran_with(samples: Sequence[Mapping[str, Any]], session_sysctls: Mapping[str, Any]) -> RanWith:
    """The test's own conditions: topology, CPU pressure, sender parameters, and the sysctls in force during
    its runs (those that differ from the session's environment are marked)."""

    def distinct(key: str) -> str:
        seen = list(dict.fromkeys(str(s.get(key) or "") for s in samples))
        return " | ".join(v for v in seen if v) or "-"

    params = samples[-1].get("params") or {}
    rows = [("topology", distinct("topology")), ("CPU pressure", distinct("pressure") if distinct("pressure") != "-" else "none"),
            ("sender", ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None) or "-")]  # fmt: skip
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


def section(nodeid: str, entry: Mapping[str, Any], base: Sequence[Mapping[str, Any]] | None,
            rows: Sequence[compare.Row], session_sysctls: Mapping[str, Any], anchor: str) -> Section:  # fmt: skip
    """One test's section: what it ran with, what it measured (last sample), plots over its samples."""
    samples = entry.get("samples", [])
    last = samples[-1]
    summary = (f"kernel {last.get('kernel')}; {len(samples)} sample(s); last: {last.get('pps', 0):,.0f} pps, "
               f"EAGAIN {last.get('eagain_rate', 0):.2%}, sndbuf {last.get('sndbuf_effective')} B, "
               f"sock_wfree backend {(last.get('wfree') or {}).get('backend') or 'not measured'}")  # fmt: skip
    top: dict[str, str] = {}  # bpf: the most frequent kernel stack at sock_wfree of each context
    for stack in (last.get("wfree") or {}).get("stacks") or []:
        top.setdefault(str(stack.get("context")), str(stack.get("text", "")))
    plots: list[Figure | None] = []
    step = (last.get("series") or {}).get("bucket_ms", 10) / 1000
    eagain = [
        (f"run {i + 1}", [e / a if a else 0.0 for a, e in zip(s["series"].get("attempts", []), s["series"].get("eagain", []))])
        for i, s in enumerate(samples) if s.get("series")
    ]  # fmt: skip
    plots.append(line_plot("EAGAIN rate over the run", eagain, step, "time (s)", "EAGAIN / attempts"))
    outq = [
        (f"run {i + 1}", s["series"].get("outq_max", []))
        for i, s in enumerate(samples)
        if s.get("series", {}).get("outq_max")
    ]
    plots.append(line_plot("SIOCOUTQ occupancy (max per bucket)", outq, step, "time (s)", "bytes"))
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
            plots.append(bar_plot("sock_wfree latency histogram by context", labels[lo:hi],
                                  [(n, g[lo:hi]) for n, g in groups], "us (bucket start)", "skbs"))  # fmt: skip
    softnet = last.get("softnet") or {}
    if softnet:
        cpus = sorted(softnet, key=int)
        plots.append(bar_plot("time_squeeze per CPU", [f"cpu{c}" for c in cpus],
                              [("time_squeeze", [softnet[c].get("time_squeeze", 0) for c in cpus])], "CPU", "increments"))  # fmt: skip
    if base is not None:
        for row in rows:
            plots.append(
                strip_plot(
                    row.metric, metrics.values(base, row.metric), metrics.values(samples, row.metric), row.verdict
                )
            )
    record = entry.get("interleave")
    if record:
        plots += paired_plots(record)
    return Section(anchor, nodeid, str(entry.get("outcome")), summary, list(top.items()), ran_with(samples, session_sysctls),
                   findings(last), [p for p in plots if p is not None], paired_view(record) if record else None)  # fmt: skip


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
        )  # fmt: skip
        for i, (nodeid, entry) in enumerate(measured)
    ]
    overviews = [overview(sec, entry["samples"], rows_by_test.get(compare.base_key(nodeid), []))
                 for sec, (nodeid, entry) in zip(sections, measured)]  # fmt: skip
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


def write_report(results_path: str, output: str, baseline_path: str | None = None,
                 given: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    doc = store.load(results_path)
    baseline = store.load(baseline_path) if baseline_path else None
    atomic_write(output, render(doc, baseline, given))  # O_EXCL temporary, then rename

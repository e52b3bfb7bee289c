"""A self-contained HTML report: inline SVG plots, no scripts, no fetches.

Per test: EAGAIN rate over the run, SIOCOUTQ occupancy over the run, the
sock_wfree latency histogram per context, per-CPU time_squeeze; and, with a
baseline, baseline-versus-new samples per metric.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.results import compare, metrics, store, sweep_report, upgrade_report

W, H, PAD = 440, 180, 52
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _frame(title: str, body: str, xlabel: str, ylabel: str, ymax: float, xmax: float | None = None) -> str:
    ticks = "".join(
        f'<line x1="{PAD}" x2="{W - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        f'<text x="{PAD - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="9">{_fmtnum(ymax * f)}</text>'
        for f, y in ((f, H - PAD - f * (H - PAD - 18)) for f in (0, 0.5, 1))
    )
    xtick = f'<text x="{W - 8}" y="{H - PAD + 12}" text-anchor="end" font-size="9">{_fmtnum(xmax)}</text>' if xmax else ""
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">'
        f'<title>{_esc(title)}</title><text x="{W / 2}" y="12" text-anchor="middle" font-size="11" font-weight="bold">{_esc(title)}</text>'
        f"{ticks}{xtick}"
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 8}" y2="{H - PAD}" stroke="#333"/>'
        f'<line x1="{PAD}" y1="18" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>'
        f'<text x="{(W + PAD) / 2}" y="{H - 8}" text-anchor="middle" font-size="10">{_esc(xlabel)}</text>'
        f'<text x="10" y="{H / 2}" transform="rotate(-90 10 {H / 2})" text-anchor="middle" font-size="10">{_esc(ylabel)}</text>'
        f"{body}</svg></figure>"
    )


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


def line_plot(title: str, series: Sequence[tuple[str, Sequence[float]]], step: float, xlabel: str, ylabel: str) -> str:
    values = [v for _, s in series for v in s]
    if not values:
        return ""
    ymax = max(values) or 1.0
    xmax = max(len(s) for _, s in series) * step
    body, legend = "", ""
    for k, (name, s) in enumerate(series):
        pts = " ".join("%.1f,%.1f" % _xy(i * step, v, xmax, ymax) for i, v in enumerate(s))
        color = COLORS[k % len(COLORS)]
        body += f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{pts}"/>'
        legend += f'<text x="{W - 10}" y="{28 + 11 * k}" text-anchor="end" font-size="9" fill="{color}">{_esc(name)}</text>'
    return _frame(title, body + legend, xlabel, ylabel, ymax, xmax)


def bar_plot(title: str, labels: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]], xlabel: str, ylabel: str) -> str:
    values = [v for _, g in groups for v in g]
    if not values:
        return ""
    ymax = max(values) or 1.0
    slot = (W - 8 - PAD) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(groups), 1)
    body = ""
    for k, (name, g) in enumerate(groups):
        for i, v in enumerate(g):
            x = PAD + i * slot + slot * 0.1 + k * bar
            _, y = _xy(0, v, 1, ymax)
            body += (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" height="{H - PAD - y:.1f}" '
                     f'fill="{COLORS[k % len(COLORS)]}"><title>{_esc(name)} {_esc(labels[i])}: {v:g}</title></rect>')  # fmt: skip
    for i, label in enumerate(labels):
        if len(labels) <= 10 or i % max(1, -(-len(labels) // 8)) == 0:
            body += f'<text x="{PAD + (i + 0.5) * slot:.1f}" y="{H - PAD + 11}" text-anchor="middle" font-size="8">{_esc(label)}</text>'
    body += "".join(
        f'<text x="{W - 10}" y="{28 + 11 * k}" text-anchor="end" font-size="9" fill="{COLORS[k % len(COLORS)]}">{_esc(n)}</text>'
        for k, (n, _) in enumerate(groups)
    )
    return _frame(title, body, xlabel, ylabel, ymax)


def strip_plot(title: str, base: Sequence[float], new: Sequence[float], verdict: str) -> str:
    values = [*base, *new]
    if not values:
        return ""
    ymax = max(values) or 1.0
    body = ""
    for k, (name, vs) in enumerate((("baseline", base), ("new", new))):
        cx = PAD + (W - 8 - PAD) * (0.3 + 0.4 * k)
        for j, v in enumerate(vs):
            _, y = _xy(0, v, 1, ymax)
            body += f'<circle cx="{cx + (j % 7 - 3) * 4:.1f}" cy="{y:.1f}" r="3" fill="{COLORS[k]}" fill-opacity="0.7"><title>{v:g}</title></circle>'
        body += f'<text x="{cx:.1f}" y="{H - PAD + 12}" text-anchor="middle" font-size="10">{name}</text>'
    return _frame(f"{title}: {verdict}", body, "", title, ymax)


def ran_with(samples: Sequence[Mapping[str, Any]], session_sysctls: Mapping[str, Any]) -> str:
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
        text = _esc(" | ".join(seen)) + (f" <em>(session: {_esc(session_sysctls.get(name))})</em>" if changed else "")
        cells.append(f'<tr{" class=changed" if changed else ""}><th>{_esc(name)}</th><td>{text}</td></tr>')
    head = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="ranwith"><caption>this test ran with</caption>{head}{"".join(cells)}</table>'


def _test_section(nodeid: str, entry: Mapping[str, Any], base: Sequence[Mapping[str, Any]] | None,
                  rows: Sequence[compare.Row], session_sysctls: Mapping[str, Any]) -> str:  # fmt: skip
    samples = entry.get("samples", [])
    parts = [f'<section><h2>{_esc(nodeid)} <span class="{_esc(entry.get("outcome"))}">{_esc(entry.get("outcome"))}</span></h2>']
    last = samples[-1]
    parts.append(
        f"<p>kernel {_esc(last.get('kernel'))}; {len(samples)} sample(s); last: {last.get('pps', 0):,.0f} pps, "
        f"EAGAIN {last.get('eagain_rate', 0):.2%}, sndbuf {last.get('sndbuf_effective')} B, "
        f"sock_wfree backend {_esc((last.get('wfree') or {}).get('backend') or 'not measured')}</p>"
    )
    top: dict[str, str] = {}  # bpf: the most frequent kernel stack at sock_wfree of each context
    for stack in (last.get("wfree") or {}).get("stacks") or []:
        top.setdefault(stack.get("context"), stack.get("text", ""))
    if top:
        parts.append("<p>sock_wfree top stack per context:<br>"
                     + "<br>".join(f"{_esc(c)}: {_esc(t)}" for c, t in top.items()) + "</p>")  # fmt: skip
    parts.append(ran_with(samples, session_sysctls) + sweep_report.diagnosis_html(last))
    plots = []
    step = (last.get("series") or {}).get("bucket_ms", 10) / 1000
    eagain = [
        (f"run {i + 1}", [e / a if a else 0.0 for a, e in zip(s["series"].get("attempts", []), s["series"].get("eagain", []))])
        for i, s in enumerate(samples) if s.get("series")
    ]  # fmt: skip
    plots.append(line_plot("EAGAIN rate over the run", eagain, step, "time (s)", "EAGAIN / attempts"))
    outq = [(f"run {i + 1}", s["series"].get("outq_max", [])) for i, s in enumerate(samples) if s.get("series", {}).get("outq_max")]
    plots.append(line_plot("SIOCOUTQ occupancy (max per bucket)", outq, step, "time (s)", "bytes"))
    wfree = last.get("wfree") or {}
    hist = wfree.get("histogram") or {}
    by_ctx = wfree.get("histograms") or ({"all": hist} if hist else {})
    if by_ctx:
        edges = next(iter(by_ctx.values())).get("edges_us", [])
        labels = ["<" + _fmtnum(edges[0])] + [_fmtnum(e) for e in edges]
        groups = [(ctx, h.get("counts", [])) for ctx, h in by_ctx.items()]
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
            plots.append(strip_plot(row.metric, metrics.values(base, row.metric), metrics.values(samples, row.metric), row.verdict))
    parts.append('<div class="plots">' + "".join(p for p in plots if p) + "</div></section>")
    return "".join(parts)


CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.05em;margin-top:1.6em}
.plots{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;border:1px solid #ddd}
.passed{color:#2a2}.failed{color:#c22}table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
.ranwith{margin:.4em 0}.ranwith caption{text-align:left;font-size:.9em}.changed{background:#fff3c4}"""


def gate_rows(doc: Mapping[str, Any], baseline: Mapping[str, Any] | None,
              given: Mapping[str, Any] | None = None) -> tuple[list[compare.Row], str, Mapping[str, Any]]:
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


def render(doc: Mapping[str, Any], baseline: Mapping[str, Any] | None = None, given: Mapping[str, Any] | None = None) -> str:
    env = doc.get("environment", {})
    base_tests = compare.samples_by_test(baseline) if baseline else {}
    rows, head, base_env = gate_rows(doc, baseline, given)  # once: the summary and the plots share them
    rows_by_test: dict[str, list[compare.Row]] = {}
    for row in rows:
        rows_by_test.setdefault(row.test, []).append(row)
    env_rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in sorted(env.items()) if k not in ("sysctls", "gate"))
    session_sysctls = env.get("sysctls") or {}
    sysctls = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in sorted(session_sysctls.items()))
    sections = [
        _test_section(nodeid, entry, compare.find(compare.base_key(nodeid), base_tests) if baseline else None,
                      rows_by_test.get(compare.base_key(nodeid), []), session_sysctls)  # fmt: skip
        for nodeid, entry in sorted(doc.get("tests", {}).items())
        if entry.get("samples")
    ]
    summary = ""
    if shift := compare.common_shift(rows):
        head += f"\nnote: {shift}"
    if rows or head:
        summary = f"<h2>Baseline comparison</h2><pre>{_esc(compare.table(rows, base_env, env, head) if rows else head)}</pre>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>pytest-udpsend report</title>"
        f"<style>{CSS}</style></head><body><h1>pytest-udpsend report: kernel {_esc(env.get('kernel'))}</h1>"
        f"<h2>Environment</h2><table>{env_rows}</table><h2>Environment: sysctls in force at session end</h2>"
        f"<p>Each test's own sysctls, topology and pressure are in its section.</p><table>{sysctls}</table>{summary}"
        + sweep_report.render(doc)  # remedy sweep cells: heatmap and line plots
        + upgrade_report.render_doc(doc)  # tests x kernels, where the document spans several kernels
        + ("".join(sections) or "<p>No measurements in this run.</p>")
        + "</body></html>"
    )


def write_report(results_path: str, output: str, baseline_path: str | None = None,
                 given: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    doc = store.load(results_path)
    baseline = store.load(baseline_path) if baseline_path else None
    atomic_write(output, render(doc, baseline, given))  # O_EXCL temporary, then rename

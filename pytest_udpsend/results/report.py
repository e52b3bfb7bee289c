"""A self-contained HTML report: inline SVG plots, no scripts, no fetches.

Per test: EAGAIN rate over the run, SIOCOUTQ occupancy over the run, the
sock_wfree latency histogram per context, per-CPU time_squeeze; and, with a
baseline, baseline-versus-new samples per metric.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_udpsend.results import compare, metrics, store

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


def _test_section(nodeid: str, entry: Mapping[str, Any], base: Sequence[Mapping[str, Any]] | None,
                  rows: Sequence[compare.Row]) -> str:  # fmt: skip
    samples = entry.get("samples", [])
    parts = [f'<section><h2>{_esc(nodeid)} <span class="{_esc(entry.get("outcome"))}">{_esc(entry.get("outcome"))}</span></h2>']
    last = samples[-1]
    parts.append(
        f"<p>kernel {_esc(last.get('kernel'))}; {_esc(last.get('topology'))}; {_esc(last.get('pressure') or 'no CPU pressure')}; "
        f"{len(samples)} sample(s); last: {last.get('pps', 0):,.0f} pps, EAGAIN {last.get('eagain_rate', 0):.2%}, "
        f"sndbuf {last.get('sndbuf_effective')} B, sock_wfree backend {_esc((last.get('wfree') or {}).get('backend') or 'not measured')}</p>"
    )
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
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"""


def render(doc: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    env = doc.get("environment", {})
    base_tests = compare.samples_by_test(baseline) if baseline else {}
    rows = compare.compare_docs(baseline, doc) if baseline else []  # once: the summary and the plots share them
    rows_by_test: dict[str, list[compare.Row]] = {}
    for row in rows:
        rows_by_test.setdefault(row.test, []).append(row)
    env_rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in sorted(env.items()) if k != "sysctls")
    sysctls = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in sorted((env.get("sysctls") or {}).items()))
    sections = [
        _test_section(nodeid, entry, compare.find(compare.base_key(nodeid), base_tests) if baseline else None,
                      rows_by_test.get(compare.base_key(nodeid), []))  # fmt: skip
        for nodeid, entry in sorted(doc.get("tests", {}).items())
        if entry.get("samples")
    ]
    summary = ""
    if baseline:
        summary = f"<h2>Baseline comparison</h2><pre>{_esc(compare.table(rows, baseline.get('environment'), env))}</pre>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>pytest-udpsend report</title>"
        f"<style>{CSS}</style></head><body><h1>pytest-udpsend report: kernel {_esc(env.get('kernel'))}</h1>"
        f"<table>{env_rows}</table><h2>sysctls in force at session end</h2><table>{sysctls}</table>{summary}"
        + ("".join(sections) or "<p>No measurements in this run.</p>")
        + "</body></html>"
    )


def write_report(results_path: str, output: str, baseline_path: str | None = None) -> None:
    doc = store.load(results_path)
    baseline = store.load(baseline_path) if baseline_path else None
    Path(output).write_text(render(doc, baseline))

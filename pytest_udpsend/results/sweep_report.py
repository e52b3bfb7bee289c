"""The HTML of a remedy sweep: a heatmap sndbuf x netdev_budget coloured by EAGAIN rate, and
line plots of EAGAIN rate against sndbuf, one line per budget.  Inline SVG, no scripts.

Also the per-test diagnosis list (``SendResult.diagnosis``) for the report's test sections.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
# sequential ramp for EAGAIN rate 0 -> 1 (light yellow to dark red)
RAMP = [(255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def diagnosis_html(sample: Mapping[str, Any]) -> str:
    """The findings of one sample as a list (nothing when it has none)."""
    findings = sample.get("diagnosis") or []
    if not findings:
        return ""
    items = "".join(f"<li>{_esc(d['finding'])}<br><small>evidence: {_esc(d['evidence'])}</small></li>" for d in findings)
    return f'<div class="diagnosis"><strong>diagnosis</strong><ul>{items}</ul></div>'


def _colour(rate: float) -> str:
    t = min(max(rate, 0.0), 1.0) ** 0.5 * (len(RAMP) - 1)  # sqrt: small rates still show
    i = min(int(t), len(RAMP) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(RAMP[i], RAMP[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def _size(n: int | None) -> str:
    if n is None:
        return "default"
    return f"{n >> 20}M" if n % (1 << 20) == 0 else (f"{n >> 10}K" if n % 1024 == 0 else str(n))


def cells(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sweep summaries (knobs and medians) of the document's tests, in order."""
    found = [entry["sweep"] for entry in doc.get("tests", {}).values() if isinstance(entry.get("sweep"), dict)]
    order = ("sndbuf", "force", "budget", "budget_usecs", "workers")
    return sorted(found, key=lambda s: tuple(int(s["knobs"].get(k) or 0) for k in order))


def _groups(summaries: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One heatmap per combination of the knobs that are not on its axes (budget_usecs, workers)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        k = s["knobs"]
        label = ", ".join(f"{n}={k[n]}" for n in ("budget_usecs", "workers") if k.get(n) is not None)
        out.setdefault(label, []).append(s)
    return out


def _column(k: Mapping[str, Any]) -> tuple[int, int]:
    return (k.get("sndbuf") or 0, 1 if k.get("force") else 0)


def _col_label(col: tuple[int, int]) -> str:
    return _size(col[0] or None) + (" forced" if col[1] else "")


def heatmap(title: str, summaries: Sequence[dict[str, Any]], target: float | None) -> str:
    cols = sorted({_column(s["knobs"]) for s in summaries})
    rows = sorted({s["knobs"].get("budget") or 0 for s in summaries}, reverse=True)
    cw, ch, left, top = 74, 30, 70, 34
    w, h = left + cw * len(cols) + 10, top + ch * len(rows) + 58
    by = {(_column(s["knobs"]), s["knobs"].get("budget") or 0): s for s in summaries}
    body = ""
    for j, budget in enumerate(rows):
        y = top + j * ch
        body += f'<text x="{left - 6}" y="{y + ch / 2 + 4}" text-anchor="end" font-size="11">{budget or "host"}</text>'
        for i, col in enumerate(cols):
            s = by.get((col, budget))
            x = left + i * cw
            if s is None:
                body += f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="#f0f0f0"/>'
                continue
            rate = s.get("eagain_rate") or 0.0
            ok = target is not None and rate <= target
            fg = "#fff" if rate > 0.25 else "#222"
            border = ' stroke="#1a7f37" stroke-width="3"' if ok else ""
            tip = f"{_col_label(col)}, budget {budget or 'host'}: EAGAIN {rate:.2%}, {s.get('pps') or 0:,.0f} pps, time_squeeze {s.get('time_squeeze') or 0:.0f}"
            body += (f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{_colour(rate)}"'
                     f'{border}><title>{_esc(tip)}</title></rect>'
                     f'<text x="{x + cw / 2 - 1}" y="{y + ch / 2 + 4}" text-anchor="middle" font-size="11" fill="{fg}">{rate:.1%}</text>')  # fmt: skip
    for i, col in enumerate(cols):
        cx = left + i * cw + cw / 2
        body += f'<text x="{cx}" y="{top + ch * len(rows) + 14}" text-anchor="middle" font-size="10">{_esc(_col_label(col))}</text>'
    body += (f'<text x="{left + cw * len(cols) / 2}" y="{h - 22}" text-anchor="middle" font-size="11">SO_SNDBUF requested</text>'
             f'<text x="12" y="{top + ch * len(rows) / 2}" transform="rotate(-90 12 {top + ch * len(rows) / 2})" '
             f'text-anchor="middle" font-size="11">net.core.netdev_budget</text>'
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="12" font-weight="bold">{_esc(title)}</text>')  # fmt: skip
    if target is not None:
        body += f'<text x="{left}" y="{h - 6}" font-size="10" fill="#1a7f37">green border: EAGAIN at or under the target {target:.2%}</text>'
    return f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">{body}</svg></figure>'


def lines(title: str, summaries: Sequence[dict[str, Any]]) -> str:
    """EAGAIN rate against sndbuf (categorical, sorted), one line per (budget, forced)."""
    sizes = sorted({s["knobs"].get("sndbuf") or 0 for s in summaries})
    series: dict[str, dict[int, float]] = {}
    for s in summaries:
        k = s["knobs"]
        name = f"budget {k.get('budget') or 'host'}" + (" forced" if k.get("force") else "")
        series.setdefault(name, {})[k.get("sndbuf") or 0] = s.get("eagain_rate") or 0.0
    if len(sizes) < 2:
        return ""
    W, H, PAD = 460, 230, 56
    ymax = max((v for d in series.values() for v in d.values()), default=0.0) or 0.01

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD + (W - 20 - PAD) * i / (len(sizes) - 1), H - PAD - (H - PAD - 24) * v / ymax

    body = ""
    for f in (0.0, 0.5, 1.0):
        _, y = xy(0, ymax * f)
        body += (f'<line x1="{PAD}" x2="{W - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                 f'<text x="{PAD - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="9">{ymax * f:.1%}</text>')  # fmt: skip
    for i, size in enumerate(sizes):
        x, _ = xy(i, 0)
        body += f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle" font-size="9">{_size(size or None)}</text>'
    for n, (name, points) in enumerate(sorted(series.items())):
        color = COLORS[n % len(COLORS)]
        dash = ' stroke-dasharray="5 3"' if name.endswith("forced") else ""
        pts = [xy(i, points[s]) for i, s in enumerate(sizes) if s in points]
        body += f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}"/>'
        body += "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
        body += f'<text x="{W - 22}" y="{30 + 12 * n}" text-anchor="end" font-size="10" fill="{color}">{_esc(name)}</text>'
    body += (f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 20}" y2="{H - PAD}" stroke="#333"/>'
             f'<line x1="{PAD}" y1="24" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>'
             f'<text x="{(W + PAD) / 2}" y="{H - 18}" text-anchor="middle" font-size="10">SO_SNDBUF requested</text>'
             f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle" font-size="10">EAGAIN rate</text>'
             f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="11" font-weight="bold">{_esc(title)}</text>')  # fmt: skip
    return f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">{body}</svg></figure>'


def _p99(us: float | None) -> str:
    return "-" if us is None else f"{us:.0f} us"


def render(doc: Mapping[str, Any]) -> str:
    """The sweep section of the report, or "" when the document holds no sweep cells."""
    summaries = cells(doc)
    if not summaries:
        return ""
    meta = doc.get("sweep") or {}
    target = meta.get("target")
    figs = []
    for label, group in _groups(summaries).items():
        suffix = f" ({label})" if label else ""
        figs.append(heatmap(f"EAGAIN rate: sndbuf x netdev_budget{suffix}", group, target))
        figs.append(lines(f"EAGAIN rate against sndbuf, per budget{suffix}", group))
    head = f"<p><strong>smallest change:</strong> {_esc(meta['smallest_change'])}</p>" if meta.get("smallest_change") else ""
    cut = "<p><em>interrupted: only the cells measured before Ctrl-C are shown</em></p>" if meta.get("interrupted") else ""
    rows = "".join(
        f"<tr><td>{_esc(s.get('cell', ''))}</td>"
        f"<td>{(s.get('eagain_rate') or 0):.2%}</td><td>{(s.get('enobufs_rate') or 0):.2%}</td><td>{(s.get('pps') or 0):,.0f}</td><td>{(s.get('time_squeeze') or 0):.0f}</td>"
        f"<td>{_p99(s.get('wfree_p99_us'))}</td></tr>"
        for s in summaries
    )
    table = (f"<table><tr><th>cell</th><th>EAGAIN (median)</th><th>ENOBUFS</th><th>pps</th><th>time_squeeze</th><th>sock_wfree p99</th></tr>"
             f"{rows}</table>")  # fmt: skip
    return (f"<section><h2>Remedy sweep: {len(summaries)} cells</h2>{head}{cut}"
            f'<div class="plots">{"".join(f for f in figs if f)}</div>{table}</section>')  # fmt: skip

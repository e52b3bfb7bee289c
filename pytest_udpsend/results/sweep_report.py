"""The HTML of a remedy sweep: a heatmap sndbuf x netdev_budget coloured by EAGAIN rate, and
line plots of EAGAIN rate against sndbuf, one line per budget.  Inline SVG, no scripts.

This module builds the section's data; templates/sweep.html lays it out, escaping every string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_udpsend.results import templating
from pytest_udpsend.results.templating import Figure, Shape, shape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
# sequential ramp for EAGAIN rate 0 -> 1 (light yellow to dark red)
RAMP = [(255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)]


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


def heatmap(title: str, summaries: Sequence[dict[str, Any]], target: float | None) -> Figure:
    cols = sorted({_column(s["knobs"]) for s in summaries})
    rows = sorted({s["knobs"].get("budget") or 0 for s in summaries}, reverse=True)
    cw, ch, left, top = 74, 30, 70, 34
    w, h = left + cw * len(cols) + 10, top + ch * len(rows) + 58
    by = {(_column(s["knobs"]), s["knobs"].get("budget") or 0): s for s in summaries}
    body: list[Shape] = []
    for j, budget in enumerate(rows):
        y = top + j * ch
        body.append(shape("text", budget or "host", x=left - 6, y=y + ch / 2 + 4, text_anchor="end", font_size=11))
        for i, col in enumerate(cols):
            s = by.get((col, budget))
            x = left + i * cw
            if s is None:
                body.append(shape("rect", x=x, y=y, width=cw - 2, height=ch - 2, fill="#f0f0f0"))
                continue
            rate = s.get("eagain_rate") or 0.0
            ok = target is not None and rate <= target
            fg = "#fff" if rate > 0.25 else "#222"
            border = {"stroke": "#1a7f37", "stroke_width": 3} if ok else {}
            tip = f"{_col_label(col)}, budget {budget or 'host'}: EAGAIN {rate:.2%}, {s.get('pps') or 0:,.0f} pps, time_squeeze {s.get('time_squeeze') or 0:.0f}"
            body += [
                shape("rect", title=tip, x=x, y=y, width=cw - 2, height=ch - 2, fill=_colour(rate), **border),
                shape(
                    "text",
                    f"{rate:.1%}",
                    x=x + cw / 2 - 1,
                    y=y + ch / 2 + 4,
                    text_anchor="middle",
                    font_size=11,
                    fill=fg,
                ),
            ]
    for i, col in enumerate(cols):
        cx = left + i * cw + cw / 2
        body.append(
            shape("text", _col_label(col), x=cx, y=top + ch * len(rows) + 14, text_anchor="middle", font_size=10)
        )
    mid = top + ch * len(rows) / 2
    body += [
        shape("text", "SO_SNDBUF requested", x=left + cw * len(cols) / 2, y=h - 22, text_anchor="middle", font_size=11),
        shape(
            "text",
            "net.core.netdev_budget",
            x=12,
            y=mid,
            transform=f"rotate(-90 12 {mid})",
            text_anchor="middle",
            font_size=11,
        ),
        shape("text", title, x=w / 2, y=16, text_anchor="middle", font_size=12, font_weight="bold"),
    ]
    if target is not None:
        body.append(
            shape(
                "text",
                f"green border: EAGAIN at or under the target {target:.2%}",
                x=left,
                y=h - 6,
                font_size=10,
                fill="#1a7f37",
            )
        )
    return Figure(w, h, body)


def lines(title: str, summaries: Sequence[dict[str, Any]]) -> Figure | None:
    """EAGAIN rate against sndbuf (categorical, sorted), one line per (budget, forced)."""
    sizes = sorted({s["knobs"].get("sndbuf") or 0 for s in summaries})
    series: dict[str, dict[int, float]] = {}
    for s in summaries:
        k = s["knobs"]
        name = f"budget {k.get('budget') or 'host'}" + (" forced" if k.get("force") else "")
        series.setdefault(name, {})[k.get("sndbuf") or 0] = s.get("eagain_rate") or 0.0
    if len(sizes) < 2:
        return None
    W, H, PAD = 460, 230, 56
    ymax = max((v for d in series.values() for v in d.values()), default=0.0) or 0.01

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD + (W - 20 - PAD) * i / (len(sizes) - 1), H - PAD - (H - PAD - 24) * v / ymax

    body: list[Shape] = []
    for f in (0.0, 0.5, 1.0):
        _, y = xy(0, ymax * f)
        body += [
            shape("line", x1=PAD, x2=W - 20, y1=f"{y:.1f}", y2=f"{y:.1f}", stroke="#eee"),
            shape("text", f"{ymax * f:.1%}", x=PAD - 4, y=f"{y + 3:.1f}", text_anchor="end", font_size=9),
        ]
    for i, size in enumerate(sizes):
        x, _ = xy(i, 0)
        body.append(shape("text", _size(size or None), x=f"{x:.1f}", y=H - PAD + 14, text_anchor="middle", font_size=9))
    for n, (name, points) in enumerate(sorted(series.items())):
        color = COLORS[n % len(COLORS)]
        dash = {"stroke_dasharray": "5 3"} if name.endswith("forced") else {}
        pts = [xy(i, points[s]) for i, s in enumerate(sizes) if s in points]
        body.append(
            shape(
                "polyline",
                fill="none",
                stroke=color,
                stroke_width=1.6,
                **dash,
                points=" ".join(f"{x:.1f},{y:.1f}" for x, y in pts),
            )
        )
        body += [shape("circle", cx=f"{x:.1f}", cy=f"{y:.1f}", r=2.5, fill=color) for x, y in pts]
        body.append(shape("text", name, x=W - 22, y=30 + 12 * n, text_anchor="end", font_size=10, fill=color))
    body += [
        shape("line", x1=PAD, y1=H - PAD, x2=W - 20, y2=H - PAD, stroke="#333"),
        shape("line", x1=PAD, y1=24, x2=PAD, y2=H - PAD, stroke="#333"),
        shape("text", "SO_SNDBUF requested", x=(W + PAD) / 2, y=H - 18, text_anchor="middle", font_size=10),
        shape(
            "text",
            "EAGAIN rate",
            x=12,
            y=H / 2,
            transform=f"rotate(-90 12 {H / 2})",
            text_anchor="middle",
            font_size=10,
        ),
        shape("text", title, x=W / 2, y=14, text_anchor="middle", font_size=11, font_weight="bold"),
    ]
    return Figure(W, H, body)


def _p99(us: float | None) -> str:
    return "-" if us is None else f"{us:.0f} us"


@dataclass(frozen=True)
class SweepSection:
    cells: int
    smallest_change: str | None
    interrupted: bool
    plots: list[Figure]
    rows: Sequence[tuple[str, ...]]  # cell, EAGAIN, ENOBUFS, pps, time_squeeze, sock_wfree p99: as text


def section(doc: Mapping[str, Any]) -> SweepSection | None:
    """The sweep section's data, or None when the document holds no sweep cells."""
    summaries = cells(doc)
    if not summaries:
        return None
    meta = doc.get("sweep") or {}
    target = meta.get("target")
    figs: list[Figure | None] = []
    for label, group in _groups(summaries).items():
        suffix = f" ({label})" if label else ""
        figs.append(heatmap(f"EAGAIN rate: sndbuf x netdev_budget{suffix}", group, target))
        figs.append(lines(f"EAGAIN rate against sndbuf, per budget{suffix}", group))
    rows = [
        (
            str(s.get("cell", "")),
            f"{(s.get('eagain_rate') or 0):.2%}",
            f"{(s.get('enobufs_rate') or 0):.2%}",
            f"{(s.get('pps') or 0):,.0f}",
            f"{(s.get('time_squeeze') or 0):.0f}",
            _p99(s.get("wfree_p99_us")),
        )
        for s in summaries
    ]
    smallest = str(meta["smallest_change"]) if meta.get("smallest_change") else None
    return SweepSection(
        len(summaries), smallest, bool(meta.get("interrupted")), [f for f in figs if f is not None], rows
    )


def render(doc: Mapping[str, Any]) -> str:
    """The sweep section of the report, or "" when the document holds no sweep cells."""
    sweep = section(doc)
    return templating.render("sweep.html", sweep=sweep) if sweep else ""

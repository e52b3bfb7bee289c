"""The upgrade view: tests x kernels, so a kernel change is visible at a glance.

With results from several kernels (a merged document, or one run through several
kernel lanes), one matrix per runner group (fanin.py: what made the results differ,
the kernel aside): per test and kernel the EAGAIN rate and the sock_wfree p99 (medians
over the samples), and a stacked bar of where sock_wfree ran (inline / softirq /
ksoftirqd / napi_thread; the bpf backend sees it, the timestamp estimate does not).  A
cell is marked where the gate (compare.py, the same rule and family) finds it worse
than the same test on the oldest kernel of the matrix.
"""

from __future__ import annotations

import html
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pytest_udpsend.results import compare, fanin, metrics

CONTEXTS = ("inline", "softirq", "ksoftirqd", "napi_thread")  # as measure/bpfprobe.py names them
CONTEXT_COLORS = {"inline": "#1f77b4", "softirq": "#ff7f0e", "ksoftirqd": "#d62728", "napi_thread": "#2ca02c"}
MATRIX_METRICS = ("eagain_rate", "wfree.p99_us")
BAR_W, BAR_H = 120, 12

Cells = dict[str, dict[str, list[Mapping[str, Any]]]]  # test -> kernel -> samples


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def release_order(release: str) -> tuple[int, ...]:
    """Sort key of a kernel release by its numeric prefix: 6.1.0-56 before 6.12.95."""
    prefix = re.match(r"[\d.]+", release)
    return tuple(int(x) for x in prefix.group(0).split(".") if x) if prefix else (1 << 30,)


def cells(units: Sequence[fanin.Unit]) -> Cells:
    """Samples per test (its kernel-lane suffix dropped) and kernel (the sample's own, else its run's)."""
    out: Cells = {}
    for u in units:
        for nodeid, entry in u.tests.items():
            for sample in entry.get("samples", []):
                kernel = str(sample.get("kernel") or u.environment.get("kernel") or "?")
                out.setdefault(compare.base_key(nodeid), {}).setdefault(kernel, []).append(sample)
    return out


def kernels_of(by_test: Cells) -> list[str]:
    return sorted({k for per in by_test.values() for k in per}, key=lambda r: (release_order(r), r))


def contexts(samples: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    total = dict.fromkeys(CONTEXTS, 0)
    for s in samples:
        for name, count in ((s.get("wfree") or {}).get("contexts") or {}).items():
            total[name] = total.get(name, 0) + int(count)
    return total


def stacked_bar(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return '<span class="nobar">where: not measured (bpf backend)</span>'
    x, body = 0.0, ""
    for name, count in counts.items():
        w = BAR_W * count / total
        if w > 0:
            body += (f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{BAR_H}" fill="{CONTEXT_COLORS.get(name, "#999")}">'
                     f"<title>{_esc(name)}: {count} ({count / total:.0%})</title></rect>")  # fmt: skip
            x += w
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{BAR_W}" height="{BAR_H}" role="img">{body}</svg>'


def _median(samples: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    vals = metrics.values(samples, metric)
    return statistics.median(vals) if vals else None


def verdicts(by_test: Cells, kernels: Sequence[str], settings: compare.Settings) -> dict[tuple[str, str], list[compare.Row]]:
    """The gate's rows of each (test, later kernel) against the test on the oldest kernel."""
    first = kernels[0]
    base = {t: per[first] for t, per in by_test.items() if first in per}
    settings = replace(settings, metrics=tuple(m for m in settings.names() if m in MATRIX_METRICS) or MATRIX_METRICS)
    family = compare.family_size(base, settings) * max(len(kernels) - 1, 1)  # every later kernel is compared
    out: dict[tuple[str, str], list[compare.Row]] = {}
    for test, per in by_test.items():
        for kernel in kernels[1:]:
            if kernel in per:
                out[(test, kernel)] = compare.compare_test(test, base.get(test), per[kernel], settings, family)
    return out


def _cell(samples: Sequence[Mapping[str, Any]] | None, rows: Sequence[compare.Row]) -> str:
    if not samples:
        return "<td class=empty>-</td>"
    eagain, p99 = _median(samples, "eagain_rate"), _median(samples, "wfree.p99_us")
    marks = {r.metric: r.verdict for r in rows if r.verdict not in ("ok", "not measured")}
    regressed = any(r.regressed for r in rows)

    def value(metric: str, text: str) -> str:
        mark = marks.get(metric)
        return f'<span class="v-{_esc(mark.replace(" ", "-"))}" title="{_esc(mark)}">{text}</span>' if mark else text

    lines = [
        value("eagain_rate", "EAGAIN " + ("-" if eagain is None else f"{eagain:.2%}")),
        value("wfree.p99_us", "wfree p99 " + ("-" if p99 is None else f"{p99:.4g} us")),
        stacked_bar(contexts(samples)),
        f"<small>{len(samples)} sample(s)</small>",
    ]
    return f'<td class="{"regressed" if regressed else "cell"}">' + "<br>".join(lines) + "</td>"


def matrix(units: Sequence[fanin.Unit], settings: compare.Settings, title: str) -> str:
    by_test = cells(units)
    kernels = kernels_of(by_test)
    if len(kernels) < 2:
        return ""
    rows = verdicts(by_test, kernels, settings)
    head = "".join(f"<th>{_esc(k)}{' (base)' if i == 0 else ''}</th>" for i, k in enumerate(kernels))
    body = "".join(
        f"<tr><th>{_esc(test)}</th>" + "".join(_cell(per.get(k), rows.get((test, k), [])) for k in kernels) + "</tr>"
        for test, per in sorted(by_test.items())
    )
    bad = sorted({f"{t} on {k}" for (t, k), rs in rows.items() if any(r.regressed for r in rs)})
    verdict = f"{len(bad)} regression(s): {', '.join(bad)}" if bad else "no regression against the oldest kernel"
    return (f'<h3>{_esc(title)}</h3><p class="{"failed" if bad else "passed"}">{_esc(verdict)}</p>'
            f'<table class="upgrade"><tr><th>test</th>{head}</tr>{body}</table>')  # fmt: skip


LEGEND = "".join(
    f'<span style="display:inline-block;width:10px;height:10px;background:{c}"></span> {n} ' for n, c in CONTEXT_COLORS.items()
)
CSS = (".upgrade td{vertical-align:top;min-width:130px}.upgrade .regressed{background:#fde0e0}"
       ".v-regression{color:#c22;font-weight:bold}.v-improved{color:#2a2}.v-too-few-samples{color:#a60}"
       ".upgrade .nobar{color:#888;font-size:.8em}")  # fmt: skip


def spans_kernels(units: Sequence[fanin.Unit], field: str) -> bool:
    """Whether some value of ``field`` was seen on two kernels: else it changed with the kernel (throw-away
    CI hostnames) and grouping by it would leave one kernel per matrix."""
    seen: dict[str, set[str]] = {}
    for u in units:
        seen.setdefault(u.value(field), set()).add(u.value("kernel"))
    return any(len(kernels) > 1 for kernels in seen.values())


def render(units: Sequence[fanin.Unit], given: Mapping[str, Any] | None = None) -> str:
    """The upgrade section: one matrix per runner group; "" unless the results span two or more kernels."""
    settings = compare.settings_for({}, given or {})
    by = [f for f in fanin.varying(units) if f != "kernel" and spans_kernels(units, f)]
    parts = [matrix(group, settings, fanin.describe(key)) for key, group in fanin.group(units, by).items()]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    floor = "noise floor for one command" if settings.one_command else "session noise floor"
    return (f"<style>{CSS}</style><h2>Upgrade view: tests x kernels</h2>"
            f"<p>Medians over each cell's samples; marked where the gate (alpha {settings.alpha:g}, Bonferroni over "
            f"each matrix's comparisons, tolerance {settings.tolerance:g} or the {floor}) finds the test "
            f"worse than on the oldest kernel. Where sock_wfree ran: {LEGEND}</p>" + "".join(parts))  # fmt: skip


def render_doc(doc: Mapping[str, Any]) -> str:
    """The upgrade section of one document (merged, or run through several kernels: then by the rule its
    one-command gate recorded)."""
    recorded: Mapping[str, Any] = next((run["gate"]["settings"] for run in doc.get("runs", []) if (run.get("gate") or {}).get("settings")), {})
    return render(fanin.units_of(doc, "this document"), recorded)

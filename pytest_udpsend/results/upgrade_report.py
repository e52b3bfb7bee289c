"""The upgrade view: tests x kernels, so a kernel change is visible at a glance.

With results from several kernels (a merged document, or one run through several
kernel lanes), one matrix per runner group (fanin.py: what made the results differ,
the kernel aside): per test and kernel the EAGAIN rate and the sock_wfree p99 (medians
over the samples), and a stacked bar of where sock_wfree ran (inline / softirq /
ksoftirqd / napi_thread; the bpf backend sees it, the timestamp estimate does not).  A
cell is marked where the gate (compare.py, the same rule and family) finds it worse
than the same test on the oldest kernel of the matrix.

This module builds the view's data; templates/upgrade.html lays it out, escaping every string.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_udpsend.results import compare, fanin, metrics, templating
from pytest_udpsend.results.templating import Figure, Shape, shape

CONTEXTS = ("inline", "softirq", "ksoftirqd", "napi_thread")  # as measure/bpfprobe.py names them
CONTEXT_COLORS = {"inline": "#1f77b4", "softirq": "#ff7f0e", "ksoftirqd": "#d62728", "napi_thread": "#2ca02c"}
MATRIX_METRICS = ("eagain_rate", "wfree.p99_us")
BAR_W, BAR_H = 120, 12

Cells = dict[str, dict[str, list[Mapping[str, Any]]]]  # test -> kernel -> samples


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


def stacked_bar(counts: Mapping[str, int]) -> Figure | None:
    """Where sock_wfree ran, as one bar (data: numbers, and context names in tooltips); None when not measured."""
    total = sum(counts.values())
    if not total:
        return None
    x, body = 0.0, list[Shape]()
    for name, count in counts.items():
        w = BAR_W * count / total
        if w > 0:
            body.append(
                shape(
                    "rect",
                    title=f"{name}: {count} ({count / total:.0%})",
                    x=f"{x:.1f}",
                    y=0,
                    width=f"{w:.1f}",
                    height=BAR_H,
                    fill=CONTEXT_COLORS.get(name, "#999"),
                )
            )
            x += w
    return Figure(BAR_W, BAR_H, body, view_box=False, figure=False)


def _median(samples: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    vals = metrics.values(samples, metric)
    return statistics.median(vals) if vals else None


def verdicts(
    by_test: Cells, kernels: Sequence[str], settings: compare.Settings
) -> dict[tuple[str, str], list[compare.Row]]:
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


@dataclass(frozen=True)
class Value:
    text: str
    mark: str | None = None  # the gate's verdict where it is not "ok" (a CSS class v-<verdict> and a tooltip)

    @property
    def css(self) -> str:
        return "v-" + (self.mark or "").replace(" ", "-")


@dataclass(frozen=True)
class Cell:
    css: str  # "empty" (no samples on this kernel), "regressed" or "cell"
    values: list[Value]
    bar: Figure | None  # where sock_wfree ran; None: not measured
    samples: int


@dataclass(frozen=True)
class Matrix:
    title: str
    verdict: str
    regressed: bool
    kernels: list[str]
    rows: list[tuple[str, list[Cell]]]


@dataclass(frozen=True)
class Upgrade:
    intro: str
    contexts: list[tuple[str, str]]  # legend: context name, colour
    matrices: list[Matrix]


def _cell(samples: Sequence[Mapping[str, Any]] | None, rows: Sequence[compare.Row]) -> Cell:
    if not samples:
        return Cell("empty", [], None, 0)
    eagain, p99 = _median(samples, "eagain_rate"), _median(samples, "wfree.p99_us")
    marks = {r.metric: r.verdict for r in rows if r.verdict not in ("ok", "not measured")}
    regressed = any(r.regressed for r in rows)
    values = [
        Value("EAGAIN " + ("-" if eagain is None else f"{eagain:.2%}"), marks.get("eagain_rate")),
        Value("wfree p99 " + ("-" if p99 is None else f"{p99:.4g} us"), marks.get("wfree.p99_us")),
    ]
    return Cell("regressed" if regressed else "cell", values, stacked_bar(contexts(samples)), len(samples))


def matrix(units: Sequence[fanin.Unit], settings: compare.Settings, title: str) -> Matrix | None:
    by_test = cells(units)
    kernels = kernels_of(by_test)
    if len(kernels) < 2:
        return None
    rows = verdicts(by_test, kernels, settings)
    body = [
        (test, [_cell(per.get(k), rows.get((test, k), [])) for k in kernels]) for test, per in sorted(by_test.items())
    ]
    bad = sorted({f"{t} on {k}" for (t, k), rs in rows.items() if any(r.regressed for r in rs)})
    verdict = f"{len(bad)} regression(s): {', '.join(bad)}" if bad else "no regression against the oldest kernel"
    return Matrix(title, verdict, bool(bad), kernels, body)


def spans_kernels(units: Sequence[fanin.Unit], field: str) -> bool:
    """Whether some value of ``field`` was seen on two kernels: else it changed with the kernel (throw-away
    CI hostnames) and grouping by it would leave one kernel per matrix."""
    seen: dict[str, set[str]] = {}
    for u in units:
        seen.setdefault(u.value(field), set()).add(u.value("kernel"))
    return any(len(kernels) > 1 for kernels in seen.values())


def section(units: Sequence[fanin.Unit], given: Mapping[str, Any] | None = None) -> Upgrade | None:
    """The upgrade section's data: one matrix per runner group; None unless the results span two or more kernels."""
    settings = compare.settings_for({}, given or {})
    by = [f for f in fanin.varying(units) if f != "kernel" and spans_kernels(units, f)]
    found = [matrix(group, settings, fanin.describe(key)) for key, group in fanin.group(units, by).items()]
    matrices = [m for m in found if m is not None]
    if not matrices:
        return None
    floor = "noise floor for one command" if settings.one_command else "session noise floor"
    intro = (
        f"Medians over each cell's samples; marked where the gate (alpha {settings.alpha:g}, Bonferroni over "
        f"each matrix's comparisons, tolerance {settings.tolerance:g} or the {floor}) finds the test "
        f"worse than on the oldest kernel. Where sock_wfree ran:"
    )
    return Upgrade(intro, list(CONTEXT_COLORS.items()), matrices)


def render(units: Sequence[fanin.Unit], given: Mapping[str, Any] | None = None) -> str:
    """The upgrade section as HTML; "" unless the results span two or more kernels."""
    upgrade = section(units, given)
    return templating.render("upgrade.html", upgrade=upgrade) if upgrade else ""


def doc_section(doc: Mapping[str, Any]) -> Upgrade | None:
    """The upgrade section of one document (merged, or run through several kernels: then by the rule its
    one-command gate recorded)."""
    recorded: Mapping[str, Any] = next(
        (run["gate"]["settings"] for run in doc.get("runs", []) if (run.get("gate") or {}).get("settings")), {}
    )
    return section(fanin.units_of(doc, "this document"), recorded)

"""``udpsend report`` over many result files: one page, one section per runner group.

The page lists the sources, shows the upgrade view (tests x kernels, upgrade_report.py)
over every file given, and per group (fanin.py: what made the results differ) the
baseline comparison, with the same rule and the recorded verdicts as a one-file report
(report.gate_rows), and the per-test plots of the pooled samples.

This module builds the page's data; templates/fanin.html lays it out, escaping every string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.results import compare, fanin, report, templating, upgrade_report


def sources_table(units: Sequence[fanin.Unit], side: str) -> list[tuple[str, ...]]:
    """One row per source: side, file, kernel, hostname, CPU, labels, number of tests."""
    return [
        (
            side,
            u.source,
            str(u.environment.get("kernel")),
            str(u.environment.get("hostname", "?")),
            str(u.environment.get("cpu_model")),
            ", ".join(f"{k}={v}" for k, v in sorted((u.environment.get("labels") or {}).items())),
            str(len(u.tests)),
        )
        for u in units
    ]


@dataclass(frozen=True)
class Comparison:
    text: str  # the table as ``udpsend compare`` prints it, or why the group was refused
    refused: bool = False


def comparison(p: fanin.Pair, given: Mapping[str, Any], size: int) -> Comparison:
    """The group's table, as ``udpsend compare`` prints it (same rule, family over all groups)."""
    if p.base is None or p.new is None:
        return Comparison(str(p.refusal), refused=True)
    settings = compare.settings_for(p.new, given)
    base_env, env = p.base.get("environment", {}), p.new.get("environment", {})
    mixed = compare.env_mismatch(base_env, env)
    if mixed and not settings.allow_mixed:
        return Comparison(compare.mixed_refusal(mixed, "--allow-mixed"), refused=True)
    rows = compare.compare_docs(p.base, p.new, settings, size)
    head = "the same rule as udpsend compare over all groups; " + compare.header(settings, size)
    return Comparison(compare.table(rows, base_env, env, head))


@dataclass(frozen=True)
class Group:
    title: str
    new: str  # the sources, named
    base: str | None  # None: the page has no baseline side
    comparison: Comparison | None
    no_plots: str | None  # why the group's results could not be pooled for plots
    tests: int
    sections: list[report.Section]


def group_section(
    key: fanin.Key, new: Sequence[fanin.Unit], base: Sequence[fanin.Unit], table: Comparison | None, index: int
) -> Group:
    names, base_names = fanin.source_names(new) or "-", (fanin.source_names(base) or "-") if base else None
    doc, why = fanin.pool(new) if new else (None, "no new results for this group")
    if doc is None:
        return Group(fanin.describe(key), names, base_names, table, str(why), 0, [])
    sysctls = doc.get("environment", {}).get("sysctls") or {}
    measured = [(nodeid, entry) for nodeid, entry in sorted(doc["tests"].items()) if entry.get("samples")]
    sections = [
        report.section(nodeid, entry, None, [], sysctls, f"group-{index}-test-{i}")
        for i, (nodeid, entry) in enumerate(measured)
    ]
    return Group(fanin.describe(key), names, base_names, table, None, len(doc["tests"]), sections)


def render_many(new: Sequence[fanin.Unit], base: Sequence[fanin.Unit], given: Mapping[str, Any]) -> str:
    if base:
        _, judged = fanin.pairs(base, new)
        size = fanin.family(judged, given)
        groups = [
            group_section(p.key, p.new_units, p.base_units, comparison(p, given, size), i) for i, p in enumerate(judged)
        ]
    else:
        groups = [group_section(k, us, [], None, i) for i, (k, us) in enumerate(fanin.groups_for_report(new).items())]
    kernels = sorted({str(u.environment.get("kernel")) for u in [*base, *new]})
    return templating.render(
        "fanin.html",
        page_title="pytest-udpsend fan-in report",
        results=len(new) + len(base),
        kernels=", ".join(kernels),
        sources=sources_table(base, "baseline") + sources_table(new, "new"),
        upgrade=upgrade_report.section([*base, *new], given),
        groups=groups,
    )


def write_report(results: Sequence[str], output: str, baseline: Sequence[str], given: Mapping[str, Any]) -> None:
    """``udpsend report RESULTS... [--baseline BASE...]``: one file and one baseline as before, else the fan-in page."""
    new_paths, base_paths = fanin.expand(results), fanin.expand(baseline)
    new, base = fanin.load_units(new_paths), fanin.load_units(base_paths)
    if len(new_paths) == len(new) == 1 and len(base_paths) == len(base) <= 1:
        report.write_report(new_paths[0], output, base_paths[0] if base_paths else None, given)  # as before
    else:
        atomic_write(output, render_many(new, base, given))

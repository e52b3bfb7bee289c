"""``udpsend report`` over many result files: one page, one section per runner group.

The page lists the sources, shows the upgrade view (tests x kernels, upgrade_report.py)
over every file given, and per group (fanin.py: what made the results differ) the
baseline comparison, with the same rule and the recorded verdicts as a one-file report
(report.gate_rows), and the per-test plots of the pooled samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.results import compare, fanin, report, upgrade_report

_esc = report._esc


def sources_table(units: Sequence[fanin.Unit], side: str) -> str:
    return "".join(
        f"<tr><td>{_esc(side)}</td><td>{_esc(u.source)}</td><td>{_esc(u.environment.get('kernel'))}</td>"
        f"<td>{_esc(u.environment.get('hostname', '?'))}</td><td>{_esc(u.environment.get('cpu_model'))}</td>"
        f"<td>{_esc(', '.join(f'{k}={v}' for k, v in sorted((u.environment.get('labels') or {}).items())))}</td>"
        f"<td>{len(u.tests)}</td></tr>"
        for u in units
    )


def comparison(p: fanin.Pair, given: Mapping[str, Any], size: int) -> str:
    """The group's table, as ``udpsend compare`` prints it (same rule, family over all groups)."""
    if p.base is None or p.new is None:
        return f"<pre>refused: {_esc(p.refusal)}</pre>"
    settings = compare.settings_for(p.new, given)
    base_env, env = p.base.get("environment", {}), p.new.get("environment", {})
    mixed = compare.env_mismatch(base_env, env)
    if mixed and not settings.allow_mixed:
        return f"<pre>refused: {_esc(compare.mixed_refusal(mixed, '--allow-mixed'))}</pre>"
    rows = compare.compare_docs(p.base, p.new, settings, size)
    head = "the same rule as udpsend compare over all groups; " + compare.header(settings, size)
    return f"<h3>Baseline comparison</h3><pre>{_esc(compare.table(rows, base_env, env, head))}</pre>"


def group_section(key: fanin.Key, new: Sequence[fanin.Unit], base: Sequence[fanin.Unit], table: str) -> str:
    title = f"<h2>Group: {_esc(fanin.describe(key))}</h2><p>new: {_esc(fanin.source_names(new) or '-')}"
    title += f"; baseline: {_esc(fanin.source_names(base) or '-')}</p>" if base else "</p>"
    doc, why = fanin.pool(new) if new else (None, "no new results for this group")
    if doc is None:
        return title + table + f"<p>No plots: {_esc(why)}</p>"
    sysctls = doc.get("environment", {}).get("sysctls") or {}
    sections = "".join(report._test_section(nodeid, entry, None, [], sysctls)
                       for nodeid, entry in sorted(doc["tests"].items()) if entry.get("samples"))  # fmt: skip
    return title + table + f"<details><summary>per-test plots ({len(doc['tests'])} test(s))</summary>{sections}</details>"


def render_many(new: Sequence[fanin.Unit], base: Sequence[fanin.Unit], given: Mapping[str, Any]) -> str:
    if base:
        _, judged = fanin.pairs(base, new)
        size = fanin.family(judged, given)
        parts = [group_section(p.key, p.new_units, p.base_units, comparison(p, given, size)) for p in judged]
    else:
        parts = [group_section(k, us, [], "") for k, us in fanin.groups_for_report(new).items()]
    kernels = sorted({str(u.environment.get("kernel")) for u in [*base, *new]})
    sources = sources_table(base, "baseline") + sources_table(new, "new")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>pytest-udpsend fan-in report</title>"
        f"<style>{report.CSS}</style></head><body><h1>pytest-udpsend report: {len(new) + len(base)} result(s), "
        f"{len(parts)} group(s), kernels {_esc(', '.join(kernels))}</h1>"
        "<h2>Sources</h2><table><tr><th>side</th><th>source</th><th>kernel</th><th>hostname</th><th>CPU</th>"
        f"<th>labels</th><th>tests</th></tr>{sources}</table>"
        + upgrade_report.render([*base, *new], given)
        + "".join(parts)
        + "</body></html>"
    )


def write_report(results: Sequence[str], output: str, baseline: Sequence[str], given: Mapping[str, Any]) -> None:
    """``udpsend report RESULTS... [--baseline BASE...]``: one file and one baseline as before, else the fan-in page."""
    new_paths, base_paths = fanin.expand(results), fanin.expand(baseline)
    new, base = fanin.load_units(new_paths), fanin.load_units(base_paths)
    if len(new_paths) == len(new) == 1 and len(base_paths) == len(base) <= 1:
        report.write_report(new_paths[0], output, base_paths[0] if base_paths else None, given)  # as before
    else:
        atomic_write(output, render_many(new, base, given))

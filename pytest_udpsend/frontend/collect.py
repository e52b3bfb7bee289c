"""Gathering each test's samples into the session (also across xdist) for JSON and reports."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_udpsend.frontend.kernel_gate import Kernels
from pytest_udpsend.frontend.keys import COMPARE_KEY, RESULTS_KEY
from pytest_udpsend.frontend.session import UdpsendSession
from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.lane.vm import write_guest_report
from pytest_udpsend.results import compare, store

COMPARE_PROPERTY = "udpsend_compare"


def attach(item: pytest.Item, report: pytest.TestReport) -> None:
    """On the worker: put the test's samples into the call report (xdist ships user_properties)."""
    if report.when != "call":
        return
    results = item.stash.get(RESULTS_KEY, [])
    if results:
        report.user_properties.append((store.PROPERTY, [r.to_dict() for r in results]))
    rows = item.stash.get(COMPARE_KEY, None)
    if rows:
        report.user_properties.append((COMPARE_PROPERTY, rows))


def gather(session: UdpsendSession, report: pytest.TestReport) -> None:
    """On the controller (or the only process): keep what a report carries."""
    for name, value in report.user_properties:
        if name == store.PROPERTY:
            session.tests[report.nodeid] = {"outcome": report.outcome, "samples": value}
        elif name == COMPARE_PROPERTY:
            session.comparison += [compare.Row(**row) for row in value]  # type: ignore[attr-defined]


class Collector:
    """Registered as a plugin: sees every report, including those xdist workers send."""

    def __init__(self, session: UdpsendSession) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        gather(self.session, report)
        write_guest_report(report)  # only inside a kernel-lane guest

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from pytest_udpsend.frontend.reporting import lane_summary

        if line := lane_summary(self.session):
            terminalreporter.write_line(line)
        rows = self.session.comparison
        if not rows:
            return
        terminalreporter.section("udpsend baseline comparison")
        base_env = (self.session.baseline or {}).get("environment")
        head = compare.header(self.session.gate, self.session.gate_family)
        terminalreporter.write_line(compare.table(rows, base_env, {"kernel": self.session.kernel}, head))
        bad = {r.test for r in rows if r.regressed}
        terminalreporter.write_line(f"{len(bad)} of {len({r.test for r in rows})} compared test(s) regressed")
        if shift := compare.common_shift(rows):
            terminalreporter.write_line(f"note: {shift}")


def finish(session: UdpsendSession, is_worker: bool) -> dict[str, Any] | None:
    """Write --udpsend-json (controller only); return the document."""
    if is_worker:
        return None
    # the runner, not a lane guest, is what fan-in groups by
    runner = {"hostname": os.uname().nodename, "labels": dict(session.options.labels)}
    if isinstance(session.lane, Kernels):  # several kernels: one run each, as udpsend merge writes them
        doc = session.lane.document(session.tests, runner)
    else:
        lane_env = session.lane.guest_environment if session.lane is not None else None
        env = lane_env or store.environment(session.backend_choice()[0])
        doc = store.document({**env, **runner}, session.tests)
    if session.baseline is not None:  # the verdicts the gate gave, with its settings, for the report
        doc["gate"] = compare.gate_record(session.gate, session.gate_family, session.baseline, session.comparison)
    if session.options.json_path:
        store.write(session.options.json_path, doc)
    if session.options.html_path:
        from pytest_udpsend.results.report import render

        baseline = session.baseline
        if doc.get("runs"):  # the fan-in page: the upgrade view across the kernels
            from pytest_udpsend.results import fanin, fanin_report

            base = fanin.units_of(baseline, session.options.baseline_path or "baseline") if baseline else []
            html = fanin_report.render_many(fanin.units_of(doc, "this run"), base, {})
        else:
            html = render(doc, baseline)
        atomic_write(session.options.html_path, html)
    return doc

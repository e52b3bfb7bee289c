"""Gathering each test's samples into the session (also across xdist) for JSON and reports.

--udpsend-json / --udpsend-html are checked when the session starts (a path that cannot be
written is a usage error before any test runs; a missing folder is made on writing) and
written only if a test measured: a --collect-only run (not checked), or one whose tests
measured nothing, leaves the files as they were.  With --udpsend-baseline, a session in
which tests of ours measured but nothing was compared fails.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_udpsend.frontend.kernel_gate import Kernels
from pytest_udpsend.frontend.keys import COMPARE_KEY, RESULTS_KEY
from pytest_udpsend.frontend.session import UdpsendSession
from pytest_udpsend.host.outfile import OutputError, atomic_write, check_target
from pytest_udpsend.results import compare, store

COMPARE_PROPERTY = "udpsend_compare"
INTERLEAVE_PROPERTY = "udpsend_interleave"  # frontend/interleave.py puts it on the call report


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
            session.tests.setdefault(report.nodeid, {}).update({"outcome": report.outcome, "samples": value})
        elif name == INTERLEAVE_PROPERTY:  # the rounds of both arms and the paired verdicts
            session.tests.setdefault(report.nodeid, {"samples": []}).update(
                {"outcome": report.outcome, "interleave": value}
            )
        elif name == COMPARE_PROPERTY:
            session.comparison += [compare.Row(**row) for row in value]  # type: ignore[attr-defined]


class Collector:
    """Registered as a plugin: sees every report, including those xdist workers send."""

    def __init__(self, session: UdpsendSession) -> None:
        self.session = session
        self.refusal: str | None = None  # nothing was compared with the baseline

    def outputs(self) -> list[tuple[str, str]]:
        opts = self.session.options
        return [
            (flag, path)
            for flag, path in (("--udpsend-json", opts.json_path), ("--udpsend-html", opts.html_path))
            if path
        ]

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if session.config.getoption("collectonly"):
            return  # a --collect-only run writes nothing, so a path it would not write cannot stop it
        for flag, path in self.outputs():  # before any test runs, not as a traceback at the end
            try:
                check_target(path, flag)
            except OutputError as exc:
                raise pytest.UsageError(str(exc)) from None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        gather(self.session, report)  # a lane's guest sends its reports back itself (frontend/guest.py)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """With --udpsend-baseline: tests of ours measured, but not one comparison was made: never a pass."""
        # Only what measured (samples gathered here, from a worker or a lane) or was judged counts: a -k run of
        # tests that are not ours, or one whose measuring tests all skipped, has nothing the gate is about.
        ours = self.session.tests or self.session.comparison
        if self.session.baseline is None or not ours or hasattr(session.config, "workerinput"):
            return
        self.refusal = compare.nothing_compared(self.session.comparison)
        if self.refusal and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        from pytest_udpsend.frontend.reporting import lane_summary

        if line := lane_summary(self.session):
            terminalreporter.write_line(line)
        if (
            (outputs := self.outputs())
            and not self.session.tests
            and not hasattr(terminalreporter.config, "workerinput")
        ):
            flags, paths = " and ".join(f for f, _ in outputs), ", ".join(p for _, p in outputs)
            terminalreporter.write_line(
                f"udpsend: {flags} not written: no test measured anything, so nothing replaced {paths}"
            )
        rows = self.session.comparison
        if rows:
            terminalreporter.section("udpsend baseline comparison")
            base_env = (self.session.baseline or {}).get("environment")
            head = compare.header(self.session.gate, self.session.gate_family)
            terminalreporter.write_line(compare.table(rows, base_env, {"kernel": self.session.kernel}, head))
            bad = {r.test for r in rows if r.regressed}
            terminalreporter.write_line(f"{len(bad)} of {len({r.test for r in rows})} compared test(s) regressed")
            for line in compare.not_compared([*rows, *self.not_run(rows)]):
                terminalreporter.write_line(line)
            if shift := compare.common_shift(rows):
                terminalreporter.write_line(f"note: {shift}")
        if self.refusal:
            terminalreporter.write_line(f"udpsend baseline: {self.refusal}", red=True)

    def not_run(self, rows: list[compare.Row]) -> list[compare.Row]:
        """The baseline's tests this session did not run (not selected): listed as not compared."""
        ran = {r.test: True for r in rows}
        return [
            compare.Row(test, "-", None, None, None, None, "missing in new run")
            for test in sorted(self.session.baseline_samples)
            if compare.find(test, ran) is None
        ]


def finish(session: UdpsendSession, is_worker: bool) -> dict[str, Any] | None:
    """Write --udpsend-json and --udpsend-html (controller only) if a test measured; return the document."""
    if is_worker or not session.tests:
        return None  # nothing measured: an empty document would replace the last results (the summary says so)
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
    try:
        write(session, doc)
    except OutputError as exc:  # checked at session start; here only if the path changed since
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    return doc


def write(session: UdpsendSession, doc: dict[str, Any]) -> None:
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

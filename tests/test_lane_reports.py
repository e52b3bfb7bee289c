"""The lane ships its reports through pytest's report serialization hooks (issue 29), as xdist does.

The guest side writes each phase with ``pytest_report_to_serializable``; the host rebuilds it with
``pytest_report_from_serializable``.  A failure's traceback and crash line, captured sections, skips
and xfail come back as pytest made them.  No kernel boots: the reports are pytester's, sent through the
same two functions the lane uses, and ``--udpsend-kernel host`` runs the whole path in a subprocess.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from pytest_udpsend.frontend import guest, kernel_lane
from pytest_udpsend.lane import wire

GUEST_TESTS = """
import pytest

def test_fails():
    print("hello from the guest")
    x = 1
    assert x == 2

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False

@pytest.mark.xfail(reason="fixed since")
def test_xpasses():
    pass

def test_skips():
    pytest.skip("not on this kernel")

def test_passes(record_property):
    record_property("udpsend_note", {"kept": [1, 2]})
"""


def shipped(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[tuple[pytest.TestReport, pytest.TestReport]]]:
    """Each phase pytester reported, beside the report the host rebuilds after the lane's round trip."""
    pytester.makepyfile(test_guest_side=GUEST_TESTS)
    reports = [
        r
        for r in pytester.inline_run("-p", "no:cacheprovider").getreports("pytest_runtest_logreport")
        if isinstance(r, pytest.TestReport)
    ]
    path = pytester.path / "reports.jsonl"
    monkeypatch.setenv(wire.LANE_REPORT_ENV, str(path))
    for report in reports:
        guest.write_guest_report(report, request.config)
    back, problem = wire.read_guest_reports(path)
    assert problem == ""
    out: dict[str, list[tuple[pytest.TestReport, pytest.TestReport]]] = {}
    for report in reports:
        phase = next(g for g in back[report.nodeid] if g.when == report.when)
        assert phase.report is not None  # the whole report travelled, not only its text
        name = report.nodeid.rpartition("::")[2]
        out.setdefault(name, []).append((report, kernel_lane.host_report(request.node, f"{report.nodeid}@6.1", phase)))
    return out


def phase(
    pairs: list[tuple[pytest.TestReport, pytest.TestReport]], when: str
) -> tuple[pytest.TestReport, pytest.TestReport]:
    return next((a, b) for a, b in pairs if a.when == when)


def test_a_failure_keeps_its_traceback_crash_line_and_captured_output(pytester, request, monkeypatch):
    sent, got = phase(shipped(pytester, request, monkeypatch)["test_fails"], "call")
    assert got.nodeid.endswith("::test_fails@6.1") and got.failed and got.when == "call"
    assert got.longrepr.reprcrash.message == sent.longrepr.reprcrash.message == "assert 1 == 2"
    assert str(got.longrepr) == str(sent.longrepr) and "    x = 1\n>       assert x == 2" in str(got.longrepr)
    assert [e.lines for e in got.longrepr.reprtraceback.reprentries] == [
        e.lines for e in sent.longrepr.reprtraceback.reprentries
    ]
    assert (
        got.capstdout == "hello from the guest\n" and ("Captured stdout call", "hello from the guest\n") in got.sections
    )


def test_xfail_xpass_skip_and_user_properties_survive(pytester, request, monkeypatch):
    reports = shipped(pytester, request, monkeypatch)
    _, xfailed = phase(reports["test_xfails"], "call")
    assert xfailed.skipped and xfailed.wasxfail == "known bug"
    _, xpassed = phase(reports["test_xpasses"], "call")
    assert xpassed.passed and xpassed.wasxfail == "fixed since"
    sent, skipped = phase(reports["test_skips"], "call")
    assert (
        skipped.skipped and skipped.longrepr == sent.longrepr and skipped.longrepr[2] == "Skipped: not on this kernel"
    )
    _, passed = phase(reports["test_passes"], "call")
    assert passed.passed and passed.user_properties == [("udpsend_note", {"kept": [1, 2]})]


def test_a_phase_the_host_failed_carries_the_hosts_text(pytester, request, monkeypatch):
    """A kernel gate fails a passed phase (and ends an xpass as a failure): its text wins."""
    pytester.makepyfile(test_guest_side=GUEST_TESTS)
    reports = [
        r
        for r in pytester.inline_run("-p", "no:cacheprovider", "-k", "xpasses").getreports("pytest_runtest_logreport")
        if isinstance(r, pytest.TestReport) and r.when == "call"
    ]
    monkeypatch.setenv(wire.LANE_REPORT_ENV, str(pytester.path / "reports.jsonl"))
    guest.write_guest_report(reports[0], request.config)
    (g,) = [g for gs in wire.read_guest_reports(pytester.path / "reports.jsonl")[0].values() for g in gs]
    got = kernel_lane.host_report(
        request.node, "x@6.1", replace(g, outcome="failed", longrepr="udpsend kernel gate: regression")
    )
    assert got.failed and got.longrepr == "udpsend kernel gate: regression" and not hasattr(got, "wasxfail")


def test_a_line_whose_report_is_not_its_phase_is_not_a_report(tmp_path):
    line = {
        "nodeid": "t.py::a",
        "when": "call",
        "outcome": "passed",
        "longrepr": "",
        "duration": 0.1,
        "user_properties": [],
    }
    serialized = {**line, "$report_type": "TestReport"}
    path = tmp_path / "reports.jsonl"
    for bad in ({**serialized, "outcome": "failed"}, {**serialized, "$report_type": "CollectReport"}, [1]):
        path.write_text(json.dumps({**line, "report": bad}) + "\n")
        assert wire.read_guest_reports(path) == ({}, f"line 1 of {path} is cut short or not a test report")
    path.write_text(json.dumps({**line, "when": "later"}) + "\n")
    assert wire.read_guest_reports(path)[1]


def test_the_host_lane_shows_what_the_lane_run_reported(pytester):
    """The whole path, without a VM: ``--udpsend-kernel host`` runs the tests in a pytest subprocess."""
    pytester.makepyfile(test_guest_side=GUEST_TESTS)
    result = pytester.runpytest_subprocess("--udpsend-kernel", "host", "-p", "no:cacheprovider", "-rA", timeout=120)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out, out[-3000:]
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, xpassed=1)
    assert re.search(r"^FAILED test_guest_side.py::test_fails@\S+ - assert 1 == 2$", out, re.M), out[-3000:]
    assert re.search(r"^XFAIL test_guest_side.py::test_xfails@\S+ - known bug$", out, re.M), out[-3000:]
    assert re.search(r"^SKIPPED \[1\] test_guest_side.py:\d+: not on this kernel$", out, re.M), out[-3000:]
    assert re.search(r"^-+ Captured stdout call -+\nhello from the guest$", out, re.M), out[-3000:]
    assert ">       assert x == 2\nE       assert 1 == 2" in out, out[-3000:]

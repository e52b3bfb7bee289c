"""What the terminal shows: the header line and one-sentence errors."""

from __future__ import annotations

import os

import pytest

from pytest_udpsend.errors import UdpsendError
from pytest_udpsend.frontend.session import UdpsendSession
from pytest_udpsend.host.undo import UndoFailed


def header(session: UdpsendSession) -> list[str]:
    """Shown when --udpsend-* options are given, or once collection finds a test of ours:
    choosing the backend imports bcc, which a suite that does not use the plugin must not pay for."""
    lines = [f"udpsend: kernel {os.uname().release}, {os.cpu_count()} CPUs"]
    if session.lane is None:
        backend, why = session.backend_choice()
        lines.append(f"udpsend: sock_wfree timing backend: {backend} ({why})")
    if session.privilege_problem:
        lines.append(f"udpsend: namespace tests will be skipped: {session.privilege_problem}")
    if session.lane is not None:
        lines += [f"udpsend: kernel lane: {text}" for text in session.lane.describe()]
    return lines


def uses_udpsend(items: list[pytest.Item]) -> bool:
    """Does any collected test use a fixture of ours (each function fixture needs _udpsend_ctx)?"""
    return any({"_udpsend_ctx", "wfree_probe"} & set(getattr(item, "fixturenames", ())) for item in items)


def lane_summary(session: UdpsendSession) -> str | None:
    notes = session.lane.notes() if session.lane is not None else []
    return "\n".join(f"udpsend kernel lane ({suffix}): {note}" for suffix, note in notes if note) or None


def shorten_own_errors(report: pytest.TestReport, call: pytest.CallInfo[None]) -> None:
    """Our errors already say cause and fix: show that sentence, not a traceback."""
    if call.excinfo is not None and isinstance(call.excinfo.value, (UdpsendError, UndoFailed)):
        exc = call.excinfo.value
        report.longrepr = f"{type(exc).__name__}: {exc}"

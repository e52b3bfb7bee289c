"""What the terminal shows: the header line and one-sentence errors."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_udpsend.errors import UdpsendError
from pytest_udpsend.frontend.session import UdpsendSession
from pytest_udpsend.host.undo import UndoFailed
from pytest_udpsend.results.calibration import sample_labels, shorten


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


def _where(wfree: dict[str, Any]) -> str:
    """Where sock_wfree ran (exact backends) or its p99 (the estimate), or why neither."""
    contexts = {k: v for k, v in (wfree.get("contexts") or {}).items() if v}
    total = sum(contexts.values())
    if total:
        return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(contexts.items(), key=lambda kv: -kv[1]))
    if wfree.get("p99_us") is not None:
        return f"p99 {wfree['p99_us']:.0f} us ({wfree.get('backend', '?')})"
    return "not measured"


def measured_rows(tests: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """One row per sample: test (and what set the sample apart), EAGAIN rate, pps, where
    sock_wfree ran, the first diagnosis finding."""
    rows = []
    for nodeid, entry in tests.items():
        samples = entry.get("samples") or []
        labels = sample_labels(samples)
        if "interleave" in entry:  # one row per arm: its median sample by EAGAIN rate
            samples, labels = _arm_medians(entry["interleave"])
        for s, label in zip(samples, labels):
            name = nodeid.rpartition("::")[2] + (f" [{label}]" if label else "")
            finding = next((d.get("finding", "") for d in s.get("diagnosis") or []), "")
            rate = s.get("eagain_rate")
            rows.append(
                (
                    name,
                    f"{rate:.2%}" if isinstance(rate, (int, float)) else "-",
                    f"{s.get('pps') or 0:,.0f}",
                    _where(s.get("wfree") or {}),
                    finding,
                )
            )
    return rows


def _arm_medians(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    samples, labels = [], []
    for arm in ("baseline", "candidate"):
        found = sorted(
            (s for r in record.get("rounds", []) for s in r.get(arm, [])), key=lambda s: s.get("eagain_rate") or 0
        )
        if found:
            samples.append(found[len(found) // 2])
            labels.append(f"{arm}, median of {len(found)}")
    return samples, labels


def interleave_summary(tests: dict[str, dict[str, Any]]) -> list[str]:
    """Candidates that regressed, controls that moved (the host was noisy), and what each test's N resolves."""
    regressed: list[str] = []
    moved: list[str] = []
    lines: list[str] = []
    for nodeid, entry in tests.items():
        record = entry.get("interleave")
        if not record:
            continue
        kind = "control" if record.get("control") else "candidate"
        for row in record.get("paired", []):
            factor, finds = row.get("estimate"), row.get("resolvable")
            text = (
                f"{nodeid} [{kind}] {row['metric']}: x{factor:.3g} worse"
                if factor
                else f"{nodeid} [{kind}] {row['metric']}: -"
            ) + (
                f", N={row['pairs']} finds x{finds:.3g} at 80 %"
                if finds
                else f", N={row['pairs']} too few to find any change"
            )
            lines.append(f"{text}: {row['verdict']}")
            if row["verdict"] == "regressed":
                (moved if record.get("control") else regressed).append(f"{nodeid} {row['metric']}")
    head = [
        f"candidates that regressed: {', '.join(regressed) or 'none'}",
        f"controls that moved (the host was noisy; in-run A/A): {', '.join(moved) or 'none'}",
    ]
    return head + lines if lines else []


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "~"


def measured_table(tests: dict[str, dict[str, Any]], width: int) -> list[str]:
    """The end-of-run table: what each measuring test saw, so a run says more than dots.
    The first diagnosis finding goes on its own line, as wide as the terminal."""
    rows = measured_rows(tests)
    if not rows:
        return []
    rest = 8 + 12 + 6
    where = min(max(len(r[3]) for r in rows), 30)
    name = max(min(max(len(r[0]) for r in rows), width - rest - where), 20)
    lines = [f"{'test':<{name}}  {'EAGAIN':>7}  {'pps':>10}  sock_wfree"]
    for test, rate, pps, wfree, finding in rows:
        lines.append(f"{shorten(test, name):<{name}}  {rate:>7}  {pps:>10}  {_cut(wfree, where)}")
        if finding:
            lines.append(_cut(f"    {finding}", width))
    return lines

"""What travels between the lane's two sides, through the exchange directory: no pytest here.

The host writes its selection (a JSON list of node ids) and reads the guest's collection the same
way; the guest appends one line per phase of each test (``frontend/guest.py`` writes them,
``frontend/kernel_lane.py`` reads them back into this session).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

LANE_REPORT_ENV = "UDPSEND_LANE_REPORT"  # where the guest appends its reports (reports.jsonl)
LANE_SELECTION_ENV = "UDPSEND_LANE_SELECTION"  # the host's selection (selection.json)


def read_node_ids(path: Path) -> tuple[list[str], str]:
    """A JSON list of node ids (the host's selection, the guest's collection): (the ids, "") or ([], why not)."""
    try:
        ids = json.loads(path.read_text())
    except FileNotFoundError:
        return [], "names no file"
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot be read ({exc})"
    except (ValueError, RecursionError) as exc:
        return [], f"is not JSON ({exc})"
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return [], "is not a JSON list of node ids"
    return ids, ""


Outcome = Literal["passed", "failed", "skipped"]
When = Literal["setup", "call", "teardown"]


@dataclass
class GuestReport:
    """One phase of a test as the lane's run reported it (or as the host made it up for a test that never came back).

    ``longrepr`` is its text (a skip's reason), which the kernel gates read and extend; ``report`` is the
    whole report as pytest serializes it (``pytest_report_to_serializable``, what xdist ships: traceback,
    captured sections, xfail), None for a phase the host made up."""

    nodeid: str
    when: When
    outcome: Outcome
    longrepr: str
    duration: float
    user_properties: list[Any]
    report: dict[str, Any] | None = None


def read_guest_reports(path: Path) -> tuple[dict[str, list[GuestReport]], str]:
    """The phases the guest reported, by node id, and what was wrong with the file ("" if nothing).

    A guest killed while appending leaves its last line cut short: every whole line is still read."""
    by_test: dict[str, list[GuestReport]] = {}
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return by_test, ""
    bad = 0
    for n, line in enumerate(text.splitlines(), 1):
        report = _guest_report(line)
        if report is None:
            bad = bad or n
            continue
        by_test.setdefault(report.nodeid, []).append(report)
    problem = f"line {bad} of {path} is cut short or not a test report" if bad else ""
    return by_test, problem


def _guest_report(line: str) -> GuestReport | None:
    """One line of reports.jsonl, or None if it is not a whole report as write_guest_report writes it."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    fields: dict[str, type | tuple[type, ...]] = {
        "nodeid": str,
        "when": str,
        "outcome": str,
        "longrepr": str,
        "duration": (int, float),
        "user_properties": list,
    }
    if not isinstance(data, dict) or set(data) - {"report"} != set(fields):
        return None
    if not all(isinstance(data[k], t) for k, t in fields.items()):
        return None
    if data["when"] not in get_args(When) or data["outcome"] not in get_args(Outcome):
        return None
    if not all(isinstance(p, list) and len(p) == 2 for p in data["user_properties"]):  # (name, value), as read back
        return None
    report = data.get("report")
    if report is not None and not _serialized_phase(report, data):
        return None
    return GuestReport(**data)


def _serialized_phase(report: object, line: dict[str, Any]) -> bool:
    """Is ``report`` a TestReport as pytest_report_to_serializable writes it, of the phase its line names?"""
    return (
        isinstance(report, dict)
        and report.get("$report_type") == "TestReport"
        and all(report.get(k) == line[k] for k in ("nodeid", "when", "outcome"))
    )

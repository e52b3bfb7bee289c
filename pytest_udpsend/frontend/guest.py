"""The kernel lane's guest side: a pytest plugin in the run inside the VM (or the host lane's subprocess).

Like xdist's worker side (remote.py) it needs nothing of the host side: it keeps exactly the items the
host collected and appends each phase's report, serialized by pytest's own hook, for the host to rebuild.
What travels is ``lane/wire.py``'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_udpsend.lane.wire import LANE_REPORT_ENV, LANE_SELECTION_ENV, read_node_ids


class GuestSelection:
    """In the guest: keep exactly the items the host collected, and send each phase's report back (a pytest
    plugin object).  The guest side, like xdist's worker side (remote.py): it uses nothing of the Lane."""

    def __init__(self, path: Path) -> None:
        ids, why = read_node_ids(path)
        if why:
            raise pytest.UsageError(
                f"{LANE_SELECTION_ENV}={path}: {why}; the kernel lane sets it for its own pytest run "
                "only: unset it to run pytest here"
            )
        self.wanted = set(ids)
        self.collected = path.with_name("collected.json")
        self.config: pytest.Config | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.config = session.config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.config is not None:
            write_guest_report(report, self.config)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self.collected.write_text(json.dumps([i.nodeid for i in items]))
        keep = [i for i in items if i.nodeid in self.wanted]
        dropped = [i for i in items if i.nodeid not in self.wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


def guest_selection() -> GuestSelection | None:
    """The selection plugin when this session is a kernel-lane guest, else None."""
    path = os.environ.get(LANE_SELECTION_ENV)
    return GuestSelection(Path(path)) if path else None


def longrepr_text(report: pytest.TestReport) -> str:
    """A report's failure as text; a skip's reason."""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple | list):
        return str(report.longrepr[2])
    return str(report.longrepr) if report.longrepr else ""


def write_guest_report(report: pytest.TestReport, config: pytest.Config) -> None:
    """In the guest: append one phase's report for the outer session, serialized by pytest's own hook
    (``pytest_report_to_serializable``, as xdist's workers send theirs), beside the fields the host reads."""
    path = os.environ.get(LANE_REPORT_ENV)
    if not path:
        return
    data = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": longrepr_text(report),
        "duration": report.duration,
        "user_properties": [list(p) for p in report.user_properties],
    }
    serialized = config.hook.pytest_report_to_serializable(config=config, report=report)
    try:
        line = json.dumps({**data, "report": serialized})
    except (TypeError, ValueError):  # a plugin put something JSON cannot hold on the report: its text still goes
        line = json.dumps(data)
    with open(path, "a") as fh:
        fh.write(line + "\n")

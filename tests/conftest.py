"""Shared helpers for the project's own tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


GLOBAL_KNOBS = [
    "net.core.netdev_budget",
    "net.core.netdev_budget_usecs",
    "net.core.netdev_max_backlog",
    "net.core.wmem_max",
    "net.core.wmem_default",
    "net.core.netdev_tstamp_prequeue",
]


def host_snapshot() -> dict[str, object]:
    """What must be the same before and after any run: namespaces, global knobs, host RPS masks."""
    knobs = {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in GLOBAL_KNOBS}
    rps = {str(p): p.read_text().strip() for p in Path("/sys/class/net").glob("*/queues/rx-*/rps_cpus")}
    ours = {n for n in netns_names() if n.startswith("udps-")}
    cgroups = sorted(p.name for p in Path("/sys/fs/cgroup").glob("**/pytest-udpsend-*"))
    return {"netns": ours, "knobs": knobs, "rps": rps, "cgroups": cgroups}


@pytest.fixture
def host_unchanged():
    """Asserts that the host looks the same after the test as before it."""
    before = host_snapshot()
    yield before
    assert host_snapshot() == before

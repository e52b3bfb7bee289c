"""Shared helpers for the project's own tests."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import threading
from pathlib import Path
from types import ModuleType

import pytest

from pytest_udpsend.host.state import FileLock, tag_alive

# The Ctrl-C tests need Python's SIGINT handler.  A script that starts pytest as `cmd &` without job
# control (a CI wrapper's `nohup ... &`) leaves SIGINT ignored, Python then installs no handler, and
# those tests would fail for how the run was started (seen 2026-12-04).  Children of a process that
# handles SIGINT get it back at its default when they exec, so `udpsend sweep` under test does too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


def _owner_dead(name: str, prefix: str) -> bool:
    tag = name[len(prefix) :].split("-", 1)[0]
    return not tag_alive(tag)


def host_snapshot() -> dict[str, object]:
    """What must be the same before and after a run: global knobs, host RPS masks, and no
    namespace or hog cgroup of a dead owner (other xdist workers' live ones are theirs).

    Knobs are read under the host lock: every worker changes them only while holding it
    and restores them before letting go, so what is seen here is the resting state.
    """
    with FileLock("host"):
        knobs = {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in GLOBAL_KNOBS}
    rps = {str(p): p.read_text().strip() for p in Path("/sys/class/net").glob("*/queues/rx-*/rps_cpus")}
    orphans = {n for n in netns_names() if n.startswith("udps-") and _owner_dead(n, "udps-")}
    cgroups = {
        p.name for p in Path("/sys/fs/cgroup").glob("**/pytest-udpsend-*") if _owner_dead(p.name, "pytest-udpsend-")
    }
    return {"orphan_netns": orphans, "knobs": knobs, "rps": rps, "orphan_cgroups": cgroups}


@pytest.fixture
def host_unchanged():
    """Asserts that the host looks the same after the test as before it."""
    before = host_snapshot()
    yield before
    assert host_snapshot() == before


def ci_script(name: str) -> ModuleType:
    """A script of ci/ imported as a module (benchmarks are not a package): its pure parts are tested."""
    path = Path(__file__).resolve().parent.parent / "ci" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

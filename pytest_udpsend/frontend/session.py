"""The per-session state of the plugin and the per-test context every fixture shares."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_udpsend.errors import ConfigError, PrivilegeError
from pytest_udpsend.host import netns, privileges
from pytest_udpsend.host.journal import Journal, restore_orphans
from pytest_udpsend.host.state import FileLock
from pytest_udpsend.host.sysctl import SysctlHost, Sysctls
from pytest_udpsend.host.topology import Endpoint, SubnetAllocator, Topology
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import load, probes
from pytest_udpsend.measure.probes import WfreeProbe

log = logging.getLogger("pytest_udpsend")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every undo stack runs (main thread, default handler only)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)


def worker_index() -> int:
    """xdist worker number (gw3 -> 3), 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = "".join(ch for ch in worker if ch.isdigit())
    return int(digits or 0)


@dataclass
class SessionOptions:
    backend: str = "auto"
    repeat: int = 1
    json_path: str | None = None
    baseline_path: str | None = None
    html_path: str | None = None
    pcap_dir: str | None = None
    require_privileges: bool = False


class UdpsendSession:
    """Created once per pytest process; fixtures and hooks reach it through config.stash."""

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.journal = Journal()
        self.sysctl_host = SysctlHost(self.journal)
        self.subnets = SubnetAllocator(worker_index())
        # One lock for global sysctl changes and measurements: both disturb every other
        # measurement on the host, and a single lock cannot deadlock against itself.
        self.host_lock = FileLock("host")
        self.namespaces: dict[str, netns.Namespace] = {}
        self.active: list[TestContext] = []
        self.privilege_problem = privileges.missing()
        self.reaped: list[str] = []
        self.tests: dict[str, dict[str, Any]] = {}  # nodeid -> outcome and samples
        self.comparison: list[Any] = []  # compare.Row of every test compared with the baseline
        self.baseline: dict[str, Any] | None = None  # the --udpsend-baseline document
        self.baseline_samples: dict[str, list[dict[str, Any]]] = {}  # its samples by comparison key
        self.tolerance = 0.25
        self.alpha = 0.05
        self.compare_metrics: tuple[str, ...] | None = None
        self.kernel = os.uname().release
        self._probe: WfreeProbe | None = None
        self.lane: Any = None  # vm.KernelLane under --udpsend-kernel

    def probe(self) -> WfreeProbe:
        """The session's sock_wfree probe, chosen and built on first use (PrivilegeError if bpf cannot work)."""
        if self._probe is None:
            self._probe = probes.select(self.options.backend)
        return self._probe

    def backend_choice(self) -> tuple[str, str]:
        """(backend, why), as the session's probe is or would be chosen."""
        if self._probe is not None:
            return self._probe.backend, self._probe.reason
        try:
            return probes.choose(self.options.backend)
        except PrivilegeError as exc:
            return "unavailable", str(exc)

    def close(self) -> None:
        self.abandon_active()
        if self._probe is not None:
            self._probe.close()

    def reap(self) -> None:
        """Undo what dead sessions left: journaled sysctls, namespaces, hog cgroups."""
        if self.privilege_problem:
            return
        with self.host_lock:
            self.reaped += restore_orphans(lambda name, value: self.sysctl_host.write(name, value))
        self.reaped += netns.reap_orphans()
        self.reaped += load.reap_cgroups()
        if self.reaped:
            log.warning("pytest-udpsend restored leftovers of dead sessions: %s", ", ".join(self.reaped))

    def abandon_active(self) -> None:
        """Safety net at exit (Ctrl-C, internal error): flush contexts whose teardown never ran."""
        while self.active:
            self.active.pop().close()


@dataclass
class TestContext:
    """Shared by every fixture of one test: one undo stack, run LIFO at teardown."""

    session: UdpsendSession
    undo: UndoStack = field(default_factory=UndoStack)
    marked_sysctls: dict[str, str] = field(default_factory=dict)
    topology: Topology | None = None
    _sysctls: Sysctls | None = None

    @property
    def sysctls(self) -> Sysctls:
        """The test's Sysctls; made on first use, applying the marker's global knobs."""
        if self._sysctls is None:
            self._sysctls = Sysctls(self.session.sysctl_host, self.undo, self.resolve, self.exclusive)
            for name, value in self.marked_sysctls.items():
                if self.session.sysctl_host.scope(name) == "global":
                    self._sysctls.set(name, value)
        return self._sysctls

    def per_netns_marked(self) -> dict[str, str]:
        host = self.session.sysctl_host
        return {k: v for k, v in self.marked_sysctls.items() if host.scope(k) == "netns"}

    def apply_marked_to(self, topo: Topology) -> None:
        """The marker's knobs: globals once, per-namespace ones in both namespaces of the pair."""
        if not self.marked_sysctls:
            return
        sysctls = self.sysctls
        for name, value in self.per_netns_marked().items():
            for end in (topo.sender, topo.receiver):
                sysctls.set(name, value, netns=end)

    def exclusive(self) -> None:
        """Take the host lock until this test's teardown (re-entrant)."""
        lock = self.session.host_lock
        if not lock.held:
            lock.acquire()
            self.undo.push("release host lock", lock.release)

    def resolve(self, target: object) -> netns.Namespace:
        """A Namespace, an endpoint, or the name of a namespace this session made."""
        if isinstance(target, netns.Namespace):
            return target
        if isinstance(target, Endpoint):
            return target.ns
        if isinstance(target, str) and target in self.session.namespaces:
            return self.session.namespaces[target]
        raise ConfigError(
            f"netns={target!r} is not a namespace this session made: pass a Namespace from the netns "
            "fixture, veth.sender / veth.receiver, or one of their names."
        )

    def close(self) -> None:
        if self in self.session.active:
            self.session.active.remove(self)
        self.undo.flush()


@contextlib.contextmanager
def standalone(options: SessionOptions | None = None, marked_sysctls: dict[str, str] | None = None) -> Iterator[TestContext]:
    """A session and one test context outside pytest (the udpsend command, benchmarks).

    Checks privileges, reaps what dead sessions left, and undoes everything on exit.
    """
    session = UdpsendSession(options or SessionOptions())
    if session.privilege_problem:
        raise PrivilegeError(session.privilege_problem)
    session.reap()
    ctx = TestContext(session, marked_sysctls=marked_sysctls or {})
    try:
        yield ctx
    finally:
        try:
            ctx.close()
        finally:
            session.close()

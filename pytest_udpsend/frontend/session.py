"""The per-session state of the plugin and the per-test context every fixture shares."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_udpsend.errors import ConfigError, PrivilegeError
from pytest_udpsend.host import netns, nicport, nics, privileges
from pytest_udpsend.host.journal import Journal, orphans, restore_orphans
from pytest_udpsend.host.state import FileLock, in_initial_pid_namespace
from pytest_udpsend.host.sysctl import SysctlHost, Sysctls
from pytest_udpsend.host.topology import Endpoint, SubnetAllocator, Topology
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import load, probes
from pytest_udpsend.measure.probes import WfreeProbe
from pytest_udpsend.results import compare

if TYPE_CHECKING:  # the lanes are pytest's side: the command's sessions never have one
    from pytest_udpsend.frontend.kernel_lane import SessionLane

log = logging.getLogger("pytest_udpsend")


class UdpsendWarning(UserWarning):
    """Something the plugin could not put right on the host; the message names it."""


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
    lock_timeout: float = 3600.0  # s a measurement waits for the host lock
    labels: dict[str, str] = field(default_factory=dict)  # --udpsend-label, stored in the environment
    nic_pair: str | None = None  # --udpsend-nic-pair A,B
    interleave: int = 0  # --udpsend-interleave N: rounds of baseline and candidate per test (0: off)
    candidate_sysctls: dict[str, str] = field(default_factory=dict)  # --udpsend-candidate-sysctl


class UdpsendSession:
    """Created once per pytest process; fixtures and hooks reach it through config.stash.

    Creating it touches nothing on the host: the journal, the state directory, reaping
    and the SIGTERM handler wait for the first test that uses a fixture of ours
    (``admit``), so suites that do not use the plugin run as if it were not installed.
    """

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.subnets = SubnetAllocator(worker_index())
        # One lock for global sysctl changes and measurements: both disturb every other
        # measurement on the host, and a single lock cannot deadlock against itself.
        self.host_lock = FileLock("host", options.lock_timeout)
        self.namespaces: dict[str, netns.Namespace] = {}
        self.active: list[TestContext] = []
        self.privilege_problem = privileges.missing()
        self.reaped: list[str] = []
        self.tests: dict[str, dict[str, Any]] = {}  # nodeid -> outcome and samples
        self.comparison: list[compare.Row] = []  # every test compared with the baseline
        self.baseline: dict[str, Any] | None = None  # the --udpsend-baseline document
        self.baseline_samples: dict[str, list[Mapping[str, Any]]] = {}  # its samples by comparison key
        self.baseline_floors: dict[str, dict[str, dict[str, float]]] = {}  # per test and metric, from several sessions
        self.gate = compare.Settings()  # the gate's knobs: the ini's, set by configure.configure_baseline
        self.gate_family = 1  # comparisons in the run: baseline tests x metrics (Bonferroni)
        self.kernel = os.uname().release
        self._probe: WfreeProbe | None = None
        self._sysctl_host: SysctlHost | None = None
        self._port_journal: Journal | None = None
        self._started = False
        self.lane: SessionLane | None = None  # under --udpsend-kernel: one lane, or several kernels

    @property
    def invited(self) -> bool:
        """Was an --udpsend-* option given?  Then the header may say more before any test runs."""
        return self.options != SessionOptions() or self.lane is not None

    @property
    def sysctl_host(self) -> SysctlHost:
        if self._sysctl_host is None:
            self._sysctl_host = SysctlHost(Journal())
        return self._sysctl_host

    @property
    def journal(self) -> Journal:
        return self.sysctl_host.journal

    @property
    def port_journal(self) -> Journal:
        """Where borrowed NIC ports are journaled (restored after their dead owner's namespaces went)."""
        if self._port_journal is None:
            self._port_journal = Journal(nicport.journal_dir())
        return self._port_journal

    def nic_pair(self, link: str) -> tuple[str, str]:
        """The ports a NIC link runs on here; PrivilegeError saying how to get them if there are none."""
        pairs = nics.available(self.options.nic_pair)
        if link not in pairs:
            raise PrivilegeError(nics.missing_reason(link, self.options.nic_pair))
        return pairs[link]

    def admit(self, marked_sysctls: dict[str, str]) -> str | None:
        """A test of ours is about to run: why it cannot run here (one sentence), or None.

        The first admitted test starts the session's host-wide parts (once per process,
        controller or xdist worker alike): the SIGTERM handler and reaping.
        """
        if self.privilege_problem:
            return self.privilege_problem
        if not self._started:
            self._started = True
            interrupt_on_sigterm()
            self.reap()
        try:
            for name in marked_sysctls:
                self.sysctl_host.scope(name)  # outside the host's network namespace a global knob cannot be had
        except PrivilegeError as exc:
            return str(exc)
        return None

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
        """Undo what dead sessions left: journaled sysctls, namespaces, hog cgroups.

        Safe from any process at any time: it touches only dead owners' leftovers,
        global knobs under the host lock (taken only if there is a journal to restore),
        the rest under a short lock of its own so that two processes never race on it.
        """
        if self.privilege_problem:
            return
        problems: list[str] = []
        if orphans():
            with self.host_lock:
                done = restore_orphans(lambda name, value: self.sysctl_host.write(name, value))
            self.reaped += done.knobs
            problems += done.warnings
        # Namespaces and cgroups are named by pid: in a pid namespace of its own (a container
        # sharing /run with the host) a live host session's pid looks dead, so leave them.
        if in_initial_pid_namespace():
            with FileLock("reap"):
                self.reaped += netns.reap_orphans()
                self.reaped += load.reap_cgroups()
                if nicport.orphans_exist():  # after the namespaces went: their ports come back to this one
                    done = nicport.restore_orphans()
                    self.reaped += done.knobs
                    problems += done.warnings
        if self.reaped:
            problems.insert(0, f"pytest-udpsend restored leftovers of dead sessions: {', '.join(self.reaped)}")
        for problem in problems:
            log.warning("%s", problem)
            warnings.warn(UdpsendWarning(problem), stacklevel=2)

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
def standalone(
    options: SessionOptions | None = None, marked_sysctls: dict[str, str] | None = None
) -> Iterator[TestContext]:
    """A session and one test context outside pytest (the udpsend command, benchmarks).

    Checks privileges, reaps what dead sessions left, and undoes everything on exit.
    """
    session = UdpsendSession(options or SessionOptions())
    problem = session.admit(marked_sysctls or {})
    if problem:
        raise PrivilegeError(problem)
    ctx = TestContext(session, marked_sysctls=marked_sysctls or {})
    try:
        yield ctx
    finally:
        try:
            ctx.close()
        finally:
            session.close()

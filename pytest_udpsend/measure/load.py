"""CPU hogs pinned to chosen CPUs: the "busy receiving CPU" of the EAGAIN story.

Each hog is a child process that pins itself, optionally renices or changes its
scheduling policy, writes one byte to say it spins, and then spins.  The parent
waits for every byte (a readiness handshake with a deadline, never a sleep), and
the kernel kills the hogs if this process dies (PR_SET_PDEATHSIG), so a SIGKILLed
session does not leave them burning CPU.  With ``cpu_max`` the hogs run in a
cgroup of their own whose CPU quota caps them (v2 ``cpu.max``, or v1 CFS quota).

A schedule (``on_s``, ``off_s``) cycles the hogs during the run: running for ``on_s``, then
stopped with SIGSTOP for ``off_s``, then SIGCONT, repeated (``Cycle``).  SIGSTOP rather than a
cgroup freeze: the hogs are single-threaded children of ours, so one kill(2) each stops them
at once (the kernel kicks a running one off its CPU with an IPI), with no cgroup needed (a
container without a writable cgroup v2 works too), while ``cgroup.freeze`` is asynchronous
(done only when ``cgroup.events`` says ``frozen 1``) and needs the hogs in a v2 cgroup of ours.
The instants the hogs were stopped (the releases) are recorded on CLOCK_MONOTONIC.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pytest_udpsend.errors import ConfigError, PrivilegeError
from pytest_udpsend.host import cgroup
from pytest_udpsend.host import cpus as cpus_mod
from pytest_udpsend.measure.params import number

_POLICIES = {"other": 0, "batch": 3, "idle": 5}
# The hog sets itself up (no preexec_fn: forking a threaded process and running Python
# before exec can deadlock): die with the parent, check the parent did not die first,
# pin, change policy and nice, then say it is ready and spin.
_HOG = """
import ctypes, os, sys
cpu, nice, policy, parent = (int(a) for a in sys.argv[1:5])
ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != parent:
    sys.exit(1)
os.sched_setaffinity(0, {cpu})
if policy:
    os.sched_setscheduler(0, policy, os.sched_param(0))
if nice:
    os.nice(nice)
os.write(1, b"r")
while True:
    pass
"""


@dataclass(frozen=True)
class PressureSpec:
    """Validated ``cpu_pressure`` arguments."""

    cpus: tuple[int, ...] = (1,)
    workers: int = 2
    nice: int = 0
    policy: str = "other"
    cpu_max: float | None = None  # fraction of one CPU per hog group, e.g. 0.5
    on_s: float | None = None  # schedule: hogs running this long, then stopped for off_s, repeated
    off_s: float | None = None
    resume_fraction: float = 0.9  # recovery: the share of the unpressured send rate that counts as back
    window_ms: int = 10  # recovery: the window the send rate is read over (a multiple of the 10 ms series)

    def describe(self) -> str:
        extra = "" if self.policy == "other" else f" policy={self.policy}"
        extra += f" nice={self.nice}" if self.nice else ""
        extra += f" cpu.max={self.cpu_max:.2f}" if self.cpu_max is not None else ""
        extra += (
            f", cycled: on {self.on_s:g} s, off {self.off_s:g} s"
            if self.on_s is not None and self.off_s is not None
            else ""
        )
        return f"{self.workers} hog(s) on CPU {list(self.cpus)}{extra}"  # the resolved CPUs, however given


SERIES_BUCKET_MS = 10  # the send series' bucket (measure/_engine.c, measure/external.py): windows are multiples


def make_spec(
    cpus: object = (1,),
    workers: object = 2,
    nice: object = 0,
    policy: object = "other",
    cpu_max: object = None,
    on_s: object = None,
    off_s: object = None,
    resume_fraction: object = 0.9,
    window_ms: object = 10,
) -> PressureSpec:
    # CPU numbers, a taskset-style list string ("1-3,5") or a sysfs hex mask string ("2" = CPU 1)
    cpu_list = cpus_mod.check_online(cpus_mod.parse(cpus, "cpus"), cpus, "cpus")
    workers, nice = (
        int(number("workers", workers, 1, 64, integer=True)),
        int(number("nice", nice, -20, 19, integer=True)),
    )
    if policy not in _POLICIES:
        raise ConfigError(f"policy={policy!r}: accepted: {', '.join(_POLICIES)}")
    if cpu_max is not None:
        cpu_max = float(
            number("cpu_max", cpu_max, 0.01, len(cpu_list), unit="a fraction of CPU time, up to the number of CPUs")
        )
    on, off, fraction, window = _schedule(on_s, off_s, resume_fraction, window_ms)
    return PressureSpec(tuple(cpu_list), workers, nice, str(policy), cpu_max, on, off, fraction, window)


def _schedule(
    on_s: object, off_s: object, fraction: object, window_ms: object
) -> tuple[float | None, float | None, float, int]:
    """on_s/off_s go together; the off period must hold two windows in its second half (the reference rate)."""
    if (on_s is None) != (off_s is None):
        raise ConfigError(
            f"on_s={on_s!r}, off_s={off_s!r}: a schedule needs both (hogs on for on_s, then stopped for "
            "off_s, repeated), or neither for hogs running the whole run"
        )
    frac = float(
        number("resume_fraction", fraction, 0.01, 1.0, unit="the share of the unpressured send rate, e.g. 0.9")
    )
    window = int(number("window_ms", window_ms, SERIES_BUCKET_MS, 1000, integer=True))
    if window % SERIES_BUCKET_MS:
        raise ConfigError(
            f"window_ms={window_ms!r}: a multiple of the send series' {SERIES_BUCKET_MS} ms bucket, e.g. 10, 20, 50"
        )
    if on_s is None or off_s is None:
        if (frac, window) != (0.9, 10):
            raise ConfigError(
                "resume_fraction and window_ms set how recovery after a release is read: give the schedule "
                "too (on_s= and off_s=)"
            )
        return None, None, frac, window
    on = float(number("on_s", on_s, 0.01, 3600, unit="seconds"))
    off = float(
        number(
            "off_s",
            off_s,
            4 * window / 1000,
            3600,
            unit=f"seconds, at least 4 windows of window_ms={window}: the unpressured rate is read in its second half",
        )
    )
    return on, off, frac, window


class Cgroup:
    """A cgroup of ours capping its members' CPU time (cgroup v2 cpu.max, else v1 CFS quota)."""

    PERIOD_US = 100_000

    def __init__(self, fraction: float) -> None:
        mounts = cgroup.controller_roots()
        quota = int(fraction * self.PERIOD_US)
        if "cgroup2" in mounts:
            self.path = cgroup.make(mounts["cgroup2"], "cpu")
            (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        elif "cpu" in mounts:
            self.path = cgroup.make(mounts["cpu"], "cpu")
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            raise PrivilegeError(
                "cpu_max needs a cgroup hierarchy with the cpu controller (cgroup v2 with +cpu, or v1 cpu): "
                "mount one or drop cpu_max."
            )

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        cgroup.remove(self.path)


def reap_cgroups() -> list[str]:
    """Remove cgroups of ours (the hogs', the sender programs') left by dead owners."""
    return cgroup.reap()


def _wait_ready(procs: list[subprocess.Popen[bytes]], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    waiting = {p.stdout.fileno(): p for p in procs if p.stdout}
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(waiting)} CPU hog(s) did not report ready within {deadline_s:.0f} s")
        ready, _, _ = select.select(list(waiting), [], [], left)
        for fd in ready:
            proc = waiting.pop(fd)
            if os.read(fd, 1) != b"r":
                raise RuntimeError(f"CPU hog {proc.pid} exited before it started spinning (code {proc.poll()})")


@contextlib.contextmanager
def pressure(spec: PressureSpec) -> Iterator[list[int]]:
    """Run ``spec.workers`` hogs on each CPU of ``spec.cpus``; yield their pids; always stop them."""
    procs: list[subprocess.Popen[bytes]] = []
    group = Cgroup(spec.cpu_max) if spec.cpu_max is not None else None
    try:
        for cpu in spec.cpus:
            for _ in range(spec.workers):
                argv = [str(cpu), str(spec.nice), str(_POLICIES[spec.policy]), str(os.getpid())]
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-S", "-c", _HOG, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
                    )
                )
                if group:
                    group.add(procs[-1].pid)
        _wait_ready(procs, 10.0)
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        if group:
            group.remove()


class Cycle:
    """The schedule: the hogs run for ``on_s``, are stopped (SIGSTOP) for ``off_s``, continued (SIGCONT), repeated.

    A thread of ours keeps the schedule on absolute deadlines from ``start()`` (no drift), at SCHED_FIFO
    where allowed so a busy CPU does not delay a toggle; ``releases`` and ``presses`` are the
    CLOCK_MONOTONIC nanoseconds after the last hog was signalled.  ``stop()`` continues the hogs.
    """

    def __init__(self, spec: PressureSpec, pids: Sequence[int]) -> None:
        self.spec, self.pids = spec, list(pids)
        self.on_ns, self.off_ns = int((spec.on_s or 0) * 1e9), int((spec.off_s or 0) * 1e9)
        self.start_ns = 0
        self.releases: list[int] = []  # hogs stopped
        self.presses: list[int] = []  # hogs continued (after a release)
        self.late_max_ns = 0  # the latest a toggle came after its deadline
        self.realtime = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udpsend-pressure-cycle", daemon=True)

    def start(self, lead_ns: int = 0) -> None:
        """Start the schedule as if it had started ``lead_ns`` ago (the first on period that much shorter)."""
        self.start_ns = time.monotonic_ns() - lead_ns
        self._thread.start()

    def _signal(self, sig: signal.Signals, deadline: int, into: list[int]) -> bool:
        """Wait for ``deadline`` and send ``sig`` to every hog; False if stopped first."""
        if self._done.wait(max(0, deadline - time.monotonic_ns()) / 1e9):
            return False
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):  # a hog that died is the pressure's to report, not ours
                os.kill(pid, sig)
        into.append(time.monotonic_ns())
        self.late_max_ns = max(self.late_max_ns, into[-1] - deadline)
        return True

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # root: the toggles are not delayed by the busy CPUs' tasks
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            self.realtime = True
        period = self.on_ns + self.off_ns
        k = 0
        while self._signal(signal.SIGSTOP, self.start_ns + k * period + self.on_ns, self.releases):
            k += 1
            if not self._signal(signal.SIGCONT, self.start_ns + k * period, self.presses):
                break

    def stop(self) -> None:
        """End the schedule and leave the hogs running (a stopped hog would also die of SIGKILL)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def cycled(spec: PressureSpec, pids: Sequence[int]) -> Iterator[Cycle | None]:
    """The spec's schedule over the hogs ``pids`` (None without one); the caller calls ``start()``."""
    if spec.on_s is None or spec.off_s is None:
        yield None
        return
    cycle = Cycle(spec, pids)
    try:
        yield cycle
    finally:
        cycle.stop()

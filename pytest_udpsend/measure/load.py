"""CPU hogs pinned to chosen CPUs: the "busy receiving CPU" of the EAGAIN story.

Each hog is a child process that pins itself, optionally renices or changes its
scheduling policy, writes one byte to say it spins, and then spins.  The parent
waits for every byte (a readiness handshake with a deadline, never a sleep), and
the kernel kills the hogs if this process dies (PR_SET_PDEATHSIG), so a SIGKILLed
session does not leave them burning CPU.  With ``cpu_max`` the hogs run in a
cgroup of their own whose CPU quota caps them (v2 ``cpu.max``, or v1 CFS quota).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
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

    def describe(self) -> str:
        extra = "" if self.policy == "other" else f" policy={self.policy}"
        extra += f" nice={self.nice}" if self.nice else ""
        extra += f" cpu.max={self.cpu_max:.2f}" if self.cpu_max is not None else ""
        return f"{self.workers} hog(s) on CPU {list(self.cpus)}{extra}"  # the resolved CPUs, however given


def make_spec(cpus: object = (1,), workers: object = 2, nice: object = 0, policy: object = "other",
              cpu_max: object = None) -> PressureSpec:  # fmt: skip
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
    return PressureSpec(tuple(cpu_list), workers, nice, str(policy), cpu_max)


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

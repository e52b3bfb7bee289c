"""Cgroups of ours: processes that must be stopped together, however they try to leave.

A cgroup holds every descendant of what is put in it, also one that left its process
group (setsid) or its parent (a double fork), which a process group does not.
Emptying one SIGKILLs them all with ``cgroup.kill`` (v2, Linux 5.14), which also
catches a process forked meanwhile; without it every pid in ``cgroup.procs`` is
SIGKILLed, again and again, until none is left (frozen first where ``cgroup.freeze``
exists, so that nothing forks between the reading and the killing).  Empty means
``cgroup.events`` says ``populated 0``, not a sleep and a hope.  Names are
``pytest-udpsend-<owner tag>.<pid namespace>-<kind>-<n>`` (``host/state.py``): the next
session reaps a dead owner's groups and never a live one's, nor those of a session in
another pid namespace (a container sharing the cgroupfs), whose pids mean nothing here.

The kill loop here (kill_until_gone) is also the one that empties a network namespace
(``host/netns.py``): a pid is signalled through a pidfd, and only once the pidfd is open
is it checked to still be a member, so a pid reused by an unrelated process is never hit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pytest_udpsend.errors import UdpsendError
from pytest_udpsend.host.state import describe_pid, scoped_owner_tag, tag_dead_here

PREFIX = "pytest-udpsend-"
KILL_DEADLINE_S = 5.0  # for SIGKILLed processes to be gone: only one stuck in the kernel takes longer
_counter = itertools.count(1)


class CgroupBusy(UdpsendError):
    """A process of a cgroup of ours outlived SIGKILL."""


def _mounts() -> list[tuple[str, Path, list[str]]]:
    """(type, mount point, options) of every cgroup hierarchy."""
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, where, fstype, opts = line.split()[:4]
        if fstype in ("cgroup", "cgroup2"):
            found.append((fstype, Path(where), opts.split(",")))
    return found


def controller_roots() -> dict[str, Path]:
    """Mount points with the cpu controller: 'cgroup2' (v2 with +cpu), 'cpu' (a v1 hierarchy)."""
    found: dict[str, Path] = {}
    for fstype, where, opts in _mounts():
        if fstype == "cgroup2":
            controllers = where / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                found.setdefault("cgroup2", where)
        elif "cpu" in opts:
            found.setdefault("cpu", where)
    return found


def v2_root() -> Path | None:
    """A cgroup v2 hierarchy this process may make groups in (no controller needed), or None:
    no v2 at all (a v1-only host) or a read-only one (a container)."""
    for fstype, where, opts in _mounts():
        if fstype == "cgroup2" and "ro" not in opts and os.access(where / "cgroup.procs", os.W_OK):
            return where
    return None


def _own_v2_cgroup(root: Path) -> Path | None:
    """This process's cgroup in the v2 hierarchy mounted at ``root`` (``0::/PATH`` in /proc/self/cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::/"):
            path = root / line[len("0::/") :]
            return path if path.is_dir() else None
    return None


def _may_hold_a_child(group: Path) -> bool:
    """A child of ``group`` can hold processes: ``group`` is writable, a plain domain, and enables no
    controller for its children (cgroup v2's "no internal processes" rule: a group with
    processes in it, such as this runner's, cannot also hand controllers down)."""
    try:
        return (
            os.access(group, os.W_OK)
            and os.access(group / "cgroup.procs", os.W_OK)
            and (group / "cgroup.type").read_text().strip() == "domain"
            and not (group / "cgroup.subtree_control").read_text().split()
        )
    except OSError:
        return False


def program_parent() -> Path | None:
    """Where the program's cgroup goes: below this process's own v2 cgroup, so that limits set on
    the runner (a systemd scope's memory or pids cap) hold for the program too; the hierarchy's
    root where that cannot be; None without a writable v2 hierarchy."""
    root = v2_root()
    if root is None:
        return None
    own = _own_v2_cgroup(root)
    return own if own is not None and _may_hold_a_child(own) else root


def make(root: Path, kind: str) -> Path:
    """A new, empty cgroup of this process under ``root``."""
    path = root / f"{PREFIX}{scoped_owner_tag()}-{kind}-{next(_counter)}"
    path.mkdir()
    return path


def owner_of(name: str) -> str:
    """The owner tag in a cgroup name of ours (``<pid>.<starttime>.<pidns>``, which holds no '-')."""
    return name[len(PREFIX) :].split("-", 1)[0]


def _tree(path: Path) -> list[Path]:
    """``path`` and every cgroup below it, deepest first (the order rmdir needs)."""
    below = [Path(top) / d for top, dirs, _ in os.walk(path) for d in dirs]
    return sorted(below, key=lambda p: len(p.parts), reverse=True) + [path]


def pids(path: Path) -> list[int]:
    """Every process in ``path`` and below it."""
    found: list[int] = []
    for group in _tree(path):
        with contextlib.suppress(FileNotFoundError):
            found += [int(p) for p in (group / "cgroup.procs").read_text().split()]
    return found


def populated(path: Path) -> bool:
    """True while a live process is in ``path`` or below it (v2 says so itself; v1 is asked per group)."""
    try:
        events = (path / "cgroup.events").read_text().split()
    except FileNotFoundError:
        return bool(pids(path))
    return events[events.index("populated") + 1] != "0"


def _has_kill(path: Path) -> bool:
    return (path / "cgroup.kill").exists()


def _has_freeze(path: Path) -> bool:
    return (path / "cgroup.freeze").exists()


def _holds(path: Path, pid: int) -> bool:
    """``pid`` is in ``path`` or below it now (read afresh: not the list it was found in)."""
    for group in _tree(path):
        with contextlib.suppress(FileNotFoundError):
            if str(pid) in (group / "cgroup.procs").read_text().split():
                return True
    return False


def sigkill(pid: int, is_member: Callable[[int], bool]) -> None:
    """SIGKILL ``pid`` if it is still a member: checked once a pidfd holds the process, so that a
    pid that ended and was reused by another process meanwhile is not signalled."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfds (before Linux 5.3): the check narrows the race, cannot close it
        with contextlib.suppress(ProcessLookupError):
            if is_member(pid):
                os.kill(pid, signal.SIGKILL)
        return
    try:
        if is_member(pid):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def kill_until_gone(
    members: Callable[[], list[int]],
    is_member: Callable[[int], bool],
    deadline_s: float | None = None,
    settled: Callable[[], bool] = lambda: True,
) -> list[int]:
    """SIGKILL ``members()`` again and again until none is left and ``settled()``, or the deadline
    (KILL_DEADLINE_S) passes; the pids still there then.  Again: one may have forked meanwhile."""
    deadline = time.monotonic() + (KILL_DEADLINE_S if deadline_s is None else deadline_s)
    while True:
        left = members()
        if not left and settled():
            return []
        if time.monotonic() > deadline:
            return left
        for pid in left:
            sigkill(pid, is_member)
        time.sleep(0.002)


def outlived(where: str, left: list[int], deadline_s: float | None, then: str) -> str:
    """The sentence for processes that outlived kill_until_gone()."""
    seconds = KILL_DEADLINE_S if deadline_s is None else deadline_s
    return (
        f"{where} still holds {', '.join(describe_pid(p) for p in left)} {seconds:g} s after SIGKILL "
        f"(stuck in the kernel: see /proc/{left[0]}/stack), {then}"
    )


def empty(path: Path, deadline_s: float | None = None) -> list[int]:
    """SIGKILL everything in ``path`` and wait until it is gone; the pids still there at the deadline."""
    if not path.exists():
        return []
    if _has_kill(path):
        (path / "cgroup.kill").write_text("1")
    elif _has_freeze(path):
        (path / "cgroup.freeze").write_text("1")  # a frozen process still dies of SIGKILL, and forks no more
    # after cgroup.kill too: a kernel that has the file but missed a process
    return kill_until_gone(lambda: pids(path), lambda pid: _holds(path, pid), deadline_s, lambda: not populated(path))


def stop(path: Path, deadline_s: float | None = None) -> None:
    """Empty ``path`` (see empty()); CgroupBusy names a process that outlived SIGKILL."""
    left = empty(path, deadline_s)
    if left:
        raise CgroupBusy(
            outlived(f"cgroup {path}", left, deadline_s, "and the next session removes the cgroup once it is gone")
        )


def remove(path: Path, deadline_s: float | None = None) -> None:
    """Empty ``path`` (see stop()) and remove it with every cgroup below it."""
    stop(path, deadline_s)
    deadline = time.monotonic() + (KILL_DEADLINE_S if deadline_s is None else deadline_s)
    for group in _tree(path):
        while group.exists():
            try:
                group.rmdir()
            except FileNotFoundError:
                break
            except OSError:  # EBUSY for a moment while the last exits are accounted
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)


def ours() -> list[Path]:
    """Every cgroup of ours (any owner) in the hierarchies we make them in: at a root (the hogs')
    or below a runner's own cgroup (the programs', program_parent())."""
    found = []
    for root in sorted({where for fstype, where, opts in _mounts() if fstype == "cgroup2" or "cpu" in opts}):
        for top, dirs, _ in os.walk(root):
            for name in [d for d in dirs if d.startswith(PREFIX)]:
                dirs.remove(name)  # what is below one of ours goes with it
                found.append(Path(top) / name)
    return found


def reap() -> list[str]:
    """Remove the cgroups whose owner was a session of this pid namespace that is dead (killing what
    still runs in them); their names.

    A name without a pid namespace (made by an older version, maybe in a container) is left
    alone: its pid may be anybody's here.  A group whose process outlives SIGKILL is left for a
    later session."""
    reaped = []
    for path in ours():
        if tag_dead_here(owner_of(path.name)):
            with contextlib.suppress(CgroupBusy):
                remove(path)
                reaped.append(path.name)
    return reaped

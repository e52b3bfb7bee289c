"""Network namespaces made by this process: create, enter (per thread), remove, reap.

Linux network namespaces are per *thread*, so instead of forking (what
``pyroute2.netns`` does, ~10 ms) a short-lived thread unshares or setns()es and
does the work: creating a namespace costs about 0.7 ms.  Namespaces are
bind-mounted under ``/run/netns`` like ``ip netns add`` does, so ``ip netns``
lists them, and named ``udps-<owner tag>.<pid namespace>-<n>-<hint>`` so that orphans
of a dead owner can be reaped by the next session without touching a live one's, nor
one of a session in another pid namespace (a container sharing /run/netns), whose pid
means nothing here.  A name without the pid namespace (an older version's) is only
unmounted, never emptied, as that version did.

A namespace lives as long as a process in it: before one is removed, whatever
still runs in it is SIGKILLed and waited for (the kernel selftests' ``ip netns pids
NAME | xargs kill``), found by the inode of every task's ``/proc/PID/task/TID/ns/net``,
with the kill loop of ``host/cgroup.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pytest_udpsend.errors import UdpsendError
from pytest_udpsend.host import cgroup
from pytest_udpsend.host.state import scoped_owner_tag, tag_alive, tag_dead_here

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
PREFIX = "udps-"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count(1)
_NAME_RE = re.compile(r"^udps-(\d+\.[0-9a-f]+(?:\.[0-9a-f]+)?)-")  # the pid namespace part: since review1


class NamespaceBusy(UdpsendError):
    """A process in a namespace of ours outlived SIGKILL: the namespace (and its devices) stays alive."""


def _check(ret: int, what: str) -> None:
    """Turn a libc -1 into OSError (never ignore setns/mount failures)."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread and return its result (or raise its exception).

    The thread may change its own namespaces; they die with it, and the calling
    thread is never moved.
    """
    value: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            value.append(fn())
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=body, name="udpsend-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return value[0]


def enter(fd: int) -> None:
    """Move the *calling thread* into the namespace behind ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def enter_with_sysfs(fd: int) -> None:
    """Enter the netns and mount a private sysfs that shows its devices (like ``ip netns exec``).

    Only the calling thread gets the new mount namespace; it vanishes with the thread.
    """
    enter(fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
    _check(_libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs")


_rundir_ready = False


def _prepare_rundir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, once per process."""
    global _rundir_ready
    if _rundir_ready:
        return
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"", bytes(NETNS_DIR), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(bytes(NETNS_DIR), bytes(NETNS_DIR), b"none", MS_BIND | MS_REC, None), "bind /run/netns")
        _check(_libc.mount(b"", bytes(NETNS_DIR), b"none", MS_SHARED | MS_REC, None), "share /run/netns")
    _rundir_ready = True


def make_name(hint: str) -> str:
    """A unique, recognisable name: prefix, owner tag, counter, sanitized hint."""
    clean = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:20] or "ns"
    return f"{PREFIX}{scoped_owner_tag()}-{next(_counter)}-{clean}"


@dataclass
class Namespace:
    """A named network namespace made by this process.

    ``fd`` keeps a handle for setns(); ``name`` is what ``ip netns`` lists.
    """

    name: str
    fd: int

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside this namespace."""

        def body() -> T:
            enter(self.fd)
            return fn()

        return in_thread(body)

    def run_with_sysfs(self, fn: Callable[[], T]) -> T:
        """Like run(), with /sys showing this namespace's devices."""

        def body() -> T:
            enter_with_sysfs(self.fd)
            return fn()

        return in_thread(body)

    def __str__(self) -> str:
        return self.name


def create(hints: list[str], on_each: Callable[[], T] | None = None) -> list[tuple[Namespace, T | None]]:
    """Create one namespace per hint in a single thread.

    ``on_each`` runs inside each new namespace right after it exists (e.g. to open
    a netlink socket there).  If anything fails, the namespaces made so far are removed.
    """
    _prepare_rundir()
    names = [make_name(h) for h in hints]

    def body() -> list[tuple[Namespace, T | None]]:
        made: list[tuple[Namespace, T | None]] = []
        try:
            for name in names:
                path = NETNS_DIR / name
                os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
                try:
                    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
                    _check(_libc.mount(b"/proc/thread-self/ns/net", bytes(path), b"none", MS_BIND, None), "bind netns")
                except OSError:
                    path.unlink()
                    raise
                ns = Namespace(name, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                made.append((ns, on_each() if on_each else None))
        except BaseException:
            for ns, _ in made:
                remove(ns)
            raise
        return made

    return in_thread(body)


def remove(ns: Namespace) -> None:
    """Kill what runs in the namespace, unmount and unlink it; the kernel frees it once unused.

    NamespaceBusy (after the name is gone) if a process in it outlived SIGKILL."""
    try:
        remove_name(ns.name)
    finally:
        with contextlib.suppress(OSError):
            os.close(ns.fd)


def remove_name(name: str) -> None:
    """Like remove(), by name (a dead owner's namespace)."""
    left = evict(NETNS_DIR / name)
    _unmount(name)
    if left:
        raise busy(name, left)


def _unmount(name: str) -> None:
    path = NETNS_DIR / name
    if _libc.umount2(bytes(path), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(-1, f"umount {path}")
    path.unlink(missing_ok=True)


def busy(name: str, left: list[int], deadline_s: float | None = None) -> NamespaceBusy:
    """The sentence for processes that outlived evict()."""
    return NamespaceBusy(
        cgroup.outlived(
            f"network namespace {name}",
            left,
            deadline_s,
            "which keeps the namespace and its devices alive until it ends",
        )
    )


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the namespace bound at ``path``; None if no namespace is (nothing to evict)."""
    try:
        st, nsfs = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError:
        return None
    if st.st_dev != nsfs.st_dev or st.st_ino == nsfs.st_ino:  # not a namespace; or ours, the host's: never
        return None
    return st.st_dev, st.st_ino


def _inside(pid: int, ident: tuple[int, int]) -> bool:
    """A task (any thread) of ``pid`` is in the namespace ``ident`` now."""
    if pid in (os.getpid(), 1):
        return False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False  # gone meanwhile
    for tid in tasks:
        try:
            st = os.stat(f"/proc/{pid}/task/{tid}/ns/net")
        except OSError:
            continue  # exited: a zombie has left its namespaces
        if (st.st_dev, st.st_ino) == ident:
            return True
    return False


def occupants(ident: tuple[int, int]) -> list[int]:
    """Pids with a task (any thread) in the namespace ``ident``, this process excepted."""
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _inside(int(e.name), ident)]


def occupants_of(path: Path) -> list[int]:
    """occupants() of the namespace bound at ``path``."""
    ident = _identity(path)
    return [] if ident is None else occupants(ident)


def evict(path: Path, deadline_s: float | None = None) -> list[int]:
    """SIGKILL every process in the namespace bound at ``path``, again until none is left or the
    deadline (cgroup.KILL_DEADLINE_S) passes; the pids still there then."""
    ident = _identity(path)
    if ident is None:
        return []
    return cgroup.kill_until_gone(lambda: occupants(ident), lambda pid: _inside(pid, ident), deadline_s)


def list_ours() -> list[str]:
    """Names under /run/netns that this plugin made (any owner)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))
    except FileNotFoundError:
        return []


def reap_orphans() -> list[str]:
    """Remove namespaces whose owner process is gone; return their names.

    Only a name of this pid namespace is emptied first (tag_dead_here); one without a pid
    namespace is only unmounted: its owner may be a live session in a container."""
    reaped = []
    for name in list_ours():
        match = _NAME_RE.match(name)
        if match is None:
            continue
        tag = match.group(1)
        try:
            if tag_dead_here(tag):
                remove_name(name)
                reaped.append(name)
            elif tag.count(".") == 1 and not tag_alive(tag):
                _unmount(name)
                reaped.append(name)
        except NamespaceBusy as exc:
            reaped.append(f"{name} ({exc})")
    return reaped

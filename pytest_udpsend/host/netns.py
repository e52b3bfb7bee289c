"""Network namespaces made by this process: create, enter (per thread), remove, reap.

Linux network namespaces are per *thread*, so instead of forking (what
``pyroute2.netns`` does, ~10 ms) a short-lived thread unshares or setns()es and
does the work: creating a namespace costs about 0.7 ms.  Namespaces are
bind-mounted under ``/run/netns`` like ``ip netns add`` does, so ``ip netns``
lists them, and named ``udps-<owner tag>-<n>-<hint>`` so that orphans of a dead
owner can be reaped by the next session without touching a live one's.
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

from pytest_udpsend.host.state import owner_tag, tag_alive

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
_NAME_RE = re.compile(r"^udps-(\d+\.[0-9a-f]+)-")


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
    box: dict[str, object] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name="udpsend-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


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
    return f"{PREFIX}{owner_tag()}-{next(_counter)}-{clean}"


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
    """Unmount and unlink the namespace; the kernel frees it once unused."""
    with contextlib.suppress(OSError):
        os.close(ns.fd)
    remove_name(ns.name)


def remove_name(name: str) -> None:
    path = NETNS_DIR / name
    if _libc.umount2(bytes(path), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(-1, f"umount {path}")
    path.unlink(missing_ok=True)


def list_ours() -> list[str]:
    """Names under /run/netns that this plugin made (any owner)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))
    except FileNotFoundError:
        return []


def reap_orphans() -> list[str]:
    """Remove namespaces whose owner process is gone; return their names."""
    reaped = []
    for name in list_ours():
        match = _NAME_RE.match(name)
        if match and not tag_alive(match.group(1)):
            remove_name(name)
            reaped.append(name)
    return reaped

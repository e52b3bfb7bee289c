"""Who owns what on this host: owner tags, the state directory and cross-process locks.

Everything the plugin leaves on the host carries an *owner tag* (``<pid>.<starttime>``)
so that a later session can tell a dead owner's leftovers from a live session's.
The state directory lives under ``/run`` (tmpfs): a reboot resets sysctls and
namespaces, and it wipes the journal with them.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from pytest_udpsend.errors import UdpsendError

DEFAULT_STATE_DIR = "/run/pytest-udpsend"
PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's inode, fixed since Linux 3.8


class LockTimeout(UdpsendError):
    """Waited too long for a lock another process holds."""


def process_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


_own_tag: tuple[int, str] | None = None


def owner_tag(pid: int | None = None) -> str:
    """``<pid>.<starttime hex>`` for pid (default: this process, cached per pid)."""
    global _own_tag
    if pid is None:
        pid = os.getpid()
        if _own_tag is None or _own_tag[0] != pid:  # re-read after fork
            _own_tag = (pid, f"{pid}.{process_starttime(pid) or 0:x}")
        return _own_tag[1]
    return f"{pid}.{process_starttime(pid) or 0:x}"


def tag_alive(tag: str) -> bool:
    """True if the process that made ``tag`` still runs (pid reuse is caught by starttime)."""
    try:
        pid_s, start_s = tag.split(".", 1)
        pid, start = int(pid_s), int(start_s, 16)
    except ValueError:
        return False
    return process_starttime(pid) == start


def in_initial_pid_namespace() -> bool:
    """Owner tags are pids: only in the initial pid namespace do they name every process
    that may share the state directory (a container's pid 12 is not the host's)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return True  # no pid namespaces at all


def state_path(*parts: str) -> Path:
    """A path in the state directory (UDPSEND_STATE_DIR, default /run/pytest-udpsend), not created."""
    return Path(os.environ.get("UDPSEND_STATE_DIR") or DEFAULT_STATE_DIR).joinpath(*parts)


def state_dir(*parts: str) -> Path:
    """Like state_path, created (0700) if missing: call it only once the plugin is in use."""
    path = state_path(*parts)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def describe_pid(pid: int) -> str:
    """'pid 123 (python -m pytest ...)', or 'pid 123' when its command line cannot be read."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    command = " ".join(" ".join(a.decode(errors="replace") for a in argv).split())[:200]  # one line
    return f"pid {pid} ({command})" if command else f"pid {pid}"


class FileLock:
    """An exclusive ``flock`` on a file in the state directory.

    The kernel drops it when its holder dies, so a SIGKILLed worker never leaves
    the lock taken.  Re-entrant within one object (counted).  Waiting is a
    blocking ``flock`` in a helper thread: the kernel wakes blocked waiters the
    moment the lock is released, so a waiter is not outrun by a holder that
    re-takes it between polls (the kernel does not promise FIFO order among
    several waiters).  The holder writes its pid into the file, so a waiter that
    gives up can name it.  Nothing is created before the first ``acquire``.
    """

    def __init__(self, name: str, timeout: float = 600.0) -> None:
        self.name = name
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    @property
    def path(self) -> Path:
        return state_path("locks", self.name)

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = os.open(state_dir("locks") / self.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _flock_within(fd, self.timeout):
            raise LockTimeout(
                f"waited {self.timeout:g} s for the pytest-udpsend {self.name} lock ({self.path}), held by "
                f"{self.holder()}: wait for that run to end or stop it, then run again."
            )
        mine = f"{os.getpid()}\n".encode()
        os.pwrite(fd, mine, 0)
        os.ftruncate(fd, len(mine))
        self._fd = fd
        self._depth = 1

    def holder(self) -> str:
        """Who holds the lock, as far as the file tells (the pid its holder wrote)."""
        try:
            return describe_pid(int(self.path.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return "an unknown process"

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _flock_within(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on ``fd`` within ``timeout`` s; on False, ``fd`` is no longer the caller's.

    The blocking call runs in a daemon thread.  If the deadline passes first, the
    thread is abandoned with ``fd``: should it get the lock later it closes ``fd``,
    which drops the lock at once.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the common, uncontended case: no thread
        return True
    except BlockingIOError:
        pass
    except OSError:
        os.close(fd)
        raise
    mutex = threading.Lock()
    state = {"got": False, "abandoned": False}

    def wait() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return
        with mutex:
            state["got"] = True
            if state["abandoned"]:
                os.close(fd)

    waiter = threading.Thread(target=wait, name="udpsend-lock-wait", daemon=True)
    waiter.start()
    interrupted = True
    try:
        waiter.join(timeout)
        interrupted = False
    finally:
        with mutex:
            got = state["got"]
            state["abandoned"] = not got
            if got and interrupted:  # Ctrl-C while the lock came: do not keep it
                os.close(fd)
    return got

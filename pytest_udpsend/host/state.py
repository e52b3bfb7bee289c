"""Who owns what on this host: owner tags, the state directory and cross-process locks.

Everything the plugin leaves on the host carries an *owner tag* (``<pid>.<starttime>``)
so that a later session can tell a dead owner's leftovers from a live session's.
The state directory lives under ``/run`` (tmpfs): a reboot resets sysctls and
namespaces, and it wipes the journal with them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

STATE_DIR = Path(os.environ.get("UDPSEND_STATE_DIR", "/run/pytest-udpsend"))


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


def state_dir(*parts: str) -> Path:
    path = STATE_DIR.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class FileLock:
    """An exclusive ``flock`` on a file in the state directory.

    The kernel drops it when its holder dies, so a SIGKILLed worker never leaves
    the lock taken.  Re-entrant within one object (counted).
    """

    def __init__(self, name: str, timeout: float = 600.0) -> None:
        self.path = state_dir("locks") / name
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"waited {self.timeout:.0f} s for lock {self.path}") from None
                time.sleep(0.02)
        self._fd = fd
        self._depth = 1

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

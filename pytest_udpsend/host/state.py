"""Who owns what on this host: owner tags, the state directory and cross-process locks.

Everything the plugin leaves on the host carries an *owner tag* (``<pid>.<starttime>``)
so that a later session can tell a dead owner's leftovers from a live session's.
The state directory lives under ``/run`` (tmpfs): a reboot resets sysctls and
namespaces, and it wipes the journal with them.

What is in it is acted on as root (journals are replayed, locks written), so it is used
only when no other user can change it: the directory (and every folder in it) is this
user's and not writable by group or others, the folders above it belong to root or this
user and are not writable by others (unless sticky, as /tmp), a symbolic link on the way
is followed only if root or this user owns it, and what was checked is then used through
its open fd, not its name.  Each file is opened without following a symlink and accepted
only as a regular file of ours with one link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, NoReturn

from pytest_udpsend.errors import UdpsendError

DEFAULT_STATE_DIR = "/run/pytest-udpsend"
PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's inode, fixed since Linux 3.8


class LockTimeout(UdpsendError):
    """Waited too long for a lock another process holds."""


class UnsafeStateDir(UdpsendError):
    """The state directory, or a file in it, could be another user's: refused, never acted on."""


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


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 where there are no pid namespaces)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def scoped_owner_tag() -> str:
    """``<pid>.<starttime hex>.<pid namespace inode hex>``: owner_tag() for names that a session
    in another pid namespace (a container sharing /run/netns or the cgroupfs) may also see."""
    return f"{owner_tag()}.{pid_namespace():x}"


def _parse_tag(tag: str) -> tuple[int, int, int | None] | None:
    """(pid, starttime, pid namespace or None for a tag without one), or None if not a tag."""
    parts = tag.split(".")
    try:
        if len(parts) == 2:
            return int(parts[0]), int(parts[1], 16), None
        if len(parts) == 3:
            return int(parts[0]), int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        pass
    return None


def tag_alive(tag: str) -> bool:
    """True if the process that made ``tag`` still runs (pid reuse is caught by starttime).

    A tag of another pid namespace counts as alive: its pid names nobody here, so its owner
    cannot be known dead."""
    parsed = _parse_tag(tag)
    if parsed is None:
        return False
    pid, start, pidns = parsed
    if pidns is not None and pidns != pid_namespace():
        return True
    return process_starttime(pid) == start


def tag_dead_here(tag: str) -> bool:
    """True only for a scoped tag (scoped_owner_tag) of this pid namespace whose owner is gone:
    the one kind of name whose processes may be killed."""
    parsed = _parse_tag(tag)
    return parsed is not None and parsed[2] is not None and not tag_alive(tag)


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
    """Like state_path, created if missing and checked (private_dir): call it only once the plugin is in use."""
    return private_dir(state_path(*parts))


_STATE_FIX = (
    "point UDPSEND_STATE_DIR at a directory of your own that only you can write (e.g. mode 0700), "
    "or remove this one so that it is made afresh"
)
_MAX_LINKS = 40  # the kernel's own limit on links followed in one lookup


def _dir_problem(st: os.stat_result, strict: bool) -> str | None:
    """Why a folder lets another user in, or None.  ``strict``: ours and writable by nobody else;
    otherwise (a folder above the state directory) root's or ours, writable by others only if sticky."""
    euid = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != euid and (strict or st.st_uid != 0):
        return f"is owned by uid {st.st_uid}, not by this user (uid {euid})"
    if st.st_mode & 0o022 and (strict or not st.st_mode & stat.S_ISVTX):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class PrivateDir(NamedTuple):
    """A checked folder: ``fd`` is what was checked, for ``dir_fd=`` (a name on the way that changes
    later cannot redirect what is done through it); ``path`` is its real path, for messages."""

    fd: int
    path: Path


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


@contextlib.contextmanager
def opened_dir(path: Path, create: bool = True) -> Iterator[PrivateDir]:
    """The folder ``path`` names, opened, once it is known that no other user can change what is in it.

    The path is walked one level at a time from ``/``, each level opened relative to the one
    before and checked on what was opened (fstat): inside the state directory strictly, above it
    loosely (_dir_problem).  A symbolic link on the way is followed only if root or this user owns
    it (whoever owns a link decides where it points).  Missing levels are made 0700, except the
    state directory and those above it: 0755, so that readers such as ``udpsend doctor`` can look in.
    UnsafeStateDir names the level and the fix otherwise.
    """
    root = Path(os.path.realpath(state_path()))  # only to tell inside from above
    todo = list(Path(os.path.abspath(path)).parts[1:])
    here, fd, links = Path("/"), os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), 0
    try:
        _check_level(fd, here, root, path)
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":  # from a link's target: the parent of the real folder we are in
                fd, here = _swap(fd, _open_dir("..", fd)), here.parent
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                mode = 0o755 if here / name in (root, *root.parents) else 0o700
                with contextlib.suppress(FileExistsError):  # made meanwhile: checked below like any other
                    os.mkdir(name, mode, dir_fd=fd)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if st.st_uid not in (0, os.geteuid()):
                    raise UnsafeStateDir(
                        f"{here / name} is a symbolic link owned by uid {st.st_uid}, not by root or this user "
                        f"(uid {os.geteuid()}), on the way to {path}: its owner decides which folder pytest-udpsend "
                        f"acts on as uid {os.geteuid()}; {_STATE_FIX}."
                    )
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    fd, here = _swap(fd, os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)), Path("/")
                todo[:0] = Path(target).parts[1 if target.startswith("/") else 0 :]
                continue
            if not stat.S_ISDIR(st.st_mode):
                _refuse_level(here / name, root, path, "is not a directory")
            fd, here = _swap(fd, _open_dir(name, fd)), here / name
            _check_level(fd, here, root, path)
        yield PrivateDir(fd, here)
    finally:
        os.close(fd)


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _check_level(fd: int, level: Path, root: Path, path: Path) -> None:
    """UnsafeStateDir if the folder open at ``fd`` lets another user in."""
    strict = level == root or root in level.parents
    if problem := _dir_problem(os.fstat(fd), strict):
        _refuse_level(level, root, path, problem)


def _refuse_level(level: Path, root: Path, path: Path, problem: str) -> NoReturn:
    if level == root:
        subject = f"the pytest-udpsend state directory {level}"
    elif root in level.parents:
        subject = f"the pytest-udpsend state folder {level}"
    else:
        subject = f"{level}, a folder on the way to the pytest-udpsend state folder {path},"
    raise UnsafeStateDir(
        f"{subject} {problem}: another user could plant files there that pytest-udpsend would act on "
        f"as uid {os.geteuid()}; {_STATE_FIX}."
    )


def private_dir(path: Path, create: bool = True) -> Path:
    """The real path of ``path``, checked and made as opened_dir does (for callers that need a name,
    such as a folder handed to another process; act on files through ``opened_dir`` where you can)."""
    with opened_dir(path, create) as folder:
        return folder.path


def file_problem(st: os.stat_result) -> str | None:
    """Why a file in the state directory is not to be trusted, or None (a regular file of ours, one link)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this user"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links (one may be another file)"
    return None


def try_open_owned(
    path: Path, flags: int, mode: int = 0o600, *, dir_fd: int | None = None
) -> tuple[int | None, str | None]:
    """(fd, None) for a file of ours at ``path``, never through a symlink; (None, why) otherwise.

    With ``dir_fd`` (an opened_dir's fd), ``path.name`` is opened in that folder and ``path`` only names it.
    O_NONBLOCK: a FIFO planted there must not hang the open (no effect on a regular file).
    Open with O_TRUNC only what cannot be another file: truncate after the check instead.
    """
    try:
        fd = os.open(
            path if dir_fd is None else path.name,
            flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            mode,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "is a symbolic link"
        raise
    problem = file_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        return None, problem
    return fd, None


def refuse_file(path: Path, problem: str) -> UnsafeStateDir:
    return UnsafeStateDir(
        f"{path} {problem}, and pytest-udpsend writes or replays it as uid {os.geteuid()}: someone may be "
        "aiming it at another file; remove it (after checking who made it), then run again."
    )


def open_owned(path: Path, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
    """try_open_owned, or UnsafeStateDir naming the path and the fix."""
    fd, problem = try_open_owned(path, flags, mode, dir_fd=dir_fd)
    if fd is None:
        raise refuse_file(path, problem or "cannot be opened")
    return fd


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
        with opened_dir(state_path("locks")) as locks:
            fd = open_owned(locks.path / self.name, os.O_RDWR | os.O_CREAT, dir_fd=locks.fd)
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
            with opened_dir(self.path.parent, create=False) as locks:
                fd = open_owned(self.path, os.O_RDONLY, dir_fd=locks.fd)
            with os.fdopen(fd) as fh:
                return describe_pid(int(fh.read(64).split()[0]))
        except (OSError, ValueError, IndexError, UnsafeStateDir):
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

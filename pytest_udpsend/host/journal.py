"""A crash journal for global sysctl changes.

Before a global sysctl is written, its original value is appended to this
process's journal file (written atomically and fsync'ed), stamped with when it was
journaled.  After it is restored, the entry is dropped.  A session that dies
(SIGKILL, OOM, power to the worker cut) leaves its file behind; the next session
restores, for every knob in the files of owners no longer alive, the original of
its earliest entry: several dead sessions may have changed one knob in turn, and
only the first of them saw the value the host had.

The journals are replayed as root, so only from a folder no other user can change
and only files of ours (state.opened_dir, state.try_open_owned); every file in it is
reached through the folder's fd, never by a name that could lead elsewhere meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_udpsend.host.state import (
    PrivateDir,
    file_problem,
    in_initial_pid_namespace,
    open_owned,
    opened_dir,
    owner_tag,
    refuse_file,
    state_path,
    tag_alive,
    try_open_owned,
)


def _stamp() -> int:
    """When a change is journaled: CLOCK_BOOTTIME is shared by every process on the host and never
    goes back (the journal lives on tmpfs, so it never outlives a boot), unlike the wall clock."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _lstat(folder: PrivateDir, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_atomic(folder: PrivateDir, name: str, data: str) -> None:
    """Write ``name`` in ``folder`` through ``<stem>.tmp``: both are opened or replaced, never followed."""
    if (st := _lstat(folder, name)) and (problem := file_problem(st)):
        raise refuse_file(folder.path / name, problem)
    tmp = folder.path / Path(name).with_suffix(".tmp").name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = open_owned(tmp, flags, dir_fd=folder.fd)
    except FileExistsError:  # our own write that never reached os.replace (the tag is this process's)
        if (st := _lstat(folder, tmp.name)) and (problem := file_problem(st)):
            raise refuse_file(tmp, problem) from None
        os.unlink(tmp.name, dir_fd=folder.fd)
        fd = open_owned(tmp, flags, dir_fd=folder.fd)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp.name, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)


def journal_dir() -> Path:
    """Where journals live (not created).  Owner tags are pids, so a pid namespace other than
    the initial one (a container) keeps its own folder: its pids mean nothing to the host's."""
    if in_initial_pid_namespace():
        return state_path("journal")
    return state_path(f"journal-pidns-{os.stat('/proc/self/ns/pid').st_ino}")


class Journal:
    """This process's journal: ``[[name, original, stamp], ...]`` in the order changed.

    The folder is made by the first ``record``, so a session that changes no global
    knob leaves nothing behind; from then on ``dir`` and ``path`` are the real ones checked then.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or journal_dir()
        self.path = self.dir / f"{owner_tag()}.json"
        self._entries: list[list[Any]] = []

    def record(self, name: str, original: str) -> None:
        stamp = _stamp()
        if self._entries:  # strictly increasing within one journal, whatever the clock's resolution
            stamp = max(stamp, int(self._entries[-1][2]) + 1)
        self._entries.append([name, original, stamp])
        with opened_dir(self.dir) as folder:
            self.dir, self.path = folder.path, folder.path / self.path.name
            _write_atomic(folder, self.path.name, json.dumps(self._entries))

    def forget(self, name: str) -> None:
        self._entries = [e for e in self._entries if e[0] != name]
        if self._entries:
            with opened_dir(self.dir) as folder:
                _write_atomic(folder, self.path.name, json.dumps(self._entries))
            return
        with contextlib.suppress(FileNotFoundError), opened_dir(self.dir, create=False) as folder:  # none: never made
            os.unlink(self.path.name, dir_fd=folder.fd)

    def pending(self) -> list[tuple[str, str]]:
        return [(str(e[0]), str(e[1])) for e in self._entries]


def orphans(directory: Path | None = None) -> list[Path]:
    """Journal files (and stray temporaries) whose owner is dead: cheap, takes no lock.

    UnsafeStateDir if another user could have put them there."""
    folder = directory or journal_dir()
    if not folder.is_dir():
        return []
    with opened_dir(folder, create=False) as opened:
        return [opened.path / name for name in _orphan_names(opened)]


def _orphan_names(folder: PrivateDir) -> list[str]:
    names = (Path(n) for n in os.listdir(folder.fd))
    return sorted(n.name for n in names if n.suffix in (".json", ".tmp") and not tag_alive(n.stem))


@dataclass
class Restored:
    """What restore_orphans did: knobs restored, and warnings (each names a knob or file)."""

    knobs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    path: Path
    raw: list[Any]  # as read, written back unchanged if it stays
    name: str
    original: str
    when: tuple[int, int]  # (stamp, position in its file): journals from before stamps count as oldest


def _read(fd: int, path: Path) -> list[_Entry]:
    """The entries of the journal open at ``fd`` (ValueError / TypeError if it is not one)."""
    with os.fdopen(fd) as fh:
        raw = json.load(fh)
    if not isinstance(raw, list):
        raise TypeError("not a list of entries")
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, list) or len(e) not in (2, 3):
            raise TypeError(f"entry {i} is not [name, original, stamp]")
        stamp = int(e[2]) if len(e) == 3 else 0
        out.append(_Entry(path, e, str(e[0]), str(e[1]), (stamp, i)))
    return out


def restore_orphans(write: Callable[[str, str], None], directory: Path | None = None) -> Restored:
    """Restore what dead owners' journals hold: per knob, the original of its earliest entry.

    Knobs go newest change first (an undo stack).  A knob that cannot be written back
    (EINVAL, the module that made it gone) is a warning and stays journaled for a later
    session to try again; a journal that cannot be read is renamed ``*.corrupt`` and kept
    for a human, never deleted; a file that is not a regular file of ours is left
    alone, not replayed, and warned about.
    """
    folder = directory or journal_dir()
    if not folder.is_dir():
        return Restored()
    with opened_dir(folder, create=False) as opened:
        return _restore(write, opened)


def _restore(write: Callable[[str, str], None], folder: PrivateDir) -> Restored:
    done = Restored()
    journals: dict[Path, list[_Entry]] = {}
    for name in _orphan_names(folder):
        path = folder.path / name
        if path.suffix == ".tmp":  # a write that never reached os.replace: the .json before it stands
            st = _lstat(folder, name)
            fd, problem = None, file_problem(st) if st else None
        else:
            try:
                fd, problem = try_open_owned(path, os.O_RDONLY, dir_fd=folder.fd)
            except FileNotFoundError:  # its owner's own cleanup, meanwhile
                continue
        if problem:
            done.warnings.append(
                f"{path} {problem}: not replayed, since another user may have put it there; "
                "check what it holds, then remove it"
            )
            continue
        if fd is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder.fd)
            continue
        try:
            journals[path] = _read(fd, path)
        except (OSError, ValueError, TypeError) as exc:
            kept = path.with_name(path.name + ".corrupt")
            os.replace(name, kept.name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
            done.warnings.append(
                f"journal {path.name} of a dead session is unreadable ({exc}): kept as {kept} "
                "and not restored; check the global sysctls it may have changed"
            )
    by_knob: dict[str, list[_Entry]] = {}
    for entry in sorted((e for es in journals.values() for e in es), key=lambda e: e.when):
        by_knob.setdefault(entry.name, []).append(entry)
    restored: set[str] = set()
    for name, entries in sorted(by_knob.items(), key=lambda item: item[1][0].when, reverse=True):
        first = entries[0]
        try:
            write(name, first.original)
            done.knobs.append(f"{name}={first.original}")
            restored.add(name)
        except Exception as exc:  # a fault here must not stop the other knobs or the session
            done.warnings.append(
                f"could not restore {name}={first.original} left by a dead session ({exc}); "
                f"it stays in {first.path} for the next session to try again"
            )
    for path, entries in journals.items():
        left = [e.raw for e in entries if e.name not in restored]
        if not left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=folder.fd)
        elif len(left) != len(entries):
            _write_atomic(folder, path.name, json.dumps(left))
    return done

"""A crash journal for global sysctl changes.

Before a global sysctl is written, its original value is appended to this
process's journal file (written atomically and fsync'ed).  After it is restored,
the entry is dropped.  A session that dies (SIGKILL, OOM, power to the worker
cut) leaves its file behind; the next session restores those originals, newest
first, for every file whose owner is no longer alive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_udpsend.host.state import in_initial_pid_namespace, owner_tag, state_path, tag_alive


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def journal_dir() -> Path:
    """Where journals live (not created).  Owner tags are pids, so a pid namespace other than
    the initial one (a container) keeps its own folder: its pids mean nothing to the host's."""
    if in_initial_pid_namespace():
        return state_path("journal")
    return state_path(f"journal-pidns-{os.stat('/proc/self/ns/pid').st_ino}")


class Journal:
    """This process's journal: ``[[name, original], ...]`` in the order changed.

    The folder is made by the first ``record``, so a session that changes no global
    knob leaves nothing behind.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or journal_dir()
        self.path = self.dir / f"{owner_tag()}.json"
        self._entries: list[list[str]] = []

    def record(self, name: str, original: str) -> None:
        self._entries.append([name, original])
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(self.path, json.dumps(self._entries))

    def forget(self, name: str) -> None:
        self._entries = [e for e in self._entries if e[0] != name]
        if self._entries:
            _write_atomic(self.path, json.dumps(self._entries))
        else:
            self.path.unlink(missing_ok=True)

    def pending(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self._entries]


def orphans(directory: Path | None = None) -> list[Path]:
    """Journal files (and stray temporaries) whose owner is dead: cheap, takes no lock."""
    folder = directory or journal_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".json", ".tmp") and not tag_alive(p.stem))


@dataclass
class Restored:
    """What restore_orphans did: knobs restored, and warnings (each names a knob or file)."""

    knobs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def restore_orphans(write: Callable[[str, str], None], directory: Path | None = None) -> Restored:
    """Restore what dead owners' journals hold, newest change first.

    A knob that cannot be written back (EINVAL, the module that made it gone) is a
    warning and stays in its journal for a later session to try again; a journal
    that cannot be read is renamed ``*.corrupt`` and kept for a human, never deleted.
    """
    done = Restored()
    for path in orphans(directory):
        if path.suffix == ".tmp":  # a write that never reached os.replace: the .json before it stands
            path.unlink(missing_ok=True)
            continue
        try:
            entries = [(str(n), str(v)) for n, v in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            kept = path.with_name(path.name + ".corrupt")
            os.replace(path, kept)
            done.warnings.append(f"journal {path.name} of a dead session is unreadable ({exc}): kept as {kept} "
                                 "and not restored; check the global sysctls it may have changed")  # fmt: skip
            continue
        left: list[tuple[str, str]] = []
        for name, original in reversed(entries):
            try:
                write(name, original)
                done.knobs.append(f"{name}={original}")
            except Exception as exc:  # a fault here must not stop the other knobs or the session
                left.insert(0, (name, original))
                done.warnings.append(f"could not restore {name}={original} left by a dead session ({exc}); "
                                     f"it stays in {path} for the next session to try again")  # fmt: skip
        if left:
            _write_atomic(path, json.dumps([list(e) for e in left]))
        else:
            path.unlink(missing_ok=True)
    return done

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
from pathlib import Path

from pytest_udpsend.host.state import owner_tag, state_dir, tag_alive


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Journal:
    """This process's journal: ``[[name, original], ...]`` in the order changed."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or state_dir("journal")
        self.path = self.dir / f"{owner_tag()}.json"
        self._entries: list[list[str]] = []

    def record(self, name: str, original: str) -> None:
        self._entries.append([name, original])
        _write_atomic(self.path, json.dumps(self._entries))

    def forget(self, name: str) -> None:
        self._entries = [e for e in self._entries if e[0] != name]
        if self._entries:
            _write_atomic(self.path, json.dumps(self._entries))
        else:
            self.path.unlink(missing_ok=True)

    def pending(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self._entries]


def restore_orphans(write: Callable[[str, str], None], directory: Path | None = None) -> list[str]:
    """Restore what dead owners' journals hold; return 'name=value' for each restored knob."""
    folder = directory or state_dir("journal")
    restored: list[str] = []
    for path in sorted(folder.glob("*.json")):
        if tag_alive(path.stem):
            continue
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = []
        for name, original in reversed(entries):
            write(name, original)
            restored.append(f"{name}={original}")
        path.unlink(missing_ok=True)
    for tmp in folder.glob("*.tmp"):
        if not tag_alive(tmp.stem):
            tmp.unlink(missing_ok=True)
    return restored

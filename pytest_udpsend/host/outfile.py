"""Output files (--udpsend-json, --udpsend-html, ``udpsend report -o``, pcaps), written safely as root.

They land in directories users own, so a predictable temporary name (``.x.json.1234.tmp``)
would let anyone who can write there plant a symlink and have root write through it.
Instead: ``mkstemp`` in the target directory (random name, ``O_CREAT|O_EXCL``: never
follows or reuses an existing path), write, then ``os.replace`` onto the target
(replaces a symlink at the target itself, never what it points to).  A reader never
sees half a file; a failed write leaves no temporary behind.

Missing parent directories are made when the file is written (as ``mkdir -p`` would).  A path
that cannot be written (a directory, a parent that is a file, no permission) is an
``OutputError`` in one sentence: ``check_target`` says so before a run starts (and makes
nothing), ``atomic_open`` if it happens anyway.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pytest_udpsend.errors import ConfigError


class OutputError(ConfigError):
    """An output file cannot be written there; the message names the option, the path and the fix."""


def check_target(path: str | Path, flag: str) -> None:
    """Refuse, in one sentence naming ``flag`` and ``path``, an output path that cannot become a file.

    Agrees with ``atomic_open``: a missing parent is fine (it is made on writing) if the nearest
    folder that exists is one this user can write in."""
    target = Path(path)
    if target.is_dir():
        example = target / ("report.html" if flag in ("-o", "--udpsend-html") else "results.json")
        raise OutputError(f"{flag} {path}: is a directory; give a file name, e.g. {example}")
    existing = target.parent
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent  # the folders below it are made when the file is written
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is not a directory; give a path in a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{flag} {path}: the directory {existing} is not writable by this user; give a path you can write"
        )


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without error."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # a --udpsend-pcap directory is made on first use
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have given, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            yield out
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(f"{path}: cannot be written: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without setting it (os.umask() would race other threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o022


def atomic_write(path: str | Path, data: str | bytes) -> None:
    with atomic_open(path) as out:
        out.write(data.encode() if isinstance(data, str) else data)

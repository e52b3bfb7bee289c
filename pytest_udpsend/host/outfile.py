"""Output files (--udpsend-json, --udpsend-html, ``udpsend report -o``, pcaps), written safely as root.

They land in directories users own, so a predictable temporary name (``.x.json.1234.tmp``)
would let anyone who can write there plant a symlink and have root write through it.
Instead: ``mkstemp`` in the target directory (random name, ``O_CREAT|O_EXCL``: never
follows or reuses an existing path), write, then ``os.replace`` onto the target
(replaces a symlink at the target itself, never what it points to).  A reader never
sees half a file; a failed write leaves no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have given, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, target)
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

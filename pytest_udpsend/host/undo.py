"""An undo stack: register the undo right after each change, run it last-in-first-out.

Modelled on the kernel selftests' ``defer()`` / ``ksft_flush_defer()``: a failing
undo does not stop the others; all failures are reported together at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("pytest_udpsend")


class UndoFailed(Exception):
    """One or more undo steps failed; each is listed in the message."""


class UndoStack:
    """LIFO list of (description, callable)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def __len__(self) -> int:
        return len(self._steps)

    def flush(self) -> None:
        """Run every step, newest first; raise UndoFailed listing the ones that failed.

        An interrupt (Ctrl-C, SIGTERM turned into KeyboardInterrupt) during a step
        does not stop the others: every step still runs, then the interrupt is
        raised again so that the run ends.
        """
        failures: list[str] = []
        interrupt: BaseException | None = None
        while self._steps:
            what, fn = self._steps.pop()
            try:
                fn()
            except Exception as exc:  # keep going: later steps must still run
                log.error("undo %s failed: %s", what, exc)
                failures.append(f"{what}: {exc!r}")
            except BaseException as exc:  # KeyboardInterrupt, SystemExit: finish undoing first
                log.error("undo %s interrupted (%s): undoing the rest, then stopping", what, type(exc).__name__)
                failures.append(f"{what}: interrupted")
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt
        if failures:
            raise UndoFailed("cleanup failed for: " + "; ".join(failures))

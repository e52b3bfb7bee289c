"""Remedy sweeps: one scenario across a grid of the remedies' knobs.

The knobs are those of the EAGAIN story's three remedies: the send buffer (with
and without SO_SNDBUFFORCE), ``net.core.netdev_budget`` / ``netdev_budget_usecs``,
and the CPU pressure on the busy CPU (hog workers, 0 = none).  Each cell is
measured ``repeat`` times on one topology; its medians (EAGAIN rate, pps,
time_squeeze, sock_wfree p99) decide the smallest change that brings EAGAIN
under a target.

Global knobs change one cell at a time through the context's ``Sysctls`` (journaled,
under the host lock, restored when the context closes).

With ``argv`` (``udpsend sweep --exec -- CMD ARGS``) each sample is a run of the
user's program, measured from outside as ``sender_process`` measures it: the budget
knobs and the hogs act on the host around it; the send buffer cannot be swept then
(it is the program's own SO_SNDBUF), so such a grid is refused.  A KeyboardInterrupt
(Ctrl-C, or SIGTERM turned into one) ends the sweep after undoing the cell being
measured; the cells measured before it are kept.

The ``udpsend sweep`` command (its options, printing and exit status) is command/sweep.py;
the ``udpsend_sweep`` fixture is in fixtures.py.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.host.topology import Topology
from pytest_udpsend.measure import external, load, sender
from pytest_udpsend.measure.params import SendParams
from pytest_udpsend.measure.probes import WfreeProbe
from pytest_udpsend.measure.result import SendResult

BUDGET = "net.core.netdev_budget"
BUDGET_USECS = "net.core.netdev_budget_usecs"
FORCE = {"no": (False,), "yes": (True,), "both": (False, True)}


@dataclass(frozen=True)
class Grid:
    """The values of each knob; ``None`` for a knob that is not swept (left as the scenario has it)."""

    sndbuf: tuple[int, ...] | None = None
    force: tuple[bool, ...] = (False,)
    budget: tuple[int, ...] | None = None
    budget_usecs: tuple[int, ...] | None = None
    workers: tuple[int, ...] | None = None

    def cells(self) -> Iterator[Cell]:
        dims = (
            self.sndbuf or (None,),
            self.force if self.sndbuf else (False,),
            self.budget or (None,),
            self.budget_usecs or (None,),
            self.workers or (None,),
        )
        for sndbuf, force, budget, usecs, workers in itertools.product(*dims):
            yield Cell(sndbuf, force, budget, usecs, workers)

    def size(self) -> int:
        return sum(1 for _ in self.cells())


@dataclass(frozen=True)
class Cell:
    sndbuf: int | None = None
    force: bool = False
    budget: int | None = None
    budget_usecs: int | None = None
    workers: int | None = None

    def id(self) -> str:
        parts = []
        if self.sndbuf is not None:
            parts += [f"sndbuf={self.sndbuf}", f"force={'yes' if self.force else 'no'}"]
        parts += [
            f"{k}={v}"
            for k, v in (("budget", self.budget), ("budget_usecs", self.budget_usecs), ("workers", self.workers))
            if v is not None
        ]
        return f"sweep[{','.join(parts)}]"


@dataclass
class CellResult:
    cell: Cell
    samples: list[SendResult] = field(default_factory=list)
    wall_s: float = 0.0

    def median(self, key: str) -> float | None:
        values = [v for v in (_value(s, key) for s in self.samples) if v is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        return {
            "cell": self.cell.id(),
            "knobs": asdict(self.cell),
            "eagain_rate": self.median("eagain_rate"),
            "enobufs_rate": self.median("enobufs_rate"),
            "pps": self.median("pps"),
            "time_squeeze": self.median("time_squeeze"),
            "wfree_p99_us": self.median("wfree.p99_us"),
            "wall_s": round(self.wall_s, 3),
        }


def _value(r: SendResult, key: str) -> float | None:
    if key == "enobufs_rate":
        return r.enobufs / r.attempts if r.attempts else 0.0
    value: Any = r.wfree.get("p99_us") if key == "wfree.p99_us" else getattr(r, key)
    return float(value) if isinstance(value, (int, float)) else None


class Sweep:
    """Measures every cell of ``grid`` on ``topo``; ``cells`` holds those fully measured."""

    def __init__(
        self,
        topo: Topology,
        sysctls: Sysctls,
        lock: Callable[[], None],
        probe: WfreeProbe | None,
        params: SendParams,
        pressure: load.PressureSpec | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.topo, self.sysctls, self.lock, self.probe = topo, sysctls, lock, probe
        self.params = params
        self.argv = argv  # the user's program as the sender (None: the built-in C loop)
        self.runner: external.ProcessRunner | None = None  # the program's runner while a sample measures
        # the scenario's own pressure (nice, policy, cpu_max kept), whose workers a sweep may vary;
        # without one, swept workers go to CPU 1 and the scenario as found has none
        self.pressure = pressure or load.PressureSpec((1,), 1)
        self.base_workers = pressure.workers if pressure else 0
        self.cells: list[CellResult] = []
        self.interrupted = False
        self.found: dict[str, int] = {}  # the host's budget knobs before the sweep
        self.grid = Grid()

    def run(self, grid: Grid, repeat: int = 1, progress: Callable[[int, int, CellResult], None] | None = None) -> Sweep:
        if self.argv is not None:
            check_program_grid(grid)
        self.grid = grid
        self.lock()  # held until the context closes: no other measurement or knob change in between
        for name in (BUDGET, BUDGET_USECS):
            self.found[name] = int(self.sysctls.get(name))
        total = grid.size()
        try:
            for i, cell in enumerate(grid.cells()):
                done = self._measure(cell, repeat)
                self.cells.append(done)
                if progress is not None:
                    progress(i + 1, total, done)
        except KeyboardInterrupt:
            self.interrupted = True  # the cell being measured is dropped; the caller's undo restores the host
            raise
        return self

    def cell(self, **knobs: Any) -> CellResult:
        """The measured cell with these knob values, e.g. ``cell(sndbuf=8 << 20, force=True, budget=300)``."""
        for c in self.cells:
            if all(getattr(c.cell, k) == v for k, v in knobs.items()):
                return c
        raise KeyError(f"no measured cell with {knobs}")

    def smallest_change(self, target: float) -> str:
        return smallest_change(self.cells, baseline(self.grid, self.found, self.base_workers), target)

    def _measure(self, cell: Cell, repeat: int) -> CellResult:
        started = time.monotonic()
        if cell.budget is not None:
            self.sysctls.set(BUDGET, cell.budget)
        if cell.budget_usecs is not None:
            self.sysctls.set(BUDGET_USECS, cell.budget_usecs)
        params = self.params
        if cell.sndbuf is not None:
            params = replace(params, sndbuf=cell.sndbuf, force_sndbuf=cell.force)
        workers = self.base_workers if cell.workers is None else cell.workers
        pressure = replace(self.pressure, workers=workers) if workers else None
        if self.argv is not None:
            samples = [self._run_program(params, pressure) for _ in range(repeat)]
        else:
            samples = [sender.run(self.topo, params, self.sysctls, self.probe, pressure) for _ in range(repeat)]
        return CellResult(cell, samples, time.monotonic() - started)

    def _run_program(self, params: SendParams, pressure: load.PressureSpec | None) -> SendResult:
        """One run of the user's program under this cell's knobs and hogs (killed on any way out)."""
        assert self.argv is not None
        cpu = params.cpu if isinstance(params.cpu, int) else None
        self.runner = external.ProcessRunner(self.topo, self.sysctls, self.probe, pressure, params.receiver_cpu)
        try:
            return self.runner.run(self.argv, params.duration, cpu, None)
        finally:
            self.runner.kill()  # nothing left if it was interrupted; a no-op after a normal end
            self.runner = None


# --- what the sweep found --------------------------------------------------------------------------------------


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MB"
    return f"{n >> 10} KB" if n % 1024 == 0 else f"{n} B"


def baseline(grid: Grid, found: dict[str, int], base_workers: int) -> Cell:
    """The scenario as found: the first sndbuf unforced, the host's budgets, the scenario's own hogs."""
    return Cell(
        sndbuf=grid.sndbuf[0] if grid.sndbuf else None,
        force=False,
        budget=found.get(BUDGET) if grid.budget else None,
        budget_usecs=found.get(BUDGET_USECS) if grid.budget_usecs else None,
        workers=(grid.workers[0] if base_workers == 0 else base_workers) if grid.workers else None,
    )


def _changes(cell: Cell, base: Cell) -> list[tuple[str, float]]:
    """(description, magnitude) of each knob that differs from the baseline; magnitude in doublings."""
    out: list[tuple[str, float]] = []
    if cell.sndbuf is not None and base.sndbuf is not None and (cell.sndbuf, cell.force) != (base.sndbuf, base.force):
        mag = abs(math.log2(cell.sndbuf / base.sndbuf)) + (1.0 if cell.force else 0.0)
        out.append((f"sndbuf {_size(cell.sndbuf)}{' forced' if cell.force else ''}", mag))
    for name, now, was in (
        ("budget", cell.budget, base.budget),
        ("budget_usecs", cell.budget_usecs, base.budget_usecs),
    ):
        if now is not None and was is not None and now != was:
            out.append((f"{name} {now}", abs(math.log2(now / was))))
    if cell.workers is not None and base.workers is not None and cell.workers != base.workers:
        out.append((f"workers {cell.workers} (was {base.workers})", float(abs(cell.workers - base.workers))))
    return out


def describe(cell: Cell, base: Cell) -> str:
    changed = dict(_changes(cell, base))
    names = [
        ("sndbuf", cell.sndbuf),
        ("budget", cell.budget),
        ("budget_usecs", cell.budget_usecs),
        ("workers", cell.workers),
    ]
    parts = [
        next((d for d in changed if d.startswith(name + " ")), f"{name} unchanged")
        for name, v in names
        if v is not None
    ]
    return ", ".join(parts) or "the scenario as given"


def smallest_change(cells: Sequence[CellResult], base: Cell, target: float) -> str:
    """The cheapest cell whose median EAGAIN rate is at or under ``target``: fewest knobs, then smallest steps."""
    good = [c for c in cells if (c.median("eagain_rate") or 0.0) <= target]
    if not good:
        best = min(cells, key=lambda c: c.median("eagain_rate") or 0.0, default=None)
        if best is None:
            return "no cell was measured"
        return (
            f"no cell brings EAGAIN under {target:.2%}; the lowest: {describe(best.cell, base)}: "
            f"{best.median('eagain_rate') or 0:.2%}"
        )

    def cost(c: CellResult) -> tuple[bool, int, float, float]:
        ch = _changes(c.cell, base)  # a cell that trades EAGAIN for drops comes last
        return (
            (c.median("enobufs_rate") or 0.0) > target,
            len(ch),
            sum(m for _, m in ch),
            c.median("eagain_rate") or 0.0,
        )

    pick = min(good, key=cost)
    dropped = pick.median("enobufs_rate") or 0.0
    caveat = f"; but {dropped:.1%} of sends got ENOBUFS: the drop moved past the socket" if dropped > target else ""
    if not _changes(pick.cell, base):
        return (
            f"no change needed: as found, EAGAIN is {pick.median('eagain_rate') or 0:.2%} (target {target:.2%}){caveat}"
        )
    return f"{describe(pick.cell, base)}: {pick.median('eagain_rate') or 0:.2%} (target {target:.2%}){caveat}"


def table(cells: Sequence[CellResult]) -> str:
    head = f"{'cell':<58}{'EAGAIN':>9}{'ENOBUFS':>9}{'pps':>10}{'squeeze':>9}{'wfree p99':>11}{'n':>3}"
    rows = [head, "-" * len(head)]
    for c in cells:
        s = c.summary()
        p99 = s["wfree_p99_us"]
        rows.append(
            f"{c.cell.id():<58}{s['eagain_rate'] or 0:>9.2%}{s['enobufs_rate'] or 0:>9.2%}{s['pps'] or 0:>10,.0f}{s['time_squeeze'] or 0:>9.0f}"
            f"{'-' if p99 is None else f'{p99:.0f} us':>11}{len(c.samples):>3}"
        )
    return "\n".join(rows)


def tests_entries(cells: Sequence[CellResult]) -> dict[str, dict[str, Any]]:
    """One ``tests`` entry per cell, in the saved document's format, with the cell's knobs under ``sweep``."""
    return {
        c.cell.id(): {"outcome": "passed", "samples": [s.to_dict() for s in c.samples], "sweep": c.summary()}
        for c in cells
    }


def record(sweep: Sweep, grid: Grid, target: float) -> dict[str, Any]:
    """The document's ``sweep`` section: the grid, the baseline, the answer, whether it was cut short."""
    base = baseline(grid, sweep.found, sweep.base_workers)
    return {
        "grid": asdict(grid),
        "baseline": asdict(base),
        "target": target,
        "interrupted": sweep.interrupted,
        "cells": len(sweep.cells),
        "planned": grid.size(),
        "smallest_change": smallest_change(sweep.cells, base, target),
    }


def make_grid(
    sndbuf: Sequence[int] | None = None,
    force: str = "no",
    budget: Sequence[int] | None = None,
    budget_usecs: Sequence[int] | None = None,
    workers: Sequence[int] | None = None,
) -> Grid:
    """Validate the knobs' value lists into a Grid of at least two cells (ConfigError names the bad one)."""
    if force not in FORCE:
        raise ConfigError(f"force={force!r}: accepted: {', '.join(FORCE)}")
    for name, values, low, high in (
        ("sndbuf", sndbuf, 1024, 1 << 30),
        ("budget", budget, 1, 1 << 20),
        ("budget_usecs", budget_usecs, 1, 1 << 30),
        ("workers", workers, 0, 64),
    ):
        if values is not None and (
            not values or any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in values)
        ):
            raise ConfigError(f"{name}={list(values)!r}: a non-empty list of integers from {low} to {high}")
    grid = Grid(_tuple(sndbuf), FORCE[force], _tuple(budget), _tuple(budget_usecs), _tuple(workers))
    if grid.size() < 2:
        raise ConfigError(
            "a sweep needs at least two cells: give two or more values of sndbuf, budget, "
            "budget_usecs or workers (or force both)"
        )
    return grid


def _tuple(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


def check_program_grid(grid: Grid) -> None:
    """Your own program as the sender: every knob but the send buffer acts from outside it."""
    if grid.sndbuf is not None:
        raise ConfigError(
            "a sweep of your own program (--exec) cannot sweep --sndbuf: the send buffer is your "
            "program's own SO_SNDBUF, out of the plugin's reach; sweep --budget, --budget-usecs or "
            "--workers, or run your program once per buffer size"
        )

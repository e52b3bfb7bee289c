"""``udpsend sweep``: its options, the progress and table it prints, the document it writes.

The grid, its runs and what they found are results/sweep.py's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.frontend.session import SessionOptions, standalone
from pytest_udpsend.host import topology
from pytest_udpsend.host.sysctl import format_value
from pytest_udpsend.measure import external, load
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.results import store
from pytest_udpsend.results.sweep import (
    FORCE,
    CellResult,
    Grid,
    Sweep,
    check_program_grid,
    make_grid,
    record,
    table,
    tests_entries,
)


def _int_list(what: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        out = []
        for item in text.split(","):
            item = item.strip()
            scale = {"k": 1 << 10, "m": 1 << 20}.get(item[-1:].lower(), 1)
            try:
                out.append(int(item[:-1] if scale > 1 else item) * scale)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{what} {text!r}: a comma-separated list of integers (K/M suffixes), e.g. 64K,256K,8M"
                ) from None
        return tuple(out)

    return parse


def _target(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"--target {text!r}: an EAGAIN rate, a fraction (0.01) or a percentage (1%)")
    return value


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """The grid; these replace the run options' single --sndbuf (the parser resolves the conflict)."""
    g = p.add_argument_group("the grid (comma-separated lists; the first sndbuf and workers are the scenario as found)")
    g.add_argument("--sndbuf", type=_int_list("--sndbuf"), metavar="LIST", help="SO_SNDBUF sizes, e.g. 8M,64K,256K,1M")
    g.add_argument(
        "--force",
        choices=tuple(FORCE),
        help="SO_SNDBUFFORCE per size: no, yes or both (default no; yes with --force-sndbuf)",
    )
    g.add_argument(
        "--budget", type=_int_list("--budget"), metavar="LIST", help="net.core.netdev_budget values, e.g. 8,64,300"
    )
    g.add_argument(
        "--budget-usecs", type=_int_list("--budget-usecs"), metavar="LIST", help="net.core.netdev_budget_usecs values"
    )
    g.add_argument(
        "--workers",
        type=_int_list("--workers"),
        metavar="LIST",
        help="CPU hogs on the --cpu-pressure CPUs (default CPU 1), e.g. 2,1,0",
    )
    g.add_argument("--target", type=_target, default=0.01, help="the EAGAIN rate to get under (default 1%%)")
    p.set_defaults(udpsend_json="udpsend-sweep.json")


def grid_from(args: argparse.Namespace) -> Grid:
    force = args.force or ("yes" if args.force_sndbuf else "no")
    return make_grid(args.sndbuf, force, args.budget, args.budget_usecs, args.workers)


def _program(args: argparse.Namespace, grid: Grid) -> list[str] | None:
    """``--exec -- CMD ARGS``: the user's program, checked before anything is built (None: the built-in sender)."""
    if getattr(args, "exec_argv", None) is None:
        return None
    check_program_grid(grid)
    argv, _ = external.check_args(args.exec_argv, args.duration, args.cpu, None)
    return argv


def _show_output(process: dict[str, Any]) -> None:
    """What the failed program printed, after the one-sentence error."""
    for name in ("stdout", "stderr"):
        if process.get(name):
            print(f"--- {name} of {process['argv'][0]} ---\n{process[name]}", end="", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    """``udpsend sweep``: measure the grid, print the table and the answer, write the document (also when cut short)."""
    grid = grid_from(args)
    argv = _program(args, grid)
    spec = topology.make_spec(
        rps_cpus=args.rps_cpus,
        qdisc=args.qdisc,
        gro=args.gro,
        threaded_napi=args.threaded_napi,
        napi_cpus=args.napi_cpus,
        mtu=args.mtu,
        ipv6=args.ipv6,
    )
    params = make_params(
        duration=args.duration,
        payload=args.payload,
        rate=args.rate,
        cpu=args.cpu,
        ipv6=args.ipv6,
        receiver_cpu=args.receiver_cpu,
        mode=args.mode,
        batch=args.batch,
        gso_size=args.gso_size,
        flows=args.flows,
        threads=args.threads,
        **{k: getattr(args, k) for k in ("replay", "speed", "loop", "replay_filter", "replay_mtu")},
    )
    if argv is not None and params.replay is not None:
        raise ConfigError(
            "--replay sends a capture with the plugin's sender, --exec runs your program as the sender: use one of them"
        )
    pressure = load.make_spec(*args.cpu_pressure) if args.cpu_pressure else None  # as `udpsend run` reads it
    repeat = args.udpsend_repeat
    print(f"udpsend sweep: {grid.size()} cells x {repeat} sample(s) of {params.duration:g} s", file=sys.stderr)

    def progress(i: int, total: int, c: CellResult) -> None:
        print(
            f"udpsend sweep: {i}/{total} {c.cell.id()}: EAGAIN {c.median('eagain_rate') or 0:.2%} ({c.wall_s:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    started = time.monotonic()
    sweep: Sweep | None = None
    env: dict[str, Any] = {}
    try:
        with standalone(
            SessionOptions(backend=args.udpsend_backend, repeat=repeat), {k: format_value(v) for k, v in args.sysctl}
        ) as ctx:
            topo = topology.build(spec, ctx.undo, ctx.session.subnets, hint="sweep")
            ctx.apply_marked_to(topo)
            probe = ctx.session.probe()
            ctx.exclusive()
            env = store.environment(probe.backend)  # the host as found, read under the lock before any cell
            sweep = Sweep(topo, ctx.sysctls, ctx.exclusive, probe, params, pressure, argv)
            try:
                sweep.run(grid, repeat, progress)
            except external.ProgramError as exc:
                _show_output(exc.output)
                raise
    finally:  # also on Ctrl-C: the host is restored by now; keep what was measured
        if sweep is not None:
            wall = time.monotonic() - started
            doc = store.document(env, tests_entries(sweep.cells))
            doc["sweep"] = {**record(sweep, grid, args.target), "wall_s": round(wall, 2)}
            store.write(args.udpsend_json, doc)
            print(table(sweep.cells))
            print(f"smallest change: {doc['sweep']['smallest_change']}")
            print(f"{len(sweep.cells)}/{grid.size()} cells in {wall:.1f} s; saved {args.udpsend_json}")
    return 0

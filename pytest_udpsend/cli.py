"""The ``udpsend`` command: doctor, run, compare, merge, report, record.

Options that also exist for pytest (--backend, --json, --repeat, ...) come from
``options.py``, so both share one definition and one help text.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from pytest_udpsend.errors import ConfigError, UdpsendError
from pytest_udpsend.frontend import calibrate, options, sweep
from pytest_udpsend.host import cpus, outfile, topology
from pytest_udpsend.host.undo import UndoFailed
from pytest_udpsend.measure import load
from pytest_udpsend.measure.params import make_params


def _sysctl_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=VALUE, e.g. net.core.netdev_budget=8")
    return name.strip(), value.strip()


def _cpu_list(text: str) -> list[int]:
    """The marker's forms: a CPU list as taskset -c takes it ("1-3,5", "1-1") or a sysfs hex mask ("2")."""
    try:
        return list(cpus.parse(text, "CPUS"))
    except UdpsendError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pressure(text: str) -> tuple[list[int], int]:
    cpu_text, _, workers = text.partition(":")
    try:
        count = int(workers or 2)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: CPUS[:WORKERS], e.g. 2:2 (mask 2 = CPU 1, two hogs) or 1-1:2"
        ) from None
    return _cpu_list(cpu_text), count


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The scenario, as the markers would describe it."""
    g = p.add_argument_group("topology (the topology marker)")
    g.add_argument(
        "--rps-cpus",
        type=_cpu_list,
        metavar="CPUS",
        help="RPS CPUs of the receiver veth: a hex mask as sysfs takes it (2 = CPU 1, 1,00000000 = CPU 32) "
        "or a CPU list as taskset -c takes it (1-3,5; 1-1 = CPU 1)",
    )
    g.add_argument("--qdisc", help='root qdisc of the sender veth, e.g. "tbf rate 200mbit burst 32kb latency 50ms"')
    g.add_argument("--gro", action="store_true", help="GRO on the receiver veth, with UDP on its NAPI path")
    g.add_argument("--threaded-napi", action="store_true", help="threaded NAPI on the receiver veth (needs --gro)")
    g.add_argument(
        "--napi-cpus", type=_cpu_list, metavar="CPUS", help="pin the threaded-NAPI kthread (needs --threaded-napi)"
    )
    g.add_argument("--mtu", type=int, default=1500)
    g = p.add_argument_group("host (the sysctl and cpu_pressure markers)")
    g.add_argument(
        "--sysctl",
        type=_sysctl_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a sysctl for the run (repeatable); restored afterwards",
    )
    g.add_argument(
        "--cpu-pressure",
        type=_pressure,
        metavar="CPUS[:WORKERS]",
        help="CPU hogs during the run: CPUS as for --rps-cpus, e.g. 2:2 (two hogs on CPU 1)",
    )
    g = p.add_argument_group("sender (the udpsend marker)")
    g.add_argument("--duration", type=float, default=2.0, help="seconds (default 2.0)")
    g.add_argument("--payload", type=int, default=1400, help="bytes per datagram (default 1400)")
    g.add_argument("--sndbuf", type=int, help="SO_SNDBUF to request (default: the kernel's)")
    g.add_argument("--force-sndbuf", action="store_true", help="use SO_SNDBUFFORCE (not clamped by wmem_max)")
    g.add_argument("--rate", type=float, help="packets/s (default: as fast as possible)")
    g.add_argument("--cpu", type=int, help="CPU to pin the sender to")
    g.add_argument("--receiver-cpu", type=int, help="CPU to pin the draining receiver to")
    g.add_argument("--ipv6", action="store_true")
    g.add_argument(
        "--mode", choices=("send", "sendto", "sendmmsg", "gso"), default="send", help="send pattern (default send)"
    )
    g.add_argument("--batch", type=int, default=32, help="messages per sendmmsg() call (--mode sendmmsg; default 32)")
    g.add_argument("--gso-size", type=int, help="UDP_SEGMENT bytes per wire segment (--mode gso)")
    g.add_argument("--flows", type=int, default=1, help="sockets per sender thread, round-robin (default 1)")
    g.add_argument("--threads", type=int, default=1, help="pinned sender threads, each with its own socket(s)")
    g.add_argument("--wfree", action="store_true", help="measure sock_wfree timing with the chosen backend")
    g = p.add_argument_group(
        "replay (the udpsend marker's replay=): a capture's UDP datagrams, sizes and gaps, sent once"
    )
    g.add_argument(
        "--replay",
        metavar="PATH",
        help="a pcap or pcapng capture, or a built-in shape (shape:telemetry, "
        "shape:media, shape:dns); the capture sets what --duration and --payload would",
    )
    g.add_argument(
        "--speed", type=float, default=1.0, help="scale the capture's clock (2: twice as fast; 0: as fast as possible)"
    )
    g.add_argument("--loop", type=int, default=1, help="passes through the capture (default 1)")
    g.add_argument(
        "--replay-filter",
        metavar="WORDS",
        help='datagrams to keep, e.g. "dst=10.0.0.2 dport=53" (src, dst, host, sport, dport, port)',
    )
    g.add_argument(
        "--replay-mtu",
        type=int,
        default=1500,
        help="the capture link's MTU: a larger unfragmented UDP record is a GSO/GRO super-packet (default 1500)",
    )
    g.add_argument(
        "--exec",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS",
        dest="exec_argv",
        help="run your own program as the sender instead (last option; destination in UDPSEND_DST, "
        "UDPSEND_DST6, UDPSEND_PORT), for --duration or until it exits",
    )
    options.add_options(p.add_argument, [options.BACKEND, options.JSON, options.REPEAT], short=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udpsend", description="UDP send-path regression tests (pytest-udpsend)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("doctor", help="what this host can do, each line with the fix")
    run = sub.add_parser("run", help="run one scenario and print the result table")
    add_run_options(run)
    cmp = sub.add_parser(
        "compare",
        help="the regression table of NEW against BASELINE; exit 1 on regression",
        description="udpsend compare BASELINE.json NEW.json, or many files (paths or quoted globs) per "
        "side: udpsend compare BASE... --new NEW... (--new last), or one file written with "
        "--udpsend-interleave: its candidate arms against its baseline arms by the paired rule.  Results are grouped by "
        "what made them differ (kernel, CPU model, hostname, --udpsend-label), one table "
        "per group; exit 1 if any group regressed, 2 if any was refused, else 0",
    )
    cmp.add_argument("baseline", nargs="+", metavar="BASELINE.json")
    cmp.add_argument("--new", nargs="+", action="extend", metavar="NEW.json", help="the new side (paths or globs)")
    options.add_gate_flags(cmp)
    mrg = sub.add_parser("merge", help="write one results document from many (e.g. a CI matrix's artifacts)")
    mrg.add_argument("output", metavar="OUT.json")
    mrg.add_argument("inputs", nargs="+", metavar="IN.json", help="result files, paths or quoted globs")
    prep = sub.add_parser(
        "prepare-kernel", help="fetch and unpack a Debian kernel (with headers, qemu, bcc) for --udpsend-kernel"
    )
    prep.add_argument("version", help="e.g. 6.1.0-56-amd64 or 6.12.95+deb12-amd64 (bookworm-backports)")
    prep.add_argument("dest", nargs="?", help="where to unpack (default .kernels/VERSION here)")
    swp = sub.add_parser(
        "sweep",
        help="one scenario across a grid of the remedies' knobs; names the smallest change that "
        "brings EAGAIN under --target",
        conflict_handler="resolve",
    )
    add_run_options(swp)
    sweep.add_sweep_options(swp)  # its --sndbuf LIST replaces the run options' --sndbuf
    cal = sub.add_parser(
        "calibrate", help="run tests many times; per test and metric, the spread and the bound it supports"
    )
    calibrate.add_calibrate_options(cal)
    rep = sub.add_parser("report", help="a self-contained HTML report with plots")
    rep.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS.json",
        help="one or many result files (paths or quoted globs); many are grouped as udpsend compare groups them",
    )
    rep.add_argument(
        "--baseline",
        metavar="BASELINE.json",
        nargs="+",
        action="extend",
        default=[],
        help="add baseline-versus-new plots (one or many files, paths or quoted globs; after RESULTS); the verdicts are those "
        "the gate recorded in RESULTS, recomputed only where gate flags are given or RESULTS has none",
    )
    options.add_gate_flags(rep)
    rep.add_argument("-o", "--output", required=True, metavar="report.html")
    rec = sub.add_parser(
        "record",
        help="a live process's UDP sends (sizes, times, failures; no payload) as a pcapng that "
        "--replay reads; exit 1 if events were lost",
    )
    rec.add_argument("--pid", type=int, required=True, help="the process to record (all its threads)")
    rec.add_argument("--duration", type=float, metavar="S", help="seconds (default: until the process exits or Ctrl-C)")
    rec.add_argument("-o", "--output", required=True, metavar="SHAPE.pcapng", help="the file to write (pcapng)")
    return parser


class Progress:
    """A progress line on stderr while a run measures (rewritten in place on a terminal)."""

    def __init__(self, total_s: float) -> None:
        self.total = total_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        start, tty = time.monotonic(), sys.stderr.isatty()
        step = 0.2 if tty else 1.0
        if not tty:
            sys.stderr.write(f"udpsend: measuring for {self.total:.1f} s\n")
        while not self._stop.wait(step):
            done = min(time.monotonic() - start, self.total)
            line = f"udpsend: measuring {done:4.1f}/{self.total:.1f} s"
            sys.stderr.write(("\r" + line) if tty else (line + "\n"))
            sys.stderr.flush()
        if tty:
            sys.stderr.write("\r" + " " * 40 + "\r")

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cmd_run(args: argparse.Namespace) -> int:
    from pytest_udpsend.frontend.session import SessionOptions, standalone
    from pytest_udpsend.host.sysctl import format_value
    from pytest_udpsend.measure.sender import UdpSender
    from pytest_udpsend.results import store

    spec = topology.make_spec(
        rps_cpus=args.rps_cpus,
        qdisc=args.qdisc,
        gro=args.gro,
        threaded_napi=args.threaded_napi,
        napi_cpus=args.napi_cpus,
        mtu=args.mtu,
        ipv6=args.ipv6,
    )
    pressure = load.make_spec(*args.cpu_pressure) if args.cpu_pressure else None
    params = make_params(
        duration=args.duration,
        payload=args.payload,
        sndbuf=args.sndbuf,
        force_sndbuf=args.force_sndbuf,
        rate=args.rate,
        cpu=args.cpu,
        ipv6=args.ipv6,
        receiver_cpu=args.receiver_cpu,
        mode=args.mode,
        batch=args.batch,
        gso_size=args.gso_size,
        flows=args.flows,
        threads=args.threads,
        **replay_args(args),
    )
    options = SessionOptions(backend=args.udpsend_backend, repeat=args.udpsend_repeat)
    with standalone(options, {k: format_value(v) for k, v in args.sysctl}) as ctx:
        session = ctx.session
        topo = topology.build(spec, ctx.undo, session.subnets, hint="cli")
        ctx.apply_marked_to(topo)
        probe: Callable[[], Any] = session.probe if args.wfree else (lambda: None)
        sender = UdpSender(topo, ctx.sysctls, ctx.exclusive, probe, pressure)
        program = _program(args, topo, ctx, probe, pressure, sender.results)
        samples = []
        for i in range(args.udpsend_repeat):
            with (
                Progress(params.duration) if params.replay is None else contextlib.nullcontext()
            ):  # a replay: its capture's time
                samples.append(program() if program else sender.run(**params.as_dict()))
            print(("" if i == 0 else "\n") + samples[-1].summary())
    if args.udpsend_json:
        env = store.environment(session.backend_choice()[0])
        store.write(
            args.udpsend_json,
            store.document(env, {"udpsend run": {"outcome": "passed", "samples": [s.to_dict() for s in samples]}}),
        )
        print(f"saved {args.udpsend_json}")
    return 0


def replay_args(args: argparse.Namespace) -> dict[str, Any]:
    """The replay options as make_params takes them; refused beside --exec, whose program sends instead."""
    if args.replay is not None and getattr(args, "exec_argv", None) is not None:
        raise ConfigError(
            "--replay sends a capture with the plugin's sender, --exec runs your program as the sender: use one of them"
        )
    return {
        "replay": args.replay,
        "speed": args.speed,
        "loop": args.loop,
        "replay_filter": args.replay_filter,
        "replay_mtu": args.replay_mtu,
    }


def _program(
    args: argparse.Namespace, topo: Any, ctx: Any, probe: Callable[[], Any], pressure: Any, results: list[Any]
) -> Callable[[], Any] | None:
    """``--exec -- CMD ARGS``: one run of the user's program, killed on exit of the command."""
    if args.exec_argv is None:
        return None
    argv = list(args.exec_argv)
    from pytest_udpsend.measure.external import SenderProcess

    proc = SenderProcess(topo, ctx.sysctls, ctx.exclusive, probe, pressure, results)
    ctx.undo.push("kill the sender process", proc.close)
    return lambda: proc.run(argv, duration=args.duration, cpu=args.cpu)


def cmd_doctor(args: argparse.Namespace) -> int:
    from pytest_udpsend.frontend.doctor import run_checks

    return run_checks()


def cmd_compare(args: argparse.Namespace) -> int:
    from pytest_udpsend.results import fanin

    options.gate_settings(
        args.tolerance, args.alpha, args.metrics, args.allow_mixed, where="udpsend compare"
    )  # validate
    base, new = args.baseline, args.new
    if not new and len(base) == 1:  # one --udpsend-interleave document: its arms, by the paired rule
        return _compare_arms(base[0], args)
    if not new:  # the two-file form: udpsend compare BASELINE.json NEW.json
        if len(base) != 2:
            raise ConfigError(
                f"{len(base)} file(s) given without --new: write udpsend compare BASELINE.json NEW.json, "
                "or udpsend compare BASE... --new NEW..."
            )
        base, new = base[:1], base[1:]
    return fanin.compare_sides(base, new, _gate_flags(args))


def _compare_arms(path: str, args: argparse.Namespace) -> int:
    """Exit 1 if a candidate regressed, 2 if the document cannot be judged, else 0."""
    from pytest_udpsend.results import paired, store

    doc = store.load(path)
    if not paired.records(doc):
        raise ConfigError(
            f"{path} has no interleaved tests (--udpsend-interleave): to compare two runs, write "
            "udpsend compare BASELINE.json NEW.json"
        )
    flags = _gate_flags(args)
    rows, level, refused = paired.judge_document(doc, flags["tolerance"], flags["alpha"], flags["metrics"])
    if refused:
        print(f"udpsend compare: {path}: {refused}", file=sys.stderr)
        return 2
    for test in dict.fromkeys(r.test for r in rows):
        mine = [r for r in rows if r.test == test]
        print(f"{test} [{'control' if mine[0].control else 'candidate'}]")
        print(paired.table(mine, level))
    bad = sorted({r.test for r in rows if r.regressed and not r.control})
    moved = sorted({r.test for r in rows if r.regressed and r.control})
    print(
        f"{len(bad)} candidate(s) regressed"
        + (f": {', '.join(bad)}" if bad else "")
        + (f"; {len(moved)} control(s) moved (the host was noisy): {', '.join(moved)}" if moved else "")
    )
    return 1 if bad else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from pytest_udpsend.results import fanin

    return fanin.write_merged(args.output, args.inputs)


def _gate_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The gate flags the user gave (None: not given), as compare.Settings fields."""
    metrics = tuple(args.metrics) if args.metrics else None
    return {"tolerance": args.tolerance, "alpha": args.alpha, "metrics": metrics, "allow_mixed": args.allow_mixed}


def cmd_prepare_kernel(args: argparse.Namespace) -> int:
    """Runs the packaged script; its last line is the kernel image path."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).with_name("lane") / "prepare-kernel.sh"
    argv = ["bash", str(script), args.version] + ([args.dest] if args.dest else [])
    return subprocess.run(argv, env={**os.environ, "UDPSEND_PYTHON": sys.executable}).returncode


def cmd_report(args: argparse.Namespace) -> int:
    from pytest_udpsend.results.fanin_report import write_report

    options.gate_settings(
        args.tolerance, args.alpha, args.metrics, args.allow_mixed, where="udpsend report"
    )  # validate
    write_report(args.results, args.output, args.baseline, _gate_flags(args))
    print(f"wrote {args.output}")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from pytest_udpsend.measure import record

    if args.duration is not None and not args.duration > 0:
        raise ConfigError(
            f"--duration {args.duration}: give a number of seconds above 0, or leave it out to record until the process exits"
        )
    rec = record.record(args.pid, args.output, args.duration)
    print(rec.summary())
    return 1 if rec.lost else 0


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: every file the command will write can be written (one sentence if not)."""
    out = getattr(args, "output", None)
    if out:
        outfile.check_target(out, "OUT.json" if args.command == "merge" else "-o")
    if getattr(args, "udpsend_json", None):
        outfile.check_target(args.udpsend_json, "--json")


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # so that the undo stack runs on SIGTERM as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    program = None
    if "--exec" in argv:  # everything after it is the user's command (argparse would stop at its "--")
        at = argv.index("--exec")
        argv, program = argv[:at], argv[at + 1 :]
        program = program[1:] if program[:1] == ["--"] else program
    args = parser.parse_args(argv)
    if program is not None and "exec_argv" not in vars(args):  # it would be silently ignored
        where = f"udpsend {args.command}" if args.command else "udpsend"
        print(
            f"{where}: --exec runs your program as the sender, an option of udpsend run and udpsend sweep only; "
            "drop it here",
            file=sys.stderr,
        )
        return 2
    if program is not None:
        args.exec_argv = program
    commands = {
        "run": cmd_run,
        "doctor": cmd_doctor,
        "compare": cmd_compare,
        "report": cmd_report,
        "merge": cmd_merge,
        "prepare-kernel": cmd_prepare_kernel,
        "sweep": sweep.run_command,
        "calibrate": calibrate.run_command,
        "record": cmd_record,
    }
    if args.command not in commands:
        parser.print_help()
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        check_outputs(args)
        return commands[args.command](args)
    except (UdpsendError, UndoFailed) as exc:  # user mistakes only: a bug's ValueError keeps its traceback
        print(f"udpsend {args.command}: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"udpsend {args.command}: {exc.strerror}: {exc.filename}: run it as root (sudo).", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"udpsend {args.command}: interrupted; everything it changed was undone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

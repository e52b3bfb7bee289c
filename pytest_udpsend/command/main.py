"""The ``udpsend`` command: its parser, the dispatch to each subcommand, the exit statuses of user errors.

doctor, run, compare, merge, report, record, sweep, calibrate, prepare-kernel.  Options that also exist
for pytest (--backend, --json, --repeat, ...) come from ``frontend/options.py``, so both share one
definition and one help text.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn

from pytest_udpsend.command import calibrate, compare, run, sweep
from pytest_udpsend.errors import ConfigError, UdpsendError
from pytest_udpsend.frontend import options
from pytest_udpsend.host import outfile
from pytest_udpsend.host.undo import UndoFailed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udpsend", description="UDP send-path regression tests (pytest-udpsend)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("doctor", help="what this host can do, each line with the fix")
    run_parser = sub.add_parser("run", help="run one scenario and print the result table")
    run.add_run_options(run_parser)
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
    run.add_run_options(swp)
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from pytest_udpsend.command.doctor import run_checks

    return run_checks()


def cmd_prepare_kernel(args: argparse.Namespace) -> int:
    """Runs the packaged script; its last line is the kernel image path."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "lane" / "prepare-kernel.sh"
    argv = ["bash", str(script), args.version] + ([args.dest] if args.dest else [])
    return subprocess.run(argv, env={**os.environ, "UDPSEND_PYTHON": sys.executable}).returncode


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
        "run": run.cmd_run,
        "doctor": cmd_doctor,
        "compare": compare.cmd_compare,
        "report": compare.cmd_report,
        "merge": compare.cmd_merge,
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

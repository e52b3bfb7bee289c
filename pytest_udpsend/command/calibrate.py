"""``udpsend calibrate``: run chosen tests many times and say what their bounds may claim.

    udpsend calibrate -n 50 [-o calibration.json] -- examples -k rps
    udpsend calibrate --from runs/*.json          # analyse runs already made

Each run is a plain ``pytest ... --udpsend-json`` in a child process, one after the other
(measurements never overlap).  At the end: how many runs passed, which tests failed how
often, and per kernel, test, sample and metric the observed distribution with the bound
that ``--content`` of future runs would keep (``results/calibration.py`` says how).
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.frontend.session import interrupt_on_sigterm
from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.results import calibration


def add_calibrate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--runs", type=int, default=20, help="how many pytest runs (default 20)")
    p.add_argument(
        "--content",
        type=float,
        default=0.999,
        help="share of future runs a bound must hold for (default 0.999: one false fail in 1000 runs)",
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence in that share over the runs seen (default 0.95)"
    )
    p.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        metavar="RUN.json",
        default=[],
        help="analyse these --udpsend-json files (paths or quoted globs) instead of running pytest",
    )
    p.add_argument("--keep", metavar="DIR", help="keep each run's --udpsend-json file in DIR")
    p.add_argument("-o", "--output", metavar="calibration.json", help="write the fits as JSON")
    p.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        metavar="-- PYTEST ARGS",
        help="what to run, as you would give it to pytest (after --)",
    )


def _check(args: argparse.Namespace) -> None:
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: give at least 1 run (50 or more to argue for a bound)")
    for name in ("content", "confidence"):
        value = getattr(args, name)
        if not 0.5 <= value < 1:
            raise ConfigError(f"--{name} {value}: give a share in [0.5, 1), e.g. 0.999")
    if not args.from_files and not [a for a in args.pytest_args if a != "--"]:
        raise ConfigError("nothing to run: give the tests after --, e.g. udpsend calibrate -n 50 -- examples")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run pytest; if this command is stopped (Ctrl-C, SIGTERM), stop pytest with SIGTERM so that it
    undoes its changes and stops a kernel-lane guest, rather than leaving it running."""
    interrupt_on_sigterm()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:
            proc.terminate()
            proc.communicate(timeout=300)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _one_run(i: int, argv: list[str], out: Path) -> tuple[int, list[str]]:
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--udpsend-json", str(out), *argv]
    proc = _run(cmd)
    if proc.returncode != 0:  # why, next to the run's document (kept with --keep)
        out.with_suffix(".log").write_text(proc.stdout + proc.stderr)
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    last = (proc.stdout.strip().splitlines() or ["?"])[-1]
    print(f"run {i + 1:3d}: exit {proc.returncode}  {time.monotonic() - started:6.1f} s  {last}", flush=True)
    for line in proc.stdout.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            print(f"         {line[:200]}")
    if proc.returncode not in (0, 1):  # not a test failure: pytest itself could not run them
        raise ConfigError(
            f"pytest exited with {proc.returncode} (usage or internal error): {(proc.stderr or proc.stdout).strip()[-600:]}"
        )
    return proc.returncode, failed


def _load(paths: list[str]) -> list[dict[str, Any]]:
    files = [p for pattern in paths for p in (sorted(glob.glob(pattern)) or [pattern])]
    docs = []
    for path in files:
        try:
            docs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read a results document ({exc}); give --udpsend-json files") from None
    return docs


def run_command(args: argparse.Namespace) -> int:
    _check(args)
    argv = [a for a in args.pytest_args if a != "--"]
    failures: dict[str, int] = {}
    passed = runs = 0
    if args.from_files:
        docs = _load(args.from_files)
    else:
        docs = []
        keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="udpsend-calibrate-"))
        keep.mkdir(parents=True, exist_ok=True)
        for i in range(args.runs):
            out = keep / f"run{i + 1:03d}.json"
            rc, failed = _one_run(i, argv, out)
            runs += 1
            passed += rc == 0
            for test in failed:
                failures[test] = failures.get(test, 0) + 1
            if out.exists():
                docs.append(json.loads(out.read_text()))
        print(f"\n{passed} of {runs} runs passed; the runs' files are in {keep}")
        for test, count in sorted(failures.items()):
            print(f"  failed {count} of {runs}: {test}")
    fits = calibration.fit_all(docs, args.content, args.confidence)
    print(f"\n{len(docs)} documents; bounds for {args.content:.1%} of runs at {args.confidence:.0%} confidence\n")
    print(calibration.table(fits))
    if args.output:
        env = docs[0].get("environment", {}) if docs else {}
        doc = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {k: env.get(k) for k in ("hostname", "cpu_model", "cpu_count", "kernel", "virtualized")},
            "runs": runs or len(docs),
            "passed": passed if runs else None,
            "failures": failures,
            "content": args.content,
            "confidence": args.confidence,
            "fits": [f.row() for f in fits],
        }
        atomic_write(args.output, json.dumps(doc, indent=1, default=str) + "\n")
        print(f"\nwrote {args.output}")
    return 0 if passed == runs else 1

#!/usr/bin/env python3
"""Benchmark: does the baseline gate hold across a suite and across sessions, as a user runs it?

A 10-test suite is written to a temporary directory: nine variants of the RPS scenario
(RPS to CPU 1, netdev_budget 8, sender on CPU 0, receiver drained on CPU 1, 0.3 s runs;
payload x SO_SNDBUF) and one test whose sender veth is shaped by a tbf qdisc.  Then, as
a user would, with plain pytest sessions:

  baseline     pytest --udpsend-repeat N --udpsend-json base.json        (one session)
  candidate    pytest --udpsend-repeat N --udpsend-baseline base.json    (one session each)

  A/A          nothing changed: any test flagged is a false alarm
  A/B -50%     the shaped test's tbf rate halved: it must be flagged, the others not
  A/B -25% ... smaller cuts of that rate: the gate's resolution at this cost

A fresh baseline session is taken every --per-baseline candidates, so that one unlucky
baseline session does not decide every repetition.  With --history K the baseline is instead
K sessions merged by ``udpsend merge`` (taken afresh for each experiment): the document then
carries each test's own noise floors (results/floors.py, from at least 5 sessions), which the
gate uses in place of the global ones; the learned floors are printed.  Prints, per experiment, the runs with
any test flagged, how often the shaped test and the others were flagged, the wall time
per candidate session and the samples per test.  Run as root; not a test (it reports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATE_MBIT = 100  # the shaped test's tbf rate when nothing changed
SHAPED = "test_suite.py::test_shaped"
SUITE = """
import os
import pytest

RATE = float(os.environ.get("GATE_TBF_MBIT", "{rate}"))
COMMON = dict(duration=0.3, cpu=0, receiver_cpu=1)


VARIANTS = [pytest.param(p, s, marks=pytest.mark.udpsend(payload=p, sndbuf=s, **COMMON), id=f"{{p}}B-{{s}}")
            for p in (256, 800, 1400) for s in (8192, 32768, 131072)]


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({{"net.core.netdev_budget": 8}})
@pytest.mark.parametrize("payload,sndbuf", VARIANTS)
def test_rps(udpsend_result, payload, sndbuf):
    pass


@pytest.mark.topology(rps_cpus=[1], qdisc=f"tbf rate {{RATE:g}}mbit burst 32kb latency 20ms")
@pytest.mark.sysctl({{"net.core.netdev_budget": 8}})
@pytest.mark.udpsend(sndbuf=8192, **COMMON)
def test_shaped(udpsend_result):
    pass
"""


def session(
    workdir: Path, repeat: int, rate: float, out: Path, baseline: Path | None
) -> tuple[float, set[str], int, str]:
    """One pytest session of the suite; (wall time, tests the gate flagged, exit code, problem)."""
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "test_suite.py",
        "--udpsend-require-privileges",
        "--udpsend-repeat",
        str(repeat),
        "--udpsend-json",
        str(out),
    ]
    if baseline is not None:
        argv += ["--udpsend-baseline", str(baseline)]
    out.unlink(missing_ok=True)  # never read the previous session's document
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=workdir, env={**os.environ, "GATE_TBF_MBIT": f"{rate:g}"}, capture_output=True, text=True
    )
    wall = time.monotonic() - started
    problem = "" if done.returncode in (0, 1) else (done.stdout + done.stderr)[-1500:]
    if not out.exists():
        return wall, set(), done.returncode, problem or (done.stdout + done.stderr)[-1500:]
    doc = json.loads(out.read_text())
    broken = [k for k, v in doc["tests"].items() if v.get("outcome") != "passed" and not v.get("samples")]
    if broken:  # a test that errored measured nothing: the session says nothing about the gate
        problem += f" tests without samples: {broken}"
    shaped = [s["pps"] for k, v in doc["tests"].items() if k.endswith(SHAPED) for s in v.get("samples", [])]
    if shaped:  # whether a cut of the tbf rate changed what the shaped test measures at all
        print(f"    shaped test at {rate:g} mbit: median {statistics.median(shaped):,.0f} pps", flush=True)
    rows = (doc.get("gate") or {}).get("rows", [])
    flagged = {r["test"] for r in rows if r["verdict"] == "regression"}
    for r in rows:
        if r["verdict"] == "regression":
            print(
                f"    flagged {r['test'].split('::')[-1]} {r['metric']} {r['base_median']:.4g} -> {r['new_median']:.4g} "
                f"p {r['p_value']:.2g}",
                flush=True,
            )
    unjudged = {r["test"] for r in rows if r["verdict"] in ("too few samples", "measured differently", "no baseline")}
    if unjudged:
        problem = f"not judged: {sorted(unjudged)}"
    missing = [k for k, v in doc["tests"].items() if len(v.get("samples", [])) != repeat]
    if missing or len(doc["tests"]) != 10:
        problem += f" {len(doc['tests'])} of 10 tests measured; wrong sample count in {missing}"
    return wall, flagged, done.returncode, problem


def history(workdir: Path, repeat: int, sessions: int) -> Path:
    """A baseline of several sessions merged into one document, which then carries per-test floors."""
    parts = []
    for i in range(sessions):
        part = workdir / f"hist-{i}.json"
        _, _, rc, problem = session(workdir, repeat, RATE_MBIT, part, None)
        if rc != 0 or problem:
            sys.exit(f"baseline session {i + 1} failed (exit {rc}): {problem}")
        parts.append(str(part))
    base = workdir / "base.json"
    base.unlink(missing_ok=True)
    udpsend = Path(sys.executable).with_name("udpsend")
    subprocess.run([str(udpsend), "merge", str(base), *parts], check=True, capture_output=True, text=True)
    from pytest_udpsend.results import fanin  # the pooling --udpsend-baseline does on load, floors learned

    pooled, why = fanin.pool(fanin.units_of(json.loads(base.read_text()), str(base)))
    floors = (pooled or {}).get("floors") or {}
    if len(floors) != 10:
        sys.exit(f"the merged baseline has floors for {len(floors)} of 10 tests ({why or 'pooled'})")
    for test, by_metric in sorted(floors.items()):
        shown = ", ".join(
            f"{m} x{f['factor']:.3g}" for m, f in sorted(by_metric.items()) if m in ("pps", "eagain_rate")
        )
        print(f"    floors {test.split('::')[-1]}: {shown}", flush=True)
    return base


def experiment(workdir: Path, name: str, rate: float, reps: int, repeat: int, per_baseline: int, sessions: int) -> None:
    runs_flagged = shaped = others = 0
    walls: list[float] = []
    detail: list[str] = []
    base = history(workdir, repeat, sessions) if sessions else workdir / "base.json"
    for rep in range(reps):
        if not sessions and rep % per_baseline == 0:
            _, _, rc, problem = session(workdir, repeat, RATE_MBIT, base, None)
            if rc != 0 or problem:
                sys.exit(f"baseline session failed (exit {rc}): {problem}")
        wall, flagged, rc, problem = session(workdir, repeat, rate, workdir / "cand.json", base)
        if problem:
            print(f"  {name} repetition {rep + 1}: {problem}", flush=True)
        walls.append(wall)
        runs_flagged += bool(flagged)
        shaped += any(t.endswith(SHAPED) for t in flagged)
        others += sum(1 for t in flagged if not t.endswith(SHAPED))
        if flagged:
            detail.append(f"rep {rep + 1}: {', '.join(sorted(t.split('::')[-1] for t in flagged))}")
        print(
            f"  {name} {rep + 1}/{reps}: {wall:.0f} s, flagged {sorted(t.split('::')[-1] for t in flagged) or 'none'}",
            flush=True,
        )
    print(
        f"{name:<14} tbf {rate:g} mbit: runs with any test flagged {runs_flagged:>2}/{reps}; shaped test flagged "
        f"{shaped:>2}/{reps}; other tests flagged {others} time(s) in all; {statistics.median(walls):.0f} s per "
        f"candidate session (median), {repeat} samples per test",
        flush=True,
    )
    for line in detail:
        print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="candidate sessions per experiment (default 20)")
    parser.add_argument("-n", "--samples", type=int, default=6, help="--udpsend-repeat of every session (default 6)")
    parser.add_argument(
        "--per-baseline", type=int, default=5, help="candidate sessions per baseline session (default 5)"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="K",
        help="baseline: K sessions merged (per-test floors; K >= 5), taken once per experiment (default 0: one session)",
    )
    parser.add_argument(
        "--cuts",
        default="0,50,25,10",
        help="tbf rate cuts in percent, one experiment each; 0 is the A/A (default 0,50,25,10)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="udpsend_tolerance in the suite's ini (default: the plugin's, 0.25, which a per-test floor cannot go below)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="udpsend-gate-") as tmp:
        workdir = Path(tmp)
        ini = "[pytest]\n" + (f"udpsend_tolerance = {args.tolerance:g}\n" if args.tolerance is not None else "")
        (workdir / "pytest.ini").write_text(ini)
        (workdir / "test_suite.py").write_text(SUITE.format(rate=RATE_MBIT))
        print(
            f"suite: 10 tests, {args.samples} samples each per session, {args.reps} candidate sessions per "
            f"experiment, tolerance {args.tolerance if args.tolerance is not None else 'default (0.25)'}, "
            + (
                f"a baseline of {args.history} sessions merged"
                if args.history
                else f"a new baseline session every {args.per_baseline}"
            ),
            flush=True,
        )
        for cut in (float(c) for c in args.cuts.split(",")):
            name = "A/A" if cut == 0 else f"A/B -{cut:g}%"
            experiment(
                workdir, name, RATE_MBIT * (1 - cut / 100), args.reps, args.samples, args.per_baseline, args.history
            )


if __name__ == "__main__":
    main()

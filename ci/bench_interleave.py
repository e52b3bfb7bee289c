#!/usr/bin/env python3
"""Benchmark: what the interleaved gate (--udpsend-interleave) finds, and what it flags by mistake.

A 10-test suite is written to a temporary directory (no ini file, as a user's suite might
be): six noisy RPS scenarios (RPS to CPU 1, netdev_budget 8, payload x SO_SNDBUF), a
tbf-shaped sender, a CPU-bound sender, a sender paced into a shaped link so that a
fraction of its sends get EAGAIN, and a paced control.  Each experiment is one plain
pytest run per repetition, 0.3 s samples, tolerance 5 %, metrics pps and eagain_rate:

  aa        every test a control (``candidate()``): any test flagged is a false alarm
  changes   three candidates differ, the seven others stay controls:
              shaped    its tbf rate -10 % (20 -> 18 mbit)
              cpu       a hog on the sender's CPU capped at 20 % (cpu_max=0.2)
              eagain    the sender paced faster into the same link: the EAGAIN odds about doubled

Prints, per experiment, how often each test was flagged, the runs with any control
flagged, the wall time per run and, per test, the smallest change its N resolves (80 %
power at the family-wise level, from the measured pair spread).  Run as root; not a
test (it reports).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SUITE = '''
import os
import pytest

CHANGES = os.environ.get("IL_MODE") == "changes"
COMMON = dict(duration=0.3, cpu=0, receiver_cpu=1)
SHAPE = "tbf rate {{mbit}}mbit burst 32kb latency 20ms"


def candidate(**over):
    """In the changes experiment, the candidate's overrides; in the A/A one, a control."""
    return pytest.mark.candidate(**over) if CHANGES else pytest.mark.candidate()


VARIANTS = [pytest.param(p, s, marks=pytest.mark.udpsend(payload=p, sndbuf=s, **COMMON), id=f"{{p}}B-{{s}}")
            for p in (256, 1400) for s in (8192, 32768, 131072)]


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({{"net.core.netdev_budget": 8}})
@pytest.mark.candidate()
@pytest.mark.parametrize("payload,sndbuf", VARIANTS)
def test_rps(udpsend_result, payload, sndbuf):
    pass


@pytest.mark.topology(qdisc=SHAPE.format(mbit=20))
@pytest.mark.udpsend(sndbuf=32768, **COMMON)  # the buffer fills before the tbf's queue: EAGAIN in both arms
@candidate(topology={{"qdisc": SHAPE.format(mbit=18)}})
def test_shaped(udpsend_result):
    pass


@pytest.mark.udpsend(**COMMON)
@candidate(cpu_pressure={{"cpus": [0], "workers": 1, "cpu_max": 0.2}})
def test_cpu_bound(udpsend_result):
    pass


@pytest.mark.topology(qdisc=SHAPE.format(mbit=20))
@pytest.mark.udpsend(sndbuf=32768, rate={rate_base}, **COMMON)
@candidate(udpsend={{"rate": {rate_cand}}})
def test_eagain(udpsend_result):
    pass


@pytest.mark.udpsend(rate=20000, **COMMON)
@pytest.mark.candidate()
def test_paced(udpsend_result):
    pass
'''
CANDIDATES = ("test_shaped", "test_cpu_bound", "test_eagain")


def run_once(suite: Path, mode: str, rounds: int, out: Path) -> tuple[dict[str, dict[str, object]], float]:
    started = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(suite),
        "-q",
        "-p",
        "no:cacheprovider",
        "--udpsend-require-privileges",
        "--udpsend-interleave",
        str(rounds),
        "-o",
        "udpsend_compare_metrics=pps eagain_rate",
        "-o",
        "udpsend_tolerance=0.05",
        "--udpsend-json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "IL_MODE": mode})
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1) or not out.exists():
        sys.exit(f"pytest exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}")
    doc = json.loads(out.read_text())
    return {k.rpartition("::")[2]: v["interleave"] for k, v in doc["tests"].items() if v.get("interleave")}, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--experiments", nargs="+", default=["aa", "changes"], choices=["aa", "changes"])
    ap.add_argument("--rate-base", type=int, default=2300, help="test_eagain's paced rate (pps) in the baseline arm")
    ap.add_argument(
        "--rate-cand", type=int, default=2600, help="... and in the candidate arm (about twice the EAGAIN odds)"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep each run's --udpsend-json here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="udpsend-bench-il-"))
    suite = work / "test_suite.py"
    suite.write_text(SUITE.format(rate_base=args.rate_base, rate_cand=args.rate_cand))
    keep = Path(args.keep) if args.keep else work
    keep.mkdir(parents=True, exist_ok=True)
    print(
        f"suite: {suite}; {args.runs} run(s) per experiment, {args.rounds} rounds, tolerance 5 %, metrics pps eagain_rate"
    )
    for mode in args.experiments:
        flagged: Counter[str] = Counter()
        runs_with_control_flag, walls = 0, []
        finds: dict[str, list[float]] = {}
        arms: dict[str, list[tuple[float, float]]] = {}
        for i in range(args.runs):
            records, wall = run_once(suite, mode, args.rounds, keep / f"{mode}-{i + 1:02d}.json")
            walls.append(wall)
            control_flag = False
            for test, rec in records.items():
                bad = [r["metric"] for r in rec["paired"] if r["verdict"] == "regressed"]
                for r in rec["paired"]:
                    if r.get("resolvable"):
                        finds.setdefault(f"{test} {r['metric']}", []).append(r["resolvable"])
                    if r.get("baseline") is not None and r.get("candidate") is not None:
                        arms.setdefault(f"{test} {r['metric']}", []).append((r["baseline"], r["candidate"]))
                if bad:
                    flagged[test] += 1
                    control_flag |= bool(rec.get("control"))
            runs_with_control_flag += control_flag
            print(
                f"  {mode} run {i + 1:2d}: {wall:5.0f} s, flagged: {', '.join(sorted(t for t, r in records.items() if any(x['verdict'] == 'regressed' for x in r['paired']))) or 'none'}",
                flush=True,
            )
        print(f"\n== {mode}: {args.runs} runs, wall {statistics.median(walls):.0f} s per run (median)")
        print(f"runs with any control flagged: {runs_with_control_flag} of {args.runs}")
        for test in sorted({t for t in finds} | {f"{c} pps" for c in CANDIDATES}):
            name = test.split()[0]
            role = "candidate" if mode == "changes" and name in CANDIDATES else "control"
            f = finds.get(test, [])
            a = arms.get(test, [])
            med = (
                f"median arms {statistics.median(x for x, _ in a):.4g} -> {statistics.median(y for _, y in a):.4g}"
                if a
                else ""
            )
            print(
                f"  {test:<34} {role:<9} flagged {flagged[name]:2d}/{args.runs}  "
                f"80 % finds x{statistics.median(f):.3f} worse"
                if f
                else f"  {test:<34} {role:<9} flagged {flagged[name]:2d}/{args.runs}  (no resolution)",
                med,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

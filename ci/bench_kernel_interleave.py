#!/usr/bin/env python3
"""Benchmark: two kernels booted alternately and judged on the pairs (--udpsend-interleave with two
--udpsend-kernel and --udpsend-gate-against).

One test, the scenario of the upgrade figures (docs/benchmarks/2026-11-25.md, "held-out"): RPS to
CPU 1 with two CPU hogs there, netdev_budget 8, the default send buffer, the sender on CPU 0, one
3 s sample per boot; compared metrics eagain_rate and pps, tolerance 5 %.  One plain pytest run:

  ci/bench_kernel_interleave.py OLD NEW --rounds 6       e.g. 6.1 against 6.12 images (the lane)
  ci/bench_kernel_interleave.py host host --rounds 6     A/A: this host against itself

Prints the verdicts, the boots it took, the wall time per boot and in all.  Run as root; not a
test (it reports).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """
import pytest


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(duration=3.0, cpu=0)
def test_rps_to_a_busy_cpu(udpsend_result):
    pass
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="the reference kernel: an image path, or host")
    ap.add_argument("new", help="the other kernel: an image path, or host")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", default=None, help="keep the results document here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="udpsend-bench-kil-"))
    (work / "test_upgrade.py").write_text(SUITE)
    out = Path(args.json) if args.json else work / "run.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(work / "test_upgrade.py"),
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        "--udpsend-require-privileges",
        "--udpsend-backend",
        "timestamp",
        f"--udpsend-kernel={args.old}",
        f"--udpsend-kernel={args.new}",
        f"--udpsend-gate-against={args.old}",
        "--udpsend-interleave",
        str(args.rounds),
        "-o",
        "udpsend_compare_metrics=eagain_rate pps",
        "-o",
        "udpsend_tolerance=0.05",
        f"--udpsend-json={out}",
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - started
    print(proc.stdout[-4000:])
    if not out.exists():
        print(proc.stderr[-2000:], file=sys.stderr)
        return 2
    doc = json.loads(out.read_text())
    ref, other = doc["runs"]
    record = next(iter(other["tests"].values()))["interleave"]
    boots = 2 * len(record["rounds"])
    print(f"kernels: {ref['environment'].get('kernel')} (reference) and {other['environment'].get('kernel')}")
    print(
        f"rounds {len(record['rounds'])} ({' '.join(r['order'] for r in record['rounds'])}), {boots} boots, "
        f"wall {wall:.0f} s ({wall / boots:.0f} s per boot)"
    )

    def num(v: object, digits: int = 3) -> str:
        return "-" if not isinstance(v, (int, float)) else f"{v:.{digits}g}"

    for row in record["paired"]:
        print(
            f"  {row['metric']:<12} baseline {num(row['baseline'], 4)} candidate {num(row['candidate'], 4)} "
            f"factor x{num(row['estimate'])} [{num(row['low'])}, {num(row['high'])}] p {num(row['p'], 2)} "
            f"80 % finds x{num(row['resolvable'])}: {row['verdict']}"
        )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

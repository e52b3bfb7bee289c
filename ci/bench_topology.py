#!/usr/bin/env python3
"""Benchmark: veth topology set-up + tear-down through the `veth` fixture vs `ip` commands.

Both build the same thing: two namespaces, a veth pair between them, an IPv4
address on each end, links and loopback up, then delete it all.  The fixture is
timed from pytest's own setup+teardown phase durations of N tests (steady state:
the first 5 are dropped); the `ip` script is timed as whole processes, as a shell
CI step would run it.  Prints medians and the ratio.  Run as root.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

IP_SCRIPT = """
set -e
ip netns add bench-a-$1; ip netns add bench-b-$1
ip link add va netns bench-a-$1 type veth peer name vb netns bench-b-$1
ip -n bench-a-$1 addr add 198.19.0.1/30 dev va; ip -n bench-a-$1 link set va up; ip -n bench-a-$1 link set lo up
ip -n bench-b-$1 addr add 198.19.0.2/30 dev vb; ip -n bench-b-$1 link set vb up; ip -n bench-b-$1 link set lo up
ip netns del bench-a-$1; ip netns del bench-b-$1
"""


class Phases:
    def __init__(self) -> None:
        self.by_test: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when in ("setup", "teardown"):
            self.by_test[report.nodeid] = self.by_test.get(report.nodeid, 0.0) + report.duration


def fixture_ms(n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_bench.py").write_text(
            "import pytest\n@pytest.mark.parametrize('i', range(%d))\ndef test_t(veth, i):\n    pass\n" % n
        )
        phases = Phases()
        code = pytest.main([tmp, "-q", "-p", "no:cacheprovider", "-p", "no:randomly"], plugins=[phases])
        if code != 0:
            sys.exit(f"inner pytest failed with {code}")
        return [v * 1000 for v in list(phases.by_test.values())[5:]]


def ip_ms(n: int) -> list[float]:
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
        script.write(IP_SCRIPT)
        script.flush()
        out = []
        for i in range(n):
            start = time.perf_counter()
            subprocess.run(["bash", script.name, str(i)], check=True)
            out.append((time.perf_counter() - start) * 1000)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="topologies per method (default 200)")
    args = parser.parse_args()
    fixture = fixture_ms(args.n)
    ip = ip_ms(args.n // 2)
    f_med, ip_med = statistics.median(fixture), statistics.median(ip)
    print(
        f"veth fixture set-up+tear-down: median {f_med:.2f} ms, p90 {statistics.quantiles(fixture, n=10)[-1]:.2f} ms (n={len(fixture)})"
    )
    print(
        f"ip commands (bash script):     median {ip_med:.2f} ms, p90 {statistics.quantiles(ip, n=10)[-1]:.2f} ms (n={len(ip)})"
    )
    print(f"ratio fixture/ip: {f_med / ip_med:.2f} (goal <= 0.25)")


if __name__ == "__main__":
    main()

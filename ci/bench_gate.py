#!/usr/bin/env python3
"""Benchmark: how often the baseline gate raises a false alarm (A/A) and catches a real change (A/B).

Each repetition measures N samples of configuration A (the "baseline") and N of
configuration B (the "new run") on this host and compares them exactly as
--udpsend-baseline does (all metrics, Mann-Whitney + tolerance, Bonferroni).

  A/A          B is A again: every flag is a false alarm
  A/B budget   netdev_budget 300 -> 8, RPS to CPU 1 (the change FIELD-NOTES saw double EAGAIN)
  A/B hogs     RPS to a CPU 1 that gets two CPU hogs (a change that matters on 6.18)

All runs: sender on CPU 0, receiver drained on CPU 1, 1400-byte datagrams,
SO_SNDBUF 4096 requested.  Prints, per experiment, the flag rate over the
repetitions and the measuring time one gate decision costs.  Run as root.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

from pytest_udpsend.frontend.session import TestContext, standalone
from pytest_udpsend.host import topology
from pytest_udpsend.measure import load
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.sender import UdpSender
from pytest_udpsend.results import compare

PARAMS = {"cpu": 0, "receiver_cpu": 1, "sndbuf": 4096}
CONFIGS: dict[str, dict[str, Any]] = {
    "base": {"budget": 300, "hogs": 0},
    "budget8": {"budget": 8, "hogs": 0},
    "hogs": {"budget": 300, "hogs": 2},
}
EXPERIMENTS = [("A/A", "base", "base"), ("A/B budget 300->8", "base", "budget8"), ("A/B 2 hogs on the RPS CPU", "base", "hogs")]


@contextlib.contextmanager
def rig() -> Iterator[tuple[TestContext, UdpSender]]:
    with standalone() as ctx:
        topo = topology.build(topology.make_spec(rps_cpus=[1]), ctx.undo, ctx.session.subnets, "gate")
        yield ctx, UdpSender(topo, ctx.sysctls, ctx.exclusive, lambda: None)


def sample(ctx: TestContext, sender: UdpSender, config: str, duration: float) -> dict[str, Any]:
    cfg = CONFIGS[config]
    ctx.sysctls.set("net.core.netdev_budget", cfg["budget"])
    pressure = load.pressure(load.make_spec([1], cfg["hogs"])) if cfg["hogs"] else contextlib.nullcontext()
    with pressure:
        return sender.run(duration=duration, **PARAMS).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("-n", "--samples", type=int, default=6, help="samples per side (default 6)")
    parser.add_argument("--duration", type=float, default=0.3)
    args = parser.parse_args()
    make_params(duration=args.duration, **PARAMS)  # validate before building anything
    with rig() as (ctx, sender):
        for name, a, b in EXPERIMENTS:
            flags, rates_a, rates_b = 0, [], []
            started = time.monotonic()
            for _ in range(args.reps):
                base, new = [], []
                for _ in range(args.samples):  # interleave so drift hits both sides alike
                    base.append(sample(ctx, sender, a, args.duration))
                    new.append(sample(ctx, sender, b, args.duration))
                rows = compare.compare_test("bench", base, new)
                flags += any(r.regressed for r in rows)
                rates_a.append(statistics.median(s["eagain_rate"] for s in base))
                rates_b.append(statistics.median(s["eagain_rate"] for s in new))
            per_decision = (time.monotonic() - started) / args.reps
            print(f"{name:<28} flagged {flags:>2}/{args.reps}   median EAGAIN A {statistics.median(rates_a):6.2%}  "
                  f"B {statistics.median(rates_b):6.2%}   {per_decision:5.1f} s per decision "
                  f"({2 * args.samples} runs of {args.duration} s)")  # fmt: skip


if __name__ == "__main__":
    main()

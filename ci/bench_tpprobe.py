#!/usr/bin/env python3
"""Benchmark: the tracepoint backend's cost to the sender (goal: under 5 % fewer packets/s).

Sender packets/s on a plain veth (1400-byte payload, sender pinned to CPU 0) without a probe and
with the tracepoint probe attached, in alternating order from round to round (a load that drifts
hits both arms alike); prints each arm's median, the overhead, and the probe's counts against
sent.  A third arm keeps the per-skb map as an LRU hash (what the bpf backend uses), to see its price.  Needs root, bcc and kernel BTF; takes the host lock like any measurement.  Run it alone:
``flock /work/notes/heavy.lock .venv/bin/python ci/bench_tpprobe.py``.
"""

from __future__ import annotations

import argparse
import statistics

from pytest_udpsend.frontend.session import standalone
from pytest_udpsend.host import topology
from pytest_udpsend.measure import sender
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.tpprobe import TracepointProbe


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args()
    probe, lru = TracepointProbe("benchmark"), TracepointProbe("benchmark", charged_map="lru_hash")
    with standalone() as ctx:
        plain = topology.build(topology.TopologySpec(), ctx.undo, ctx.session.subnets, "plain")
        params = make_params(duration=args.duration, cpu=0)
        probe.prepare(ctx.sysctls)  # compile before timing anything
        lru.prepare(ctx.sysctls)
        pps: dict[str, list[float]] = {"without probe": [], "tracepoint": [], "lru map": []}
        counts: list[tuple[int, int]] = []
        arms: list[tuple[str, TracepointProbe | None]] = [
            ("without probe", None),
            ("tracepoint", probe),
            ("lru map", lru),
        ]
        ctx.exclusive()  # the host lock, for the whole benchmark
        for i in range(args.rounds):
            for name, armed in arms[i % 3 :] + arms[: i % 3]:
                r = sender.run(plain, params, ctx.sysctls, armed)
                pps[name].append(r.pps)
                if armed is probe:
                    counts.append((r.wfree["count"], r.sent))
        med = {k: statistics.median(v) for k, v in pps.items()}
        for k, v in pps.items():
            print(f"{k:>14}: median {med[k]:>9,.0f} pps  ({', '.join(f'{x:,.0f}' for x in v)})")
        print(f"overhead: {1 - med['tracepoint'] / med['without probe']:.1%} fewer packets/s with the tracepoint probe, "
              f"{1 - med['lru map'] / med['without probe']:.1%} with an LRU per-skb map (kernel {r.kernel})")  # fmt: skip
        print("datagrams released / sent per round: " + ", ".join(f"{c}/{s}" for c, s in counts))
    probe.close()
    lru.close()


if __name__ == "__main__":
    main()

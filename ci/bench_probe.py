#!/usr/bin/env python3
"""Benchmark (run inside a kernel with kprobes, e.g. via ci/bench_probe.sh): the eBPF probe.

1. Overhead: sender packets/s on a plain veth without the bcc probe, with it as tests
   get it (a release stack taken 1 in STACK_EVERY), with a stack for every release, and
   with no stack map; the arms' order rotates from round to round (goal: under 10 %
   lower with it).
2. Estimate against exact: one RPS run measured by both backends at once, the
   timestamp estimate (receiver SO_TIMESTAMPNS, prequeue=0) and the exact kprobe
   figures, on the same datagrams.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from pytest_udpsend.frontend.session import standalone
from pytest_udpsend.host import topology
from pytest_udpsend.measure import sender
from pytest_udpsend.measure.bpfprobe import STACK_EVERY, BpfProbe
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.probes import TimestampProbe


class BothProbes:
    """The exact probe and the timestamp estimate on the same run."""

    backend = "bpf"
    receiver_timestamps = True
    reason = method = "bpf and timestamp on the same datagrams"

    def __init__(self, bpf: BpfProbe) -> None:
        self.bpf, self.ts = bpf, TimestampProbe("benchmark")

    def prepare(self, sysctls: Any, path: Any = None, largest: int | None = None) -> None:
        self.bpf.prepare(sysctls, path, largest)
        self.ts.prepare(sysctls, path, largest)

    def begin(self, fd: int, tgid: int) -> None:
        self.bpf.begin(fd, tgid)

    def end(self, lat: Sequence[int], lost: int, sent: int) -> dict[str, Any]:
        out = self.bpf.end(lat, lost, sent)
        out["timestamp"] = self.ts.end(lat, lost, sent)
        return out

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args()
    bpf, nostack, every = (
        BpfProbe("benchmark"),
        BpfProbe("benchmark", stack_every=0),
        BpfProbe("benchmark", stack_every=1),
    )
    with standalone() as ctx:
        plain = topology.build(topology.TopologySpec(), ctx.undo, ctx.session.subnets, "plain")
        params = make_params(duration=args.duration, cpu=0)
        bpf.prepare(ctx.sysctls)  # compile before timing anything
        nostack.prepare(ctx.sysctls)
        every.prepare(ctx.sysctls)
        pps: dict[str, list[float]] = {"without probe": [], "with probe": [], "every stack": [], "no stack map": []}
        counts = []
        arms = [("without probe", None), ("no stack map", nostack), ("with probe", bpf), ("every stack", every)]
        for i in range(args.rounds):
            for name, probe in arms[i % 4 :] + arms[: i % 4]:  # rotated: a load that drifts hits every arm alike
                r = sender.run(plain, params, ctx.sysctls, probe)
                pps[name].append(r.pps)
                if probe is bpf:
                    counts.append((r.wfree["count"], r.sent))
                    stacks = r.wfree
        med = {k: statistics.median(v) for k, v in pps.items()}
        for k, v in pps.items():
            print(f"{k:>14}: median {med[k]:>9,.0f} pps  ({', '.join(f'{x:,.0f}' for x in v)})")
        print(f"probe attached with {bpf.attach}; kernel {r.kernel}")
        cost = {k: f"{1 - med[k] / med['without probe']:.1%}" for k in med}
        print(
            f"probe overhead: {cost['with probe']} lower throughput (goal < 10 %) with a stack every {STACK_EVERY} "
            f"releases, {cost['every stack']} with one every release, {cost['no stack map']} without the stack map; "
            f"sock_wfree count vs sent: {counts}"
        )
        print(f"release stacks (lost {stacks['stacks_lost']}):", *(s["text"] for s in stacks["stacks"]), sep="\n  ")
        rps = topology.build(topology.make_spec(rps_cpus=[1]), ctx.undo, ctx.session.subnets, "rps")
        r = sender.run(rps, make_params(duration=args.duration, cpu=0, sndbuf=16384), ctx.sysctls, BothProbes(bpf))  # type: ignore[arg-type]
        w, t = r.wfree, r.wfree["timestamp"]
        print(f"RPS to CPU1, sndbuf 16384, kernel {r.kernel}: sent {r.sent}, EAGAIN {r.eagain_rate:.1%}")
        print(
            f"  exact (bpf):          n={w['count']} p50 {w['p50_us']} us  p90 {w['p90_us']} us  p99 {w['p99_us']} us  "
            f"max {w['max_us']} us  contexts {w['contexts']}"
        )
        print(
            f"  estimate (timestamp): n={t['count']} p50 {t['p50_us']} us  p90 {t['p90_us']} us  p99 {t['p99_us']} us  "
            f"max {t['max_us']} us"
        )
        print(
            f"  release stacks (lost {w['stacks_lost']}):",
            *(f"{s['context']}: {s['text']}" for s in w["stacks"]),
            sep="\n    ",
        )
    for probe in (bpf, nostack, every):
        probe.close()


if __name__ == "__main__":
    main()

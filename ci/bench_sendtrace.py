#!/usr/bin/env python3
"""Benchmark: what tracing a sender's send calls (measure/sendtrace.py) costs its send rate (goal: under 5 %).

A full-speed sender (the plugin's C loop, plain veth, 1400-byte payload, pinned to CPU 0) is traced
the way a ``sender_process`` program is (filtered to this process: the sending thread pays the whole
cost, and so does the drain thread, which a real program's tracing would not filter in: an
overestimate), in interleaved rounds (the arms' order rotates each round, so a drifting load hits all
alike).  Arms: no tracing; errno counts from sock:sock_send_length (the default on 6.3+); the same
with time blocked (raw sys_enter added: every task's syscalls on the slow path); the syscall path of
kernels without sock_send_length (raw sys_exit, as on 6.1), emulated here.  Prints each arm's median
packets/s and its overhead against no tracing.  Needs root, bcc and kernel BTF.  Run it alone, under
the lock: ``flock /work/notes/heavy.lock .venv/bin/python ci/bench_sendtrace.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics

from pytest_udpsend.frontend.session import standalone
from pytest_udpsend.host import topology
from pytest_udpsend.measure import sender
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.sendtrace import SendTrace

ARMS: dict[str, tuple[bool, bool | None] | None] = {  # name -> (time_blocked, per_message), None: no tracing
    "no tracing": None,
    "errno (sock_send_length)": (False, None),
    "errno + time blocked (sys_enter)": (True, None),
    "errno via sys_exit (6.1 path)": (False, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args()
    names = list(ARMS)
    pps: dict[str, list[float]] = {name: [] for name in names}
    checks: list[str] = []
    with standalone() as ctx:
        plain = topology.build(topology.TopologySpec(), ctx.undo, ctx.session.subnets, "plain")
        params = make_params(duration=args.duration, cpu=0)
        ctx.exclusive()  # the host lock, for the whole benchmark
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                arm = ARMS[name]
                trace = None if arm is None else SendTrace(time_blocked=arm[0], per_message=arm[1])
                try:
                    if trace is not None:
                        trace.start(None)  # compiled and attached before the run starts timing
                        trace.follow(os.getpid())
                    r = sender.run(plain, params, ctx.sysctls, None)
                    if trace is not None:
                        t = trace.stop()
                        checks.append(f"{name}: traced sent {t.sent} / loop sent {r.sent}, errno {t.errno}")
                finally:
                    if trace is not None:
                        trace.close()
                pps[name].append(r.pps)
        med = {k: statistics.median(v) for k, v in pps.items()}
        base = med["no tracing"]
        for k, v in pps.items():
            print(
                f"{k:>34}: median {med[k]:>9,.0f} pps  overhead {1 - med[k] / base:+.1%}  ({', '.join(f'{x:,.0f}' for x in v)})"
            )
        print(f"kernel {r.kernel}; last round's counts:")
        for line in checks[-len(names) + 1 :]:
            print("  " + line)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Diagnosis: on veth, does a datagram's charge ever end at ``skb:consume_skb``?

The tracepoint backend leaves ``skb:consume_skb`` detached on veth paths without netem
(``tpprobe.attached_events``): there it fires once per datagram at the receiver's free, after
``ip_rcv_core()`` released the charge, and costs the sender about 2 % of its pps.  This runs the
veth scenarios the plugin builds with every event attached and prints, per scenario, where the
backend counted each datagram released (``released_at``), beside sent and the count.  A non-zero
``consume_skb`` on a path that detaches it would be a datagram lost to the count there.

Needs root, bcc and kernel BTF; take the host lock like any measurement:
``flock /work/notes/heavy.lock .venv/bin/python ci/diag_consume.py [ROUNDS]``.
"""

from __future__ import annotations

import sys
from typing import Any

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.frontend.session import standalone
from pytest_udpsend.host import topology
from pytest_udpsend.measure import sender, tpprobe
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.tpprobe import TracepointProbe

# (name, topology marker arguments, run parameters)
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain veth, 64 B", {}, {"payload": 64}),
    ("plain veth, 3000 B (IPv4 fragments)", {}, {"payload": 3000}),
    ("IPv6, 3000 B (fragments)", {"ipv6": True}, {"payload": 3000, "ipv6": True}),
    ("UDP GSO, 14000 B in 1400 B segments", {}, {"mode": "gso", "payload": 14000, "gso_size": 1400}),
    ("sendmmsg", {}, {"mode": "sendmmsg"}),
    ("2 threads x 2 sockets", {}, {"threads": 2, "flows": 2, "cpu": (0, 1)}),
    ("RPS to CPU 1", {"rps_cpus": [1]}, {}),
    ("threaded NAPI + GRO on CPU 1", {"gro": True, "threaded_napi": True, "napi_cpus": [1]}, {}),
    ("tbf 20mbit (drops)", {"qdisc": "tbf rate 20mbit burst 32k latency 5ms"}, {}),
    ("pfifo limit 5 (drops)", {"qdisc": "pfifo limit 5"}, {}),
    ("fq_codel", {"qdisc": "fq_codel"}, {}),
    (
        "tbf 20mbit, UDP GSO (segmented by the qdisc)",
        {"qdisc": "tbf rate 20mbit burst 32k latency 5ms"},
        {"mode": "gso", "payload": 14000, "gso_size": 1400},
    ),
]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    probe = TracepointProbe("diagnosis")
    probe.only = tpprobe.EVENTS  # consume_skb attached on every path
    try:
        with standalone() as ctx:
            for i, (name, marker, run) in enumerate(SCENARIOS):
                spec = topology.make_spec(**marker)
                try:
                    topo = topology.build(spec, ctx.undo, ctx.session.subnets, f"consume{i}")
                except PrivilegeError as exc:  # a qdisc this kernel lacks
                    print(f"{name:46} not run: {exc}", flush=True)
                    continue
                ctx.exclusive()
                detached = tpprobe.CONSUME_EVENT not in tpprobe.attached_events(spec)
                for _ in range(rounds):
                    params = {"duration": 0.5, "cpu": 0, **run}
                    r = sender.run(topo, make_params(**params), ctx.sysctls, probe)
                    w = r.wfree
                    print(
                        f"{name:46} sent {r.sent:7} charged {w['charges']:7} released {w['count']:7} calls {w['calls']:7} "
                        f"released_at {w['released_at']} | consume_skb detached as shipped: {detached}",
                        flush=True,
                    )
    finally:
        probe.close()


if __name__ == "__main__":
    main()

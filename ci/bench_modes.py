#!/usr/bin/env python3
"""Benchmark: each send mode of pytest-udpsend's engine against a plain C program doing the same.

One plain veth topology (built by the plugin), the receiver drained by the plugin's
recvmmsg loop on CPU 1 in every case, the sender pinned to CPU 0:

  plugin  udp_sender's engine (sender.run with mode=...), as a test uses it
  c       ci/c_send_loop.c (compiled here with gcc -O2) with the same mode, in the sender netns,
          as a production sender does it (sendto: unconnected, no IP_RECVERR, autobound)

With --no-drain the receiver socket is bound and never read (the plugin's engine then
runs on sockets made as sender.run makes them, without its drain): the sender-bound
regime, where only the send path's own cost counts.  Drained, each run settles in a
regime of its own (how often the sender must wake the receiver on CPU 1): single runs
of the same program differ by up to 40 % there, so read the paired ratio (each round's
plugin and C runs are back to back) and its spread, not one number.

Modes: send, sendto, sendmmsg (batch 32), gso (14000-byte super-datagrams of
1400-byte segments; pps counts super-datagrams, as UdpOutDatagrams does).  Rounds
alternate plugin and C for every mode so drift on this shared machine hits both
alike.  Prints the median pps per mode and method and the plugin/C ratio.  Run as root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pytest_udpsend.host import topology
from pytest_udpsend.host.journal import Journal
from pytest_udpsend.host.sysctl import SysctlHost, Sysctls
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import _engine, sender  # type: ignore[attr-defined]
from pytest_udpsend.measure.params import make_params

HERE = Path(__file__).resolve().parent
MODES = {  # mode: (payload, params beyond mode, the C program's N)
    "send": (1400, {}, None),
    "sendto": (1400, {}, None),
    "sendmmsg": (1400, {"batch": 32}, "32"),
    "gso": (14000, {"gso_size": 1400}, "1400"),
}


DRAIN = True


def c_loop(binary: Path, topo: topology.Topology, seconds: float, mode: str) -> float:
    payload, _, n = MODES[mode]
    rx = sender._receiver_socket(topo, False, False)
    until = time.monotonic_ns() + int(seconds * 1e9)

    def drain() -> None:
        if DRAIN:
            os.sched_setaffinity(0, {1})
            _engine.recv_loop(rx.fileno(), until, 100, bytearray(), False)

    thread = threading.Thread(target=drain)
    thread.start()
    argv = [
        "ip",
        "netns",
        "exec",
        topo.sender.name,
        str(binary),
        topo.receiver.addr,
        str(sender.PORT),
        str(seconds),
        str(payload),
        "0",
        mode,
    ] + ([n] if n else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    thread.join()
    rx.close()
    return int(out[1]) / seconds


def plugin_loop(topo: topology.Topology, sysctls: Sysctls, seconds: float, mode: str) -> float:
    payload, extra, _ = MODES[mode]
    params = make_params(duration=seconds, cpu=0, receiver_cpu=1, payload=payload, mode=mode, **extra)
    if DRAIN:
        return sender.run(topo, params, sysctls, None).pps
    rx = sender._receiver_socket(topo, False, False)  # bound, never read
    (tx,) = sender._sender_sockets(topo, params)  # the sockets a test's run gets (IP_RECVERR, bind, UDP_SEGMENT)
    out: dict[str, float] = {}
    body = sender._send_body(params, [s.fileno() for s in tx], False, bytearray(1), sender._destination(topo, params))

    def pinned() -> None:
        os.sched_setaffinity(0, {0})
        out.update(body())

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    for sock in (*tx, rx):
        sock.close()
    return out["sent"] / out["elapsed_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--no-drain", action="store_true", help="leave the receiver socket unread (sender-bound)")
    args = parser.parse_args()
    global DRAIN
    DRAIN = not args.no_drain
    undo = UndoStack()
    pps: dict[tuple[str, str], list[float]] = {(m, w): [] for m in MODES for w in ("plugin", "c")}
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp, "c_send_loop")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "c_send_loop.c")], check=True)
        try:
            topo = topology.build(topology.TopologySpec(), undo, topology.SubnetAllocator(7), "bench")
            sysctls = Sysctls(SysctlHost(Journal()), undo, lambda ns: ns, lambda: None)  # type: ignore[arg-type,return-value]
            for r in range(args.rounds):
                for mode in MODES:
                    order = ("plugin", "c") if r % 2 == 0 else ("c", "plugin")  # balanced AB / BA
                    for who in order:
                        run = (
                            plugin_loop(topo, sysctls, args.duration, mode)
                            if who == "plugin"
                            else c_loop(binary, topo, args.duration, mode)
                        )
                        pps[(mode, who)].append(run)
        finally:
            undo.flush()
    print(
        f"{'mode':<9} {'plugin pps':>12} {'C pps':>12} {'plugin/C':>9} {'paired':>7} {'paired IQR':>11}   "
        f"(median of {args.rounds} rounds of {args.duration:g} s)"
    )
    for mode in MODES:
        plugin, c = pps[(mode, "plugin")], pps[(mode, "c")]
        ratios = [a / b for a, b in zip(plugin, c)]  # each round's pair ran back to back
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        print(
            f"{mode:<9} {statistics.median(plugin):>12,.0f} {statistics.median(c):>12,.0f} "
            f"{statistics.median(plugin) / statistics.median(c):>9.2f} {statistics.median(ratios):>7.2f} "
            f"{q1:>5.2f}-{q3:.2f}"
        )
    for (mode, who), values in pps.items():
        print(f"  {mode:<9} {who:<6} " + " ".join(f"{v / 1000:.0f}k" for v in values))
    print(
        f"sender on CPU 0, receiver {'drained on CPU 1' if DRAIN else 'bound, never read'}; gso: 14000-byte "
        "super-datagrams (10 segments), pps of super-datagrams"
    )


if __name__ == "__main__":
    main()

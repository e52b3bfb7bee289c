#!/usr/bin/env python3
"""Benchmark: replay at full speed (speed=0) against the engine's plain send loop, same topology, same CPU.

One plain veth topology (built by the plugin); the receiver drains on CPU 1, the sender runs on
CPU 0, 1400-byte datagrams:

  plain   udp_sender's plain loop for DURATION seconds (sender.run, as a test uses it)
  replay  a 1000-datagram capture of 1400-byte datagrams (written with scapy), speed=0, looped to
          last about as long as the plain run (the schedule lives in the C loop: no Python per datagram)

Rounds alternate the two so drift on this shared machine hits both alike.  Prints the median
packets/s of each and the replay/plain ratio (goal >= 0.9).  Run as root.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapWriter

from pytest_udpsend.host import topology
from pytest_udpsend.host.journal import Journal
from pytest_udpsend.host.sysctl import SysctlHost, Sysctls
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import sender
from pytest_udpsend.measure.params import make_params

CAPTURE = 1000


def write_capture(path: Path) -> None:
    writer = PcapWriter(str(path), linktype=1, nano=True)
    writer.write_header(None)
    frame = bytes(Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=5000, dport=5001) / Raw(bytes(1400)))
    for i in range(CAPTURE):
        writer.write_packet(frame, sec=1_700_000_000, usec=i * 1_000_000, wirelen=len(frame))  # 1 ms apart (ns)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args()
    undo = UndoStack()
    pps: dict[str, list[float]] = {"plain": [], "replay": []}
    late: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp, "bench.pcap")
        write_capture(capture)
        try:
            topo = topology.build(topology.TopologySpec(), undo, topology.SubnetAllocator(7), "bench")
            sysctls = Sysctls(SysctlHost(Journal()), undo, lambda ns: ns, lambda: None)  # type: ignore[arg-type,return-value]
            plain = make_params(duration=args.duration, cpu=0, receiver_cpu=1)
            for _ in range(args.rounds):
                pps["plain"].append(sender.run(topo, plain, sysctls, None).pps)
                loops = max(1, int(pps["plain"][-1] * args.duration / CAPTURE))
                r = sender.run(
                    topo, make_params(replay=str(capture), speed=0, loop=loops, cpu=0, receiver_cpu=1), sysctls, None
                )
                assert r.attempts == loops * CAPTURE, r.summary()
                pps["replay"].append(r.pps)
                paced = sender.run(
                    topo, make_params(replay=str(capture), speed=1.0, cpu=0, receiver_cpu=1), sysctls, None
                )
                late.append(paced.replay["timing_error"])
        finally:
            undo.flush()
    med = {k: statistics.median(v) for k, v in pps.items()}
    for name, values in pps.items():
        print(f"{name:>7}: median {med[name]:>10,.0f} pps  (rounds: {', '.join(f'{v:,.0f}' for v in values)})")
    print(f"receiver drained on CPU 1; sender on CPU 0; 1400-byte datagrams; replay looped over {CAPTURE} datagrams")
    print(f"ratio replay(speed=0)/plain: {med['replay'] / med['plain']:.2f} (goal >= 0.9)")
    print(
        f"speed=1 timing error over the capture's {(CAPTURE - 1) / 1000:.3f} s span: "
        f"{', '.join(f'{e:+.2%}' for e in late)}"
    )


if __name__ == "__main__":
    main()

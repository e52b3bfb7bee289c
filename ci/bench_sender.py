#!/usr/bin/env python3
"""Benchmark: pytest-udpsend's sender against a plain C send() loop, same topology, same CPU.

One plain veth topology (built by the plugin).  The receiver drains with the
plugin's recvmmsg loop pinned to CPU 1 in every case; the sender is pinned to
CPU 0 and sends 1400-byte datagrams for DURATION seconds:

  plugin  udp_sender's engine (sender.run), as a test uses it
  c       ci/c_send_loop.c, compiled here with gcc -O2, run in the sender netns
  python  a plain Python socket.send() loop, for reference

Rounds alternate the methods so drift on this shared machine hits all of them
alike.  Prints the median packets/s per method and the plugin/C ratio.  Run as root.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pytest_udpsend.host import topology
from pytest_udpsend.host.journal import Journal
from pytest_udpsend.host.sysctl import SysctlHost, Sysctls
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import _engine, sender
from pytest_udpsend.measure.params import make_params

HERE = Path(__file__).resolve().parent


DRAIN = True


def drain(topo: topology.Topology, seconds: float) -> tuple[threading.Thread, socket.socket]:
    """The receiver: drained on CPU 1, or (--no-drain) bound and never read, so the
    receive path ends in a full socket queue and the sender's own cost dominates."""
    rx = sender._receiver_socket(topo, False, False)
    until = time.monotonic_ns() + int(seconds * 1e9)

    def body() -> None:
        if DRAIN:
            os.sched_setaffinity(0, {1})
            _engine.recv_loop(rx.fileno(), until, 100, bytearray(), False)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, rx


def c_loop(binary: Path, topo: topology.Topology, seconds: float) -> float:
    thread, rx = drain(topo, seconds)
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            topo.sender.name,
            str(binary),
            topo.receiver.addr,
            str(sender.PORT),
            str(seconds),
            "1400",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    thread.join()
    rx.close()
    return int(out[1]) / seconds


def on_cpu0_then_close(body: Callable[[], None], receiver: threading.Thread, *socks: socket.socket) -> None:
    """Run the sender ``body`` in a thread pinned to CPU 0, wait for the receiver, close the sockets."""

    def pinned() -> None:
        os.sched_setaffinity(0, {0})
        body()

    t = threading.Thread(target=pinned)
    t.start()
    t.join()
    receiver.join()
    for sock in socks:
        sock.close()


def plugin_loop(topo: topology.Topology, params: object, sysctls: Sysctls) -> float:
    if DRAIN:
        return sender.run(topo, params, sysctls, None).pps  # type: ignore[arg-type]
    thread, rx = drain(topo, 0)
    tx = sender._sender_socket(topo, params)  # type: ignore[arg-type]
    out: dict[str, float] = {}

    def body() -> None:
        out.update(_engine.send_loop(tx.fileno(), params.duration, 1400))  # type: ignore[attr-defined]

    on_cpu0_then_close(body, thread, tx, rx)
    return out["sent"] / out["elapsed_s"]


def python_loop(topo: topology.Topology, seconds: float) -> float:
    thread, rx = drain(topo, seconds)
    tx = sender._sender_socket(topo, make_params())
    sent = 0

    def body() -> None:
        nonlocal sent
        payload = bytes(1400)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                tx.send(payload)
                sent += 1
            except BlockingIOError:
                pass

    on_cpu0_then_close(body, thread, tx, rx)
    return sent / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--no-drain", action="store_true", help="leave the receiver socket unread")
    args = parser.parse_args()
    global DRAIN
    DRAIN = not args.no_drain
    undo = UndoStack()
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp, "c_send_loop")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "c_send_loop.c")], check=True)
        try:
            topo = topology.build(topology.TopologySpec(), undo, topology.SubnetAllocator(7), "bench")
            sysctls = Sysctls(SysctlHost(Journal()), undo, lambda ns: ns, lambda: None)  # type: ignore[arg-type,return-value]
            params = make_params(duration=args.duration, cpu=0, receiver_cpu=1)
            pps: dict[str, list[float]] = {"plugin": [], "c": [], "python": []}
            for _ in range(args.rounds):
                pps["plugin"].append(plugin_loop(topo, params, sysctls))
                pps["c"].append(c_loop(binary, topo, args.duration))
                pps["python"].append(python_loop(topo, args.duration))
        finally:
            undo.flush()
    med = {k: statistics.median(v) for k, v in pps.items()}
    for name, values in pps.items():
        print(f"{name:>7}: median {med[name]:>10,.0f} pps  (rounds: {', '.join(f'{v:,.0f}' for v in values)})")
    print(f"receiver: {'drained on CPU 1' if DRAIN else 'bound, never read'}; sender on CPU 0; 1400-byte payload")
    print(f"ratio plugin/C: {med['plugin'] / med['c']:.2f} (goal >= 0.9); python/C: {med['python'] / med['c']:.2f}")


if __name__ == "__main__":
    main()

"""--udpsend-pcap: a bounded capture of a measuring test's traffic, kept when the test fails.

An AF_PACKET socket in the receiver namespace takes the first ``FIRST`` frames,
then swaps in a classic BPF filter that passes one frame in ``SAMPLE`` at random
(``SKF_AD_RANDOM``), up to ``CAP`` frames of at most ``SNAPLEN`` bytes; scapy
writes the pcap.  Cost: the first frames are cloned to the tap, then the kernel
runs a six-instruction filter per frame and clones one in ``SAMPLE``; the tap does
not hold the original skb, so sock_wfree timing is not delayed by it.  The reader
thread shares the CPUs with the measurement: that is the distortion to expect,
and why capture is off unless asked for.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pytest_udpsend.host.outfile import atomic_open
from pytest_udpsend.host.topology import Topology

FIRST, SAMPLE, CAP, SNAPLEN = 256, 100, 4096, 256
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SKF_AD_RANDOM = -0x1000 + 56


def _sampling_filter(every: int) -> bytes:
    # ld rand; mod #every; jeq #0 -> accept : drop
    insns = [
        (0x20, 0, 0, SKF_AD_RANDOM & 0xFFFFFFFF),  # BPF_LD|BPF_W|BPF_ABS
        (0x94, 0, 0, every),  # BPF_ALU|BPF_MOD|BPF_K
        (0x15, 0, 1, 0),  # BPF_JMP|BPF_JEQ|BPF_K
        (0x06, 0, 0, 0xFFFF),  # BPF_RET|BPF_K accept
        (0x06, 0, 0, 0),  # drop
    ]
    return b"".join(struct.pack("HBBI", *i) for i in insns)


def _attach(sock: socket.socket, program: bytes) -> None:
    import ctypes

    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@contextlib.contextmanager
def capture(topo: Topology, path: Path) -> Iterator[list[tuple[float, bytes]]]:
    """Capture on the receiver veth while the block runs; write ``path`` afterwards."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((topo.receiver.ifname, ETH_P_ALL))
        sock.settimeout(0.05)
        return sock

    sock = topo.receiver.run(make)
    frames: list[tuple[float, bytes]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set() and len(frames) < CAP:
            try:
                data = sock.recv(SNAPLEN)
            except TimeoutError:
                continue
            frames.append((time.time(), data))
            if len(frames) == FIRST:
                _attach(sock, _sampling_filter(SAMPLE))

    thread = threading.Thread(target=reader, name="udpsend-pcap", daemon=True)
    thread.start()
    try:
        yield frames
    finally:
        stop.set()
        thread.join()
        sock.close()
        _write(path, frames)


def _write(path: Path, frames: list[tuple[float, bytes]]) -> None:
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapWriter

    with atomic_open(path) as file, PcapWriter(file, linktype=1, sync=False) as out:
        for ts, data in frames:
            pkt = Ether(data)
            pkt.time = ts
            out.write(pkt)

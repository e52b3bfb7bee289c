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
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .topology import Topology

FIRST, SAMPLE, CAP, SNAPLEN = 256, 100, 4096, 256
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SKF_AD_RANDOM = -0x1000 + 56
PCAP_KEY = pytest.StashKey[list[str]]()


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

    path.parent.mkdir(parents=True, exist_ok=True)
    with PcapWriter(str(path), linktype=1, sync=False) as out:
        for ts, data in frames:
            pkt = Ether(data)
            pkt.time = ts
            out.write(pkt)


def capture_for(request: pytest.FixtureRequest, ctx: Any, topo: Topology) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """A capture factory for this test when --udpsend-pcap is given, else None."""
    directory = ctx.session.options.pcap_dir
    if not directory:
        return None
    try:
        import scapy  # noqa: F401
    except ImportError:
        from .errors import ConfigError

        raise ConfigError("--udpsend-pcap needs scapy: pip install 'pytest-udpsend[pcap]'") from None
    paths = request.node.stash.setdefault(PCAP_KEY, [])
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]

    def start() -> contextlib.AbstractContextManager[Any]:
        path = Path(directory) / f"{stem}-{len(paths) + 1}.pcap"
        paths.append(str(path))
        return capture(topo, path)

    return start


def keep_or_discard(item: pytest.Item, report: pytest.TestReport) -> None:
    """After the call phase: keep the pcaps of a failed test (and say where), drop the others."""
    paths = item.stash.get(PCAP_KEY, [])
    if not paths or report.when != "call":
        return
    if report.failed:
        report.sections.append(("udpsend pcap", "\n".join(f"capture kept: {p}" for p in paths)))
    else:
        for p in paths:
            Path(p).unlink(missing_ok=True)

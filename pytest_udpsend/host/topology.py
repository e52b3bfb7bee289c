"""Sender and receiver namespaces joined by a veth pair, shaped by the ``topology`` marker.

Build cost matters (suites build hundreds): both namespaces are made in one
thread, the veth is created with its peer placed straight into the receiver
namespace, and each side is configured with one batched netlink request
(about 3 ms in all, against about 28 ms for the same thing with ``ip`` commands).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import netns as netns_mod
from pytest_udpsend.host import qdisc as qdisc_mod
from pytest_udpsend.host.rtnl import Rtnl, addr_msg, link_up_msg, veth_msg
from pytest_udpsend.host.undo import UndoStack

SENDER_IF = "veth-snd"
RECEIVER_IF = "veth-rcv"
VETH_INDEX = 2  # fresh namespaces hold only lo (1): pick the index so no lookup is needed
SIOCETHTOOL = 0x8946
ETHTOOL_SGRO = 0x2C


@dataclass(frozen=True)
class TopologySpec:
    """What the ``topology`` marker asks for (validated at collection time)."""

    rps_cpus: tuple[int, ...] | None = None
    qdisc: qdisc_mod.QdiscSpec | None = None
    gro: bool = False
    threaded_napi: bool = False
    mtu: int = 1500
    ipv6: bool = False

    def describe(self) -> str:
        parts = [f"mtu={self.mtu}"]
        if self.rps_cpus is not None:
            parts.append(f"rps_cpus={list(self.rps_cpus)}")
        if self.qdisc:
            parts.append(f"qdisc='{self.qdisc.text}'")
        if self.gro:
            parts.append("gro")
        if self.threaded_napi:
            parts.append("threaded_napi")
        if self.ipv6:
            parts.append("ipv6")
        return "veth " + " ".join(parts)


def _cpus(value: Any) -> tuple[int, ...]:
    cpus = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(cpus, (list, tuple)) or not cpus or not all(isinstance(c, int) for c in cpus):
        raise ConfigError(f"rps_cpus={value!r}: give a list of CPU numbers such as [1]")
    online = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - online)
    if missing:
        raise ConfigError(f"rps_cpus={value!r}: CPU(s) {missing} are not available here (have {sorted(online)})")
    return tuple(sorted(set(cpus)))


def make_spec(
    rps_cpus: Any = None,
    qdisc: Any = None,
    gro: Any = False,
    threaded_napi: Any = False,
    mtu: Any = 1500,
    ipv6: Any = False,
) -> TopologySpec:
    """Validate marker arguments into a TopologySpec (ConfigError names the bad one)."""
    for key, val in (("gro", gro), ("threaded_napi", threaded_napi), ("ipv6", ipv6)):
        if not isinstance(val, bool):
            raise ConfigError(f"{key}={val!r}: must be True or False")
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise ConfigError(f"mtu={mtu!r}: must be an integer from 68 to 65535")
    if ipv6 and mtu < 1280:
        raise ConfigError(f"mtu={mtu}: IPv6 needs at least 1280")
    if threaded_napi and not gro:
        raise ConfigError("threaded_napi=True needs gro=True: a veth only has NAPI with GRO (or XDP) on")
    return TopologySpec(
        rps_cpus=None if rps_cpus is None else _cpus(rps_cpus),
        qdisc=None if qdisc is None else qdisc_mod.parse(qdisc),
        gro=gro,
        threaded_napi=threaded_napi,
        mtu=mtu,
        ipv6=ipv6,
    )


@dataclass
class Endpoint:
    """One side of the pair: its namespace and its veth."""

    ns: netns_mod.Namespace
    ifname: str
    addr: str
    addr6: str | None = None
    index: int = VETH_INDEX

    @property
    def name(self) -> str:
        return self.ns.name

    def run(self, fn: Any) -> Any:
        return self.ns.run(fn)


@dataclass
class Topology:
    """The ``veth`` fixture's value."""

    sender: Endpoint
    receiver: Endpoint
    spec: TopologySpec = field(default_factory=TopologySpec)

    def describe(self) -> str:
        return self.spec.describe()


class SubnetAllocator:
    """Unique /30 (and /64) per topology: benchmarking ranges 198.18.0.0/15 and fd75:6470::/32.

    The xdist worker number picks a disjoint block, so workers never collide.
    """

    PER_WORKER = 4096

    def __init__(self, worker: int) -> None:
        self.slot = worker % 8
        self.n = 0

    def next(self) -> tuple[str, str, str, str]:
        block = self.slot * self.PER_WORKER + self.n % self.PER_WORKER
        self.n += 1
        base = (198 << 24) | (18 << 16) | (block << 2)
        a, b = socket.inet_ntoa(struct.pack("!I", base + 1)), socket.inet_ntoa(struct.pack("!I", base + 2))
        return a, b, f"fd75:6470:{self.slot:x}:{block:x}::1", f"fd75:6470:{self.slot:x}:{block:x}::2"


def _new_ns_setup(ipv6: bool) -> Rtnl:
    """Runs inside each new namespace: drop IPv6 unless asked (saves addrconf work), open rtnetlink."""
    if not ipv6:
        for conf in ("all", "default"):
            Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1")
    return Rtnl()


def make_namespace(hint: str, undo: UndoStack, ipv6: bool = True) -> netns_mod.Namespace:
    """One namespace with lo up; its removal registered on ``undo``."""
    ((ns, rt),) = netns_mod.create([hint], on_each=lambda: _new_ns_setup(ipv6))
    undo.push(f"netns {ns.name}", lambda: netns_mod.remove(ns))
    assert rt is not None
    try:
        rt.call(link_up_msg(1))
    finally:
        rt.close()
    return ns


def build(spec: TopologySpec, undo: UndoStack, subnets: SubnetAllocator, hint: str = "") -> Topology:
    """Build the pair; every part is registered on ``undo`` as soon as it exists."""
    made = netns_mod.create([f"snd-{hint}", f"rcv-{hint}"], on_each=lambda: _new_ns_setup(spec.ipv6))
    for ns, _ in made:
        undo.push(f"netns {ns.name}", functools.partial(netns_mod.remove, ns))
    (snd_ns, snd_rt), (rcv_ns, rcv_rt) = made
    assert snd_rt is not None and rcv_rt is not None
    a, b, a6, b6 = subnets.next()
    sender = Endpoint(snd_ns, SENDER_IF, a, a6 if spec.ipv6 else None)
    receiver = Endpoint(rcv_ns, RECEIVER_IF, b, b6 if spec.ipv6 else None)
    try:
        snd_msgs = [
            veth_msg(SENDER_IF, RECEIVER_IF, rcv_ns.fd, spec.mtu, VETH_INDEX, VETH_INDEX),
            addr_msg(VETH_INDEX, a, 30, socket.AF_INET),
            link_up_msg(1),
        ]
        rcv_msgs = [link_up_msg(VETH_INDEX), addr_msg(VETH_INDEX, b, 30, socket.AF_INET), link_up_msg(1)]
        if spec.ipv6:
            snd_msgs.append(addr_msg(VETH_INDEX, a6, 64, socket.AF_INET6))
            rcv_msgs.append(addr_msg(VETH_INDEX, b6, 64, socket.AF_INET6))
        snd_rt.call(*snd_msgs)
        rcv_rt.call(*rcv_msgs)
    finally:
        snd_rt.close()
        rcv_rt.close()
    if spec.qdisc is not None:
        _apply_qdisc(sender, spec.qdisc)
    if spec.gro or spec.threaded_napi or spec.rps_cpus is not None:
        receiver.ns.run_with_sysfs(lambda: _shape_receiver(spec))
    return Topology(sender, receiver, spec)


def _apply_qdisc(sender: Endpoint, spec: qdisc_mod.QdiscSpec) -> None:
    def body() -> None:
        ipr = qdisc_mod.open_iproute()
        try:
            qdisc_mod.apply(spec, ipr, sender.index)
        finally:
            ipr.close()

    try:
        sender.run(body)
    except Exception as exc:
        raise ConfigError(f"qdisc '{spec.text}' was refused by the kernel: {exc}") from None


def _set_gro(ifname: str, on: bool) -> None:
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_SGRO, int(on)))
    ifreq = bytearray(struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


def _shape_receiver(spec: TopologySpec) -> None:
    """Runs in the receiver namespace with its own /sys: GRO, threaded NAPI, RPS."""
    dev = Path("/sys/class/net") / RECEIVER_IF
    if spec.gro:
        _set_gro(RECEIVER_IF, True)
    if spec.threaded_napi:
        (dev / "threaded").write_text("1")
    if spec.rps_cpus is not None:
        mask = sum(1 << c for c in spec.rps_cpus)
        for queue in sorted(dev.glob("queues/rx-*")):
            (queue / "rps_cpus").write_text(f"{mask:x}")


def read_receiver_sysfs(topo: Topology, relative: str) -> str:
    """Read a file under the receiver veth's /sys directory (for checks and reports)."""
    return str(topo.receiver.ns.run_with_sysfs(lambda: (Path("/sys/class/net") / RECEIVER_IF / relative).read_text().strip()))

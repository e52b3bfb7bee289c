"""Sender and receiver namespaces joined by a veth pair, shaped by the ``topology`` marker.

Build cost matters (suites build hundreds): both namespaces are made in one
thread, the veth is created with its peer placed straight into the receiver
namespace, and each side is configured with one batched netlink request
(about 3 ms in all, against about 28 ms for the same thing with ``ip`` commands).

Hosts as they are: a new namespace is not always empty but for ``lo``.  With the
tunnel modules loaded (ipip, sit, ip_gre) it also holds ``tunl0``, ``sit0``,
``gre0``..., so the veth's ifindex is picked free in each namespace (one
``if_nameindex()`` there, no extra round trip in the netlink batch).  A kernel
booted with ``ipv6.disable=1`` has no ``/proc/sys/net/ipv6``: IPv4 topologies
do not touch it, an ``ipv6=True`` one is refused with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_udpsend.errors import ConfigError, PrivilegeError
from pytest_udpsend.host import cpus as cpus_mod
from pytest_udpsend.host import netns as netns_mod
from pytest_udpsend.host import nicport, nics
from pytest_udpsend.host import qdisc as qdisc_mod
from pytest_udpsend.host.journal import Journal
from pytest_udpsend.host.rtnl import Rtnl, addr_msg, link_set_msg, link_up_msg, neigh_msg, veth_msg
from pytest_udpsend.host.state import FileLock
from pytest_udpsend.host.undo import UndoStack

SENDER_IF = "veth-snd"
RECEIVER_IF = "veth-rcv"
LO_INDEX = 1  # LOOPBACK_IFINDEX: lo is the first device of every namespace
IPV6_SYSCTL_DIR = Path("/proc/sys/net/ipv6")
T = TypeVar("T")


@dataclass(frozen=True)
class TopologySpec:
    """What the ``topology`` marker asks for (validated at collection time)."""

    rps_cpus: tuple[int, ...] | None = None
    qdisc: qdisc_mod.QdiscSpec | None = None
    gro: bool = False
    threaded_napi: bool = False
    napi_cpus: tuple[int, ...] | None = None  # where the threaded-NAPI kthread may run
    mtu: int = 1500
    ipv6: bool = False
    link: str = "veth"  # or a NIC model (host/nics.py): the pair is then borrowed, not made
    irq_cpus: tuple[int, ...] | None = None  # where the NIC ports' interrupts (and so TX completion) go
    tx_checksum: bool = True  # False: checksum offload off on the sender's link (UDP GSO then EIO before 6.11)

    @property
    def is_nic(self) -> bool:
        return self.link != "veth"

    def describe(self) -> str:
        parts = [f"mtu={self.mtu}"]
        if self.rps_cpus is not None:
            parts.append(f"rps_cpus={list(self.rps_cpus)} (mask {cpus_mod.format_mask(self.rps_cpus)})")
        if self.qdisc:
            parts.append(f"qdisc='{self.qdisc.text}'")
        if self.gro:
            parts.append("gro")
        if self.threaded_napi:
            parts.append("threaded_napi")
        if self.napi_cpus is not None:
            parts.append(f"napi_cpus={list(self.napi_cpus)}")
        if self.irq_cpus is not None:
            parts.append(f"irq_cpus={list(self.irq_cpus)}")
        if self.ipv6:
            parts.append("ipv6")
        if not self.tx_checksum:
            parts.append("tx_checksum=False")
        return f"{self.link} " + " ".join(parts)


def _cpus(value: Any, key: str = "rps_cpus") -> tuple[int, ...]:
    """CPU numbers, a taskset-style list string or a sysfs hex mask string (see host/cpus.py)."""
    return cpus_mod.check_online(cpus_mod.parse(value, key), value, key)


def make_spec(
    rps_cpus: Any = None,
    qdisc: Any = None,
    gro: Any = False,
    threaded_napi: Any = False,
    napi_cpus: Any = None,
    mtu: Any = 1500,
    ipv6: Any = False,
    link: Any = "veth",
    irq_cpus: Any = None,
    tx_checksum: Any = True,
) -> TopologySpec:
    """Validate marker arguments into a TopologySpec (ConfigError names the bad one)."""
    link = nics.check_link(link)
    if irq_cpus is not None and link == "veth":
        raise ConfigError(
            "irq_cpus= needs a NIC link (link='vmxnet3', 'virtio', 'e1000e' or 'nic'): a veth has no interrupts"
        )
    for key, val in (("gro", gro), ("threaded_napi", threaded_napi), ("ipv6", ipv6), ("tx_checksum", tx_checksum)):
        if not isinstance(val, bool):
            raise ConfigError(f"{key}={val!r}: must be True or False")
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise ConfigError(f"mtu={mtu!r}: must be an integer from 68 to 65535")
    if ipv6 and mtu < 1280:
        raise ConfigError(f"mtu={mtu}: IPv6 needs at least 1280")
    if link != "veth" and (gro or threaded_napi or napi_cpus is not None):
        raise ConfigError(
            f"gro, threaded_napi and napi_cpus shape a veth; on link={link!r} GRO and NAPI are the "
            "driver's own (left as the host has them)"
        )
    if threaded_napi and not gro:
        raise ConfigError("threaded_napi=True needs gro=True: a veth only has NAPI with GRO (or XDP) on")
    if napi_cpus is not None and not threaded_napi:
        raise ConfigError(
            "napi_cpus= needs threaded_napi=True: only a threaded NAPI poll runs in a thread that can be pinned"
        )
    return TopologySpec(
        rps_cpus=None if rps_cpus is None else _cpus(rps_cpus),
        qdisc=None if qdisc is None else qdisc_mod.parse(qdisc),
        gro=gro,
        threaded_napi=threaded_napi,
        napi_cpus=None if napi_cpus is None else _cpus(napi_cpus, "napi_cpus"),
        mtu=mtu,
        ipv6=ipv6,
        link=link,
        irq_cpus=None if irq_cpus is None else _cpus(irq_cpus, "irq_cpus"),
        tx_checksum=tx_checksum,
    )


@dataclass
class Endpoint:
    """One side of the pair: its namespace and its veth."""

    ns: netns_mod.Namespace
    ifname: str
    addr: str
    addr6: str | None = None
    index: int = 0  # the veth's ifindex in its namespace (picked free there)

    @property
    def name(self) -> str:
        return self.ns.name

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` run in this side's namespace (a fresh thread: see netns.Namespace.run)."""
        return self.ns.run(fn)


@dataclass
class Topology:
    """The ``veth`` fixture's value."""

    sender: Endpoint
    receiver: Endpoint
    spec: TopologySpec = field(default_factory=TopologySpec)
    irqs: dict[str, list[int]] = field(default_factory=dict)  # NIC port -> its interrupts (none on veth)

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


def ipv6_available() -> bool:
    """False on a kernel booted with ipv6.disable=1 (or built without IPv6)."""
    return IPV6_SYSCTL_DIR.is_dir()


def _new_ns_setup(ipv6: bool) -> tuple[Rtnl, int]:
    """Runs inside each new namespace: drop IPv6 unless asked (saves addrconf work), open
    rtnetlink, and pick an ifindex no device of this namespace has (tunnel modules add some)."""
    if not ipv6 and ipv6_available():
        for conf in ("all", "default"):
            Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1")
    free = max(index for index, _name in socket.if_nameindex()) + 1
    return Rtnl(), free


def make_namespace(hint: str, undo: UndoStack, ipv6: bool = True) -> netns_mod.Namespace:
    """One namespace with lo up; its removal registered on ``undo``."""
    ((ns, made),) = netns_mod.create([hint], on_each=lambda: _new_ns_setup(ipv6))
    undo.push(f"netns {ns.name}", lambda: netns_mod.remove(ns))
    assert made is not None
    rt = made[0]
    try:
        rt.call(link_up_msg(LO_INDEX))
    finally:
        rt.close()
    return ns


def _veth_refused(exc: OSError) -> Exception:
    """The kernel's answer to creating the veth pair, as one sentence where we know the cause."""
    if exc.errno == errno.EOPNOTSUPP:
        return PrivilegeError(
            "this kernel has no veth driver loaded (creating a veth pair: 'Operation not supported'): "
            "run 'modprobe veth' (the module is CONFIG_VETH), or use a kernel built with it"
        )
    return ConfigError(f"the kernel refused to create the veth pair: {exc}")


def mac_for(ipv4: str) -> str:
    """A locally administered MAC derived from the endpoint's address: unique wherever the address is."""
    return "02:00:" + ":".join(f"{octet:02x}" for octet in socket.inet_aton(ipv4))


def build(spec: TopologySpec, undo: UndoStack, subnets: SubnetAllocator, hint: str = "") -> Topology:
    """Build the pair; every part is registered on ``undo`` as soon as it exists."""
    if spec.ipv6 and not ipv6_available():
        raise PrivilegeError(
            "ipv6=True, but this kernel has IPv6 disabled (no /proc/sys/net/ipv6: booted with "
            "ipv6.disable=1 or built without CONFIG_IPV6): drop ipv6=True or boot without ipv6.disable=1"
        )
    made = netns_mod.create([f"snd-{hint}", f"rcv-{hint}"], on_each=lambda: _new_ns_setup(spec.ipv6))
    for ns, _ in made:
        undo.push(f"netns {ns.name}", functools.partial(netns_mod.remove, ns))
    (snd_ns, snd_made), (rcv_ns, rcv_made) = made
    assert snd_made is not None and rcv_made is not None
    (snd_rt, snd_index), (rcv_rt, rcv_index) = snd_made, rcv_made
    a, b, a6, b6 = subnets.next()
    sender = Endpoint(snd_ns, SENDER_IF, a, a6 if spec.ipv6 else None, snd_index)
    receiver = Endpoint(rcv_ns, RECEIVER_IF, b, b6 if spec.ipv6 else None, rcv_index)
    try:
        snd_mac, rcv_mac = mac_for(a), mac_for(b)
        snd_msgs = [
            veth_msg(SENDER_IF, RECEIVER_IF, rcv_ns.fd, spec.mtu, snd_index, rcv_index, snd_mac, rcv_mac),
            addr_msg(snd_index, a, 30, socket.AF_INET),
            neigh_msg(snd_index, b, rcv_mac, socket.AF_INET),
            link_up_msg(LO_INDEX),
        ]
        rcv_msgs = [
            link_up_msg(rcv_index),
            addr_msg(rcv_index, b, 30, socket.AF_INET),
            neigh_msg(rcv_index, a, snd_mac, socket.AF_INET),
            link_up_msg(LO_INDEX),
        ]
        if spec.ipv6:
            snd_msgs += [
                addr_msg(snd_index, a6, 64, socket.AF_INET6),
                neigh_msg(snd_index, b6, rcv_mac, socket.AF_INET6),
            ]
            rcv_msgs += [
                addr_msg(rcv_index, b6, 64, socket.AF_INET6),
                neigh_msg(rcv_index, a6, snd_mac, socket.AF_INET6),
            ]
        try:
            snd_rt.call(*snd_msgs)
        except OSError as exc:
            raise _veth_refused(exc) from None
        rcv_rt.call(*rcv_msgs)
    finally:
        snd_rt.close()
        rcv_rt.close()
    if spec.qdisc is not None:
        _apply_qdisc(sender, spec.qdisc)
    if not spec.tx_checksum:  # the veth dies with its namespace: nothing to undo
        _checksum_off(sender)
    if spec.gro or spec.threaded_napi or spec.rps_cpus is not None:
        receiver.ns.run_with_sysfs(lambda: _shape_receiver(spec, RECEIVER_IF))
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
    except (ConfigError, PrivilegeError):
        raise  # already one sentence naming the qdisc (a missing sch_* module, mq on one queue)
    except Exception as exc:
        raise ConfigError(f"qdisc '{spec.text}' was refused by the kernel: {exc}") from None


def _checksum_off(sender: Endpoint) -> None:
    """TX checksum offload off on the sender's link, in its namespace (as ``ethtool -K IF tx off``).

    A borrowed NIC port gets it back at give-back: its checksum features are part of the
    journaled port state (host/nicport.py)."""
    try:
        now: dict[str, bool] = sender.run(lambda: nicport.set_tx_checksum(sender.ifname, False))
    except OSError as exc:
        raise ConfigError(
            f"tx_checksum=False: the kernel refused to turn checksum offload off on {sender.ifname} "
            f"({exc.strerror}): drop tx_checksum=False or use another link"
        ) from None
    still = sorted(name for name, on in now.items() if on)
    if still:  # a driver that fixes a feature on: the test would measure offloaded sends
        raise ConfigError(
            f"tx_checksum=False: {sender.ifname} keeps {', '.join(still)} on (its driver fixes it): "
            "drop tx_checksum=False or use another link"
        )


def _enable_napi_gro(ifname: str, udp_forwarding: bool = True) -> None:
    """GRO on, and UDP GRO forwarding: without it veth_xmit() keeps non-GSO UDP off the NAPI path
    (veth_skb_is_eligible_for_gro() wants the peer's TSO off or NETIF_F_GRO_UDP_FWD here), so the
    datagrams would never reach the NAPI poll and GRO would change nothing for a UDP sender.
    A NIC always polls with NAPI: there only GRO itself is switched on."""
    from pyroute2.ethtool.ioctl import IoctlEthtool

    ethtool = IoctlEthtool(ifname)
    try:
        features = ethtool.get_features()
        features["rx-gro"] = True
        if udp_forwarding:
            features["rx-udp-gro-forwarding"] = True
        ethtool.set_features(features)
    finally:
        ethtool.close()


def _napi_threads(ifname: str) -> set[int]:
    """Pids of threaded-NAPI kthreads named after ``ifname`` (comm "napi/<ifname>-<napi id>")."""
    prefix = f"napi/{ifname}-"[:15]
    found = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().startswith(prefix):
                found.add(int(comm.parent.name))
    return found


def _thread_napi(dev: Path, cpus: tuple[int, ...] | None) -> None:
    """Switch the device to threaded NAPI and pin its new kthread(s) to ``cpus``.

    Every topology names its receiver alike, so the kthread is told apart from other
    sessions' by appearing while this process holds the "napi" lock."""
    with FileLock("napi"):
        before = _napi_threads(dev.name)
        (dev / "threaded").write_text("1")
        ours = _napi_threads(dev.name) - before
    if cpus is not None and not ours:
        raise ConfigError(f"napi_cpus: no threaded-NAPI kthread appeared for {dev.name}, so there is nothing to pin")
    if cpus is not None:
        for pid in ours:
            os.sched_setaffinity(pid, set(cpus))


def _shape_receiver(spec: TopologySpec, ifname: str) -> None:
    """Runs in the receiver namespace with its own /sys: GRO, threaded NAPI, RPS."""
    dev = Path("/sys/class/net") / ifname
    if spec.gro:
        _enable_napi_gro(ifname, udp_forwarding=not spec.is_nic)
    if spec.threaded_napi:
        _thread_napi(dev, spec.napi_cpus)
    if spec.rps_cpus is not None:
        mask = cpus_mod.format_mask(spec.rps_cpus)  # 32-bit groups: "1,00000000" is CPU 32
        for queue in sorted(dev.glob("queues/rx-*")):
            (queue / "rps_cpus").write_text(mask)


def read_receiver_sysfs(topo: Topology, relative: str) -> str:
    """Read a file under the receiver port's /sys directory (for checks and reports)."""
    path = Path("/sys/class/net") / topo.receiver.ifname / relative
    return str(topo.receiver.ns.run_with_sysfs(lambda: path.read_text().strip()))


def _nic_side(
    ifname: str, spec: TopologySpec, addr: str, peer: str, peer_mac: str, addr6: str | None, peer6: str | None
) -> int:
    """Runs in the namespace a port was moved into: MTU, up, address, static neighbour."""
    index = socket.if_nametoindex(ifname)  # kept if free here, else the kernel picked another
    msgs = [
        link_set_msg(index, mtu=spec.mtu, up=True),
        addr_msg(index, addr, 30, socket.AF_INET),
        neigh_msg(index, peer, peer_mac, socket.AF_INET),
    ]
    if addr6 and peer6:
        msgs += [addr_msg(index, addr6, 64, socket.AF_INET6), neigh_msg(index, peer6, peer_mac, socket.AF_INET6)]
    rt = Rtnl()
    try:
        rt.call(*msgs)
    except OSError as exc:
        raise ConfigError(
            f"NIC port {ifname} refused mtu={spec.mtu} or its address in the test namespace: {exc}"
        ) from None
    finally:
        rt.close()
    return index


CARRIER_WAIT_S = 10.0


def _wait_carrier(ifname: str) -> None:
    """A NIC brought up negotiates its link first: datagrams sent before carrier sit in the qdisc."""
    deadline = time.monotonic() + CARRIER_WAIT_S
    carrier = Path("/sys/class/net") / ifname / "carrier"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if carrier.read_text().strip() == "1":
                return
        time.sleep(0.05)
    raise ConfigError(
        f"NIC port {ifname} has no carrier {CARRIER_WAIT_S:.0f} s after it was brought up: "
        "are the two ports cabled to each other?"
    )


def _move_back(ns: netns_mod.Namespace, ifname: str, home_fd: int, state: nicport.PortState) -> None:
    """IRQ affinity first, while the port is still open (a closed port's vectors ignore it), then home."""
    nicport.restore_irqs(state)

    def body() -> None:
        rt = Rtnl()
        try:
            rt.call(link_set_msg(socket.if_nametoindex(ifname), netns_fd=home_fd))
        finally:
            rt.close()

    ns.run(body)


def build_nic(
    spec: TopologySpec,
    undo: UndoStack,
    subnets: SubnetAllocator,
    ports: tuple[str, str],
    journal: Journal,
    hint: str = "",
) -> Topology:
    """Borrow two NIC ports (sender, receiver) into the test's namespaces; all undone on ``undo``.

    The ports are locked for the test (another session or xdist worker waits), journaled
    before they leave this namespace, moved back explicitly at teardown and restored."""
    if spec.ipv6 and not ipv6_available():
        raise PrivilegeError("ipv6=True, but this kernel has IPv6 disabled: drop ipv6=True")
    for name in sorted(ports):  # one order, whichever way round a session names the pair
        lock = FileLock(f"nic-{name}")
        lock.acquire()
        undo.push(f"unlock NIC port {name}", lock.release)
    borrowed = []
    for name in ports:
        port = nicport.Borrowed(name, journal)
        undo.push(f"give back NIC port {name}", port.give_back)
        borrowed.append(port)
    devices = {name: nicport.device_path(name) for name in ports}
    home_fd = os.open("/proc/self/ns/net", os.O_RDONLY)  # where the ports go back (a container's own netns too)
    undo.push("close home netns fd", lambda: os.close(home_fd))
    made = netns_mod.create([f"snd-{hint}", f"rcv-{hint}"], on_each=lambda: _new_ns_setup(spec.ipv6))
    for ns, _ in made:
        undo.push(f"netns {ns.name}", functools.partial(netns_mod.remove, ns))
    for _ns, setup in made:
        if setup is not None:
            setup[0].close()
    (snd_ns, _), (rcv_ns, _) = made
    rt = Rtnl()
    try:
        for name, ns in zip(ports, (snd_ns, rcv_ns)):
            try:
                rt.call(link_set_msg(socket.if_nametoindex(name), netns_fd=ns.fd))
            except OSError as exc:
                raise ConfigError(
                    f"NIC port {name} cannot move into a test namespace ({exc.strerror}): its driver keeps "
                    "it in this one (NETIF_F_NETNS_LOCAL, e.g. wireless); name two other ports"
                ) from None
            undo.push(
                f"move NIC port {name} home",
                functools.partial(_move_back, ns, name, home_fd, borrowed[ports.index(name)].state),
            )
    finally:
        rt.close()
    a, b, v6a, v6b = subnets.next()
    a6, b6 = (v6a, v6b) if spec.ipv6 else (None, None)
    mac_a, mac_b = (port.state.mac for port in borrowed)
    snd_index = snd_ns.run(lambda: _nic_side(ports[0], spec, a, b, mac_b, a6, b6))
    rcv_index = rcv_ns.run(lambda: _nic_side(ports[1], spec, b, a, mac_a, b6, a6))
    sender = Endpoint(snd_ns, ports[0], a, a6, snd_index)
    receiver = Endpoint(rcv_ns, ports[1], b, b6, rcv_index)
    irqs = {name: nicport.irq_numbers(name, devices[name]) for name in ports}  # drivers may request them at open
    if spec.irq_cpus is not None:
        try:
            nicport.set_irq_affinity(irqs[ports[0]] + irqs[ports[1]], ",".join(map(str, spec.irq_cpus)))
        except OSError as exc:
            raise ConfigError(
                f"irq_cpus={list(spec.irq_cpus)}: the kernel refused the NIC's interrupt affinity "
                f"({exc.strerror}; managed IRQs cannot be moved): drop irq_cpus"
            ) from None
    if spec.qdisc is not None:
        _apply_qdisc(sender, spec.qdisc)
    if not spec.tx_checksum:  # given back with the port (nicport.restore)
        _checksum_off(sender)
    for end in (sender, receiver):
        end.ns.run_with_sysfs(functools.partial(_wait_carrier, end.ifname))
    if spec.gro or spec.threaded_napi or spec.rps_cpus is not None:
        receiver.ns.run_with_sysfs(lambda: _shape_receiver(spec, receiver.ifname))
    return Topology(sender, receiver, spec, irqs)

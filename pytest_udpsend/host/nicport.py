"""Borrowing a real NIC port for a test, and giving it back exactly as it was.

A NIC link moves two ports of the host (two cabled ports, two VFs, or the lane
guest's emulated pair) into the test's namespaces.  Moving a port out and back
loses its addresses and root qdisc (the device is closed on the move), and its
name if another device took it; RPS masks and IRQ
affinity are changed on purpose by the topology.  So, before the move, the port's
state is captured and journaled (like a global sysctl): name, MAC, MTU, up state,
addresses, the routes through it, root qdisc kind, RPS masks, IRQ affinity, TX checksum
offload (which ``topology(tx_checksum=False)`` turns off and a move does not reset).  Teardown moves the port
back and restores it; after a SIGKILL, the next session's reaper deletes the dead
namespaces (the kernel returns physical ports to the initial namespace, a little
later, possibly renamed ``devN``) and restores the journaled state, finding the
port by its MAC.

A port the host relies on is refused, in one sentence naming the use (``host_use``):
a route through it that is not the kernel's own for one of its addresses (any table,
both families: a default, a static, a policy-routing route), a routing rule naming
it, a device stacked on it or a tunnel running over it (its link, its local address,
or its remote reached through it), a bridge/bond/team it is in, a lease (an address
that expires), a bound address, a packet socket on it (a DHCP client, keepalived's
VRRP, a capture), or a qdisc tree that the move would delete and give-back could
not rebuild exactly.  "Exactly" means: a root qdisc, plus an ``mq`` root's per-queue
qdiscs the kernel made, no ingress/clsact, no classes (but ``mq``'s own), no filters,
and every qdisc's options those of a fresh qdisc of its kind on a device of the
port's MTU and queue length (found by making one); the kinds without parameters
(pfifo_fast, noqueue, mq) pass by kind.  The kernel's own qdiscs (handle 0:) cannot be
changed by tc, but one made before an MTU change keeps the old MTU's quantum: that
is a difference too.  A tc-made root that passes is made again at give-back.  The routes the kernel made for the port's
addresses are journaled and given back as they were (the addresses keep their
flags, e.g. noprefixroute, and their metric).  IRQ affinity is written under
``/proc/irq/<n>/`` of the port's own interrupts only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import journal as journal_mod
from pytest_udpsend.host import netns as netns_mod
from pytest_udpsend.host.rtnl import Rtnl, addr_msg, link_set_msg

SYS_NET = Path("/sys/class/net")
PROC_IRQ = Path("/proc/irq")
RETURN_WAIT_S = 10.0  # a dead namespace's ports come back from a kernel workqueue
# What an address was added with (nodad, home, mngtmpaddr, noprefixroute, autojoin); the rest is its state.
IFA_F_KEPT = 0x02 | 0x10 | 0x100 | 0x200 | 0x400
FOREVER = 0xFFFFFFFF  # an address lifetime that never runs out
RTPROT_KERNEL = 2
TABLES = {253: "default", 254: "main", 255: "local"}
PROTOS = {
    1: "redirect",
    2: "kernel",
    3: "boot",
    4: "static",
    9: "ra",
    11: "zebra",
    12: "bird",
    16: "dhcp",
    42: "babel",
    186: "bgp",
    187: "isis",
    188: "ospf",
    189: "rip",
}
# Qdisc kinds with nothing to set: the kind is all of them.
PARAMETERLESS = {"noqueue", "noop", "pfifo_fast", "mq"}
# Kinds whose classes are no configuration: mq's are its transmit queues, the others' their busy flows.
NOT_CLASSES = {"mq", "fq_codel", "sfq", "cake", "fq_pie"}
TUNNELS = {
    "vxlan",
    "geneve",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
    "erspan",
    "ip6erspan",
    "ipip",
    "sit",
    "ip6tnl",
    "vti",
    "vti6",
    "bareudp",
}
USE_FIX = "name two ports the host does not use (cabled back to back, or two VFs)"


def journal_dir() -> Path:
    """Beside the sysctl journal, split by pid namespace the same way (owner tags are pids)."""
    sysctls = journal_mod.journal_dir()
    return sysctls.with_name(sysctls.name.replace("journal", "ports", 1))


@dataclass
class PortState:
    """What the host had on a port before a test borrowed it."""

    name: str
    mac: str
    mtu: int
    up: bool
    # (address, prefixlen, family, flags it was added with, route metric)
    addresses: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    # the kernel's routes for its addresses (_route_key); None in a journal written before routes were kept
    routes: list[dict[str, Any]] | None = None
    qdisc: str = ""  # root qdisc kind while up ("" when down: the device has none then)
    rps: dict[str, str] = field(default_factory=dict)  # rx queue -> rps_cpus mask
    irqs: dict[int, str] = field(default_factory=dict)  # irq -> smp_affinity (mask), of the vectors that exist
    conf: dict[str, str] = field(default_factory=dict)  # "ipv4/rp_filter" -> value, where not the default
    device: str = ""  # its sysfs device path: valid wherever the port is (its IRQs are found there)
    # changeable TX checksum features -> on (topology(tx_checksum=False) turns them off; a move keeps them)
    tx_checksum: dict[str, bool] = field(default_factory=dict)

    def irq_numbers(self) -> list[int]:
        return irq_numbers(self.name, Path(self.device) if self.device else None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> PortState:
        data = json.loads(text)
        data["addresses"] = [(*a, 0, 0)[:5] for a in data["addresses"]]  # a journal of before flags and metrics
        data["irqs"] = {int(k): v for k, v in data["irqs"].items()}
        return PortState(**data)


CONF = Path("/proc/sys/net")


def _conf(name: str) -> dict[str, str]:
    """The port's per-device IP sysctls that differ from this namespace's defaults: a move
    resets them to the destination's defaults, and the way back to this one's."""
    found = {}
    for family in ("ipv4", "ipv6"):
        own, default = CONF / family / "conf" / name, CONF / family / "conf" / "default"
        if not own.is_dir():
            continue
        for knob in own.iterdir():
            try:
                value, base = _read(knob), _read(default / knob.name)
            except OSError:
                continue  # write-only or namespace-specific knobs
            if value != base and os.access(knob, os.W_OK):
                found[f"{family}/{knob.name}"] = value
    return found


def _read(path: Path) -> str:
    return path.read_text().strip()


def device_path(name: str) -> Path:
    """The port's device in sysfs (a path that stays valid while the port is in another namespace)."""
    return Path(os.path.realpath(SYS_NET / name / "device"))


def irq_numbers(name: str, device: Path | None = None) -> list[int]:
    """The port's interrupts: MSI/MSI-X vectors of its PCI function (virtio-net sits one level below it)."""
    dev = device or device_path(name)
    for candidate in (dev, dev.parent):
        msi = candidate / "msi_irqs"
        if msi.is_dir() and any(msi.iterdir()):
            return sorted(int(p.name) for p in msi.iterdir())
    return []  # a legacy INTx line may be shared with other devices: never pinned


def _iproute() -> Any:
    from pyroute2 import IPRoute  # only NIC links need it

    return IPRoute()


def _index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise ConfigError(f"NIC port {name!r} does not exist in this network namespace (see 'ip link')") from None


def capture(name: str) -> PortState:
    """The port's state as the host has it now."""
    index = _index(name)
    base = SYS_NET / name
    ipr = _iproute()
    try:
        addresses = [
            _address(a) for a in ipr.get_addr(index=index) if not (a["family"] == socket.AF_INET6 and a["scope"] == 253)
        ]  # link-local comes back by itself
        roots = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=index) if q["parent"] == 0xFFFFFFFF]
        routes = [_route_key(r) for r in _routes_through(ipr, index) if _journaled(r)]
    finally:
        ipr.close()
    up = bool(int(_read(base / "flags"), 16) & 1)
    return PortState(
        name=name,
        mac=_read(base / "address").lower(),
        mtu=int(_read(base / "mtu")),
        up=up,
        addresses=addresses,
        routes=sorted(routes, key=json.dumps),
        qdisc=(roots[0] if roots else "") if up else "",
        rps={q.name: _read(q / "rps_cpus") for q in sorted(base.glob("queues/rx-*")) if (q / "rps_cpus").exists()},
        irqs={
            irq: _read(PROC_IRQ / str(irq) / "smp_affinity")
            for irq in irq_numbers(name)
            if (PROC_IRQ / str(irq)).is_dir()
        },  # a never-opened port may hold no vectors yet
        conf=_conf(name),
        device=str(device_path(name)),
        tx_checksum=tx_checksum(name),
    )


TX_CHECKSUM = "tx-checksum-"  # ethtool's "tx": tx-checksum-ipv4, -ip-generic, -ipv6, -sctp, -fcoe-crc


def tx_checksum(name: str) -> dict[str, bool]:
    """The device's TX checksum features that can be changed, and whether each is on (this namespace)."""
    from pyroute2.ethtool import Ethtool  # ETHTOOL_GFEATURES; only links that change offloads need it

    with Ethtool() as ethtool:
        features = ethtool.get_features(name).features
    return {key: bool(f.enable) for key, f in features.items() if key.startswith(TX_CHECKSUM) and f.available}


def set_tx_checksum(name: str, wanted: bool | dict[str, bool]) -> dict[str, bool]:
    """Turn the device's TX checksum features all on or off (``wanted`` a bool), or each as given
    (a dict from tx_checksum()); returns them as the kernel then has them."""
    from pyroute2.ethtool import Ethtool

    with Ethtool() as ethtool:
        features = ethtool.get_features(name)
        for key, feature in features.features.items():
            if key.startswith(TX_CHECKSUM) and feature.available:
                feature.enable = wanted if isinstance(wanted, bool) else wanted.get(key, feature.enable)
        ethtool.set_features(name, features)
    return tx_checksum(name)


def _address(msg: Any) -> tuple[str, int, int, int, int]:
    family = msg["family"]
    address = msg.get_attr("IFA_ADDRESS") if family == socket.AF_INET6 else msg.get_attr("IFA_LOCAL")
    flags = msg.get_attr("IFA_FLAGS")
    kept = (msg["flags"] if flags is None else flags) & IFA_F_KEPT
    return (address, msg["prefixlen"], family, kept, msg.get_attr("IFA_RT_PRIORITY") or 0)


def _routes_through(ipr: Any, index: int) -> list[Any]:
    """Every route with a hop through the port: all tables (the dump holds them all), both families."""
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family):
            hops = [route.get_attr("RTA_OIF")] + [h["oif"] for h in route.get_attr("RTA_MULTIPATH") or []]
            if index in hops:
                found.append(route)
    return found


def _table(route: Any) -> int:
    return int(route.get_attr("RTA_TABLE") or route["table"])


def _kernels_own(route: Any) -> bool:
    """A route the kernel made for an address or for the link itself: it comes back with them."""
    cache = route.get_attr("RTA_CACHEINFO")
    return route["proto"] == RTPROT_KERNEL and not (cache and cache["rta_expires"])  # an RA's expire


def _journaled(route: Any) -> bool:
    """The kernel's own routes that follow the addresses (the local table's and IPv6's link routes
    follow the link, whenever it is up)."""
    dst, length = route.get_attr("RTA_DST"), route["dst_len"]
    link_v6 = route["family"] == socket.AF_INET6 and (
        str(dst).startswith("fe80:") and length == 64 or str(dst).startswith("ff00:") and length == 8
    )
    return _kernels_own(route) and _table(route) != 255 and not link_v6


def _route_key(route: Any) -> dict[str, Any]:
    """What identifies a route, as JSON (a journal entry) and as the arguments to add it again."""
    return {
        "family": route["family"],
        "table": _table(route),
        "dst": route.get_attr("RTA_DST"),
        "dst_len": route["dst_len"],
        "type": route["type"],
        "scope": route["scope"],
        "proto": route["proto"],
        "priority": route.get_attr("RTA_PRIORITY"),
        "prefsrc": route.get_attr("RTA_PREFSRC"),
    }


def _route_text(route: Any, index: int) -> str:
    """A route as ip(8) writes it, and where it is kept: "'default via 10.0.0.1' (table main, proto boot)"."""
    dst = f"{route.get_attr('RTA_DST')}/{route['dst_len']}" if route["dst_len"] else "default"
    hops = [route.get_attr("RTA_GATEWAY")] + [
        (h.get_attr("RTA_GATEWAY") if h["oif"] == index else None) for h in route.get_attr("RTA_MULTIPATH") or []
    ]
    via = next((f" via {gw}" for gw in hops if gw), "")
    table, proto = _table(route), route["proto"]
    return f"'{dst}{via}' (table {TABLES.get(table, table)}, proto {PROTOS.get(proto, proto)})"


def _hex_addr(address: str, family: int) -> str:
    """An address as /proc/net/{tcp,udp}{,6} print it (host-order 32-bit words)."""
    raw = socket.inet_pton(family, address)
    return "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))


def _bound_locals() -> set[str]:
    found: set[str] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:  # thread-self: the namespace this thread is in (/proc/net is the process's main thread's)
            lines = Path(f"/proc/thread-self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        found.update(line.split()[1].split(":")[0] for line in lines if line.strip())
    return found


def refuse_if_used(state: PortState) -> None:
    """One sentence if the host relies on this port (``host_use``), or if it would not come back
    (a virtual device dies with the test's namespace after a SIGKILL).  The uses come first: the
    sentence names what the host would lose."""
    use = host_use(state)
    if use is not None:
        raise ConfigError(f"--udpsend-nic-pair: {state.name} {use}")
    base = SYS_NET / state.name
    if not (base / "device").exists():
        raise ConfigError(
            f"--udpsend-nic-pair: {state.name} is a virtual device (no {base}/device), which a killed "
            "session's namespace would take with it; name two physical ports or VFs"
        )


def host_use(state: PortState) -> str | None:
    """What the host uses the port for, as the rest of a sentence after its name (with the fix), or None."""
    index = _index(state.name)
    ipr = _iproute()
    try:
        use = (
            _underlay(ipr, index, state)
            or _stacked(state)
            or _routed(ipr, index)
            or _ruled(ipr, state.name)
            or _leased(ipr, index)
            or _bound(state)
            or _packet_users(index)
        )
    finally:
        ipr.close()
    return use or _qdisc_problem(state.name)


def _stacked(state: PortState) -> str | None:
    base = SYS_NET / state.name
    uppers = sorted(p.name.removeprefix("upper_") for p in base.glob("upper_*"))
    lowers = sorted(p.name.removeprefix("lower_") for p in base.glob("lower_*"))
    if (base / "master").exists() or uppers:
        over = os.path.basename(os.readlink(base / "master")) if (base / "master").exists() else ", ".join(uppers)
        return f"is part of {over} (a bridge, bond, team, VLAN, macvlan or ipvlan the host uses through it); {USE_FIX}"
    if lowers:
        return f"is the master of {', '.join(lowers)}; {USE_FIX}"
    return None


def _routed(ipr: Any, index: int) -> str | None:
    for route in _routes_through(ipr, index):
        if not _kernels_own(route):
            return f"carries this host's route {_route_text(route, index)}; {USE_FIX}"
    return None


def _ruled(ipr: Any, name: str) -> str | None:
    for rule in ipr.get_rules():
        for attr, word in (("FRA_IIFNAME", "iif"), ("FRA_OIFNAME", "oif")):
            if rule.get_attr(attr) == name:
                table = rule.get_attr("FRA_TABLE") or rule["table"]
                return (
                    f"is named by this host's routing rule '{word} {name} lookup {TABLES.get(table, table)}'; {USE_FIX}"
                )
    return None


def _underlay(ipr: Any, index: int, state: PortState) -> str | None:
    """A device of this namespace that runs over the port: its link (IFLA_LINK, or a tunnel's own
    *_LINK: VXLAN, GRE, IPIP, VTI), its local address, or its remote reached through the port (geneve
    has neither link nor local)."""
    own = {a for a, *_ in state.addresses}
    for link in ipr.get_links():
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        if link["index"] == index or kind == "veth" or link.get_attr("IFLA_LINK_NETNSID") is not None:
            continue  # a veth's link is its peer; a link of another namespace is an index there
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        attrs = [
            (str(a[0]), a[1])
            for a in (data["attrs"] if data is not None and not isinstance(data, (str, bytes)) else [])
        ]
        links = [link.get_attr("IFLA_LINK")] + [v for k, v in attrs if k.endswith("_LINK")]
        why = "its link" if index in links else None
        why = why or next(
            (f"its local address {v}" for k, v in attrs if k.endswith(("_LOCAL", "_LOCAL6")) and v in own), None
        )
        why = why or next(
            (
                f"its remote {v} is reached through {state.name}"
                for k, v in attrs
                if k.endswith(("_REMOTE", "_REMOTE6", "_GROUP", "_GROUP6")) and _reached_by(ipr, v, index)
            ),
            None,
        )
        if why:
            role = "underlay" if kind in TUNNELS else "lower device"
            return f"is the {role} of this host's {kind or 'stacked'} device {link.get_attr('IFLA_IFNAME')} ({why}); {USE_FIX}"
    return None


def _reached_by(ipr: Any, address: object, index: int) -> bool:
    if not isinstance(address, str) or address in ("0.0.0.0", "::"):
        return False
    try:
        return any(r.get_attr("RTA_OIF") == index for r in ipr.route("get", dst=address))
    except Exception:  # no route to it (pyroute2 raises NetlinkError): not through the port
        return False


def _leased(ipr: Any, index: int) -> str | None:
    for msg in ipr.get_addr(index=index):
        cache = msg.get_attr("IFA_CACHEINFO")
        if cache and cache["ifa_valid"] != FOREVER and msg["scope"] != 253:
            address, prefix, *_ = _address(msg)
            return (
                f"has the dynamic address {address}/{prefix} (a lease that expires: the host's DHCP or SLAAC "
                f"renews it); {USE_FIX}"
            )
    return None


def _bound(state: PortState) -> str | None:
    bound = _bound_locals()
    for address, _prefix, fam, *_ in state.addresses:
        if _hex_addr(address, fam) in bound:
            return f"has {address}, which a socket of this host is bound to; {USE_FIX}"
    return None


def _packet_users(index: int) -> str | None:
    """A packet socket bound to the port (DHCP clients and keepalived's VRRP hold one): from the
    Iface column of /proc/net/packet, its owner from the socket's inode."""
    try:
        lines = Path("/proc/thread-self/net/packet").read_text().splitlines()[1:]
    except OSError:
        return None  # no AF_PACKET in this kernel
    inodes = {
        f"socket:[{cols[8]}]" for cols in (line.split() for line in lines) if len(cols) > 8 and cols[4] == str(index)
    }
    if not inodes:
        return None
    owner = "a process not found in /proc"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _holds(proc, inodes):
            try:
                owner = f"pid {proc.name} ({_read(proc / 'comm')})"
            except OSError:
                continue
            break
    return (
        f"has a packet socket of {owner} bound to it (a DHCP client, keepalived/VRRP or a capture the host "
        f"runs); {USE_FIX}"
    )


def _holds(proc: Path, inodes: set[str]) -> bool:
    try:
        return any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir())
    except OSError:  # gone, or not ours to read
        return False


def _tc(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    argv = ["tc", *(["-n", netns] if netns else []), "-j", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"'{' '.join(argv)}' failed ({done.stderr.strip()}): is iproute2's tc installed and current?")
    return list(json.loads(done.stdout or "[]"))


def _qdisc_problem(name: str) -> str | None:
    """Why the port's qdisc tree could not come back exactly after the move deletes it, or None."""
    qdiscs = _tc("qdisc", "show", "dev", name)
    root = next((q for q in qdiscs if q.get("root")), None)
    fix = f"delete it ('tc qdisc del dev {name} root' gives the kernel's default back) or name two other ports"
    lead = "which a move into a test namespace deletes and give-back could not rebuild exactly"
    for q in qdiscs:
        label = f"{q['kind']} {q['handle']}"
        if q["kind"] in ("ingress", "clsact"):
            return (
                f"has the qdisc {label} on ingress or egress, {lead}; delete it "
                f"('tc qdisc del dev {name} {q['kind']}') or name two other ports"
            )
        per_queue = (
            root is not None
            and root["kind"] == "mq"
            and q["handle"] == "0:"
            and _major(str(q.get("parent"))) == _major(root["handle"])
        )
        if q is not root and not per_queue:
            return f"has the qdisc {label} under {q.get('parent')}, {lead}; {fix}"
    ipr = _iproute()  # tc -j prints no classes as JSON (iproute2 6.1)
    try:
        classes = [c for c in ipr.get_classes(index=_index(name)) if c.get_attr("TCA_KIND") not in NOT_CLASSES]
        filters = ipr.get_filters(index=_index(name)) if root is not None else []  # parent 0: the root's
    finally:
        ipr.close()
    if classes:
        return f"has the qdisc {classes[0].get_attr('TCA_KIND')} {classes[0]['handle'] >> 16:x}: with classes, {lead}; {fix}"
    if filters and root is not None:  # filters are only read under a root qdisc
        return f"has filters on its root qdisc {root['kind']} {root['handle']}, {lead}; {fix}"
    base = SYS_NET / name
    for q in qdiscs:
        if q["kind"] in PARAMETERLESS:
            continue
        fresh = _fresh_options(q["kind"], int(_read(base / "mtu")), int(_read(base / "tx_queue_len")))
        changed = [f"{k} {v}" for k, v in (q.get("options") or {}).items() if fresh.get(k) != v]
        if changed:  # the kernel's own (handle 0:) too, made before an MTU change: tc cannot delete that one
            where = "root qdisc" if q is root else "qdisc"
            anew = f"make it anew ('tc qdisc replace dev {name} root {root['kind'] if root else q['kind']}')"
            return (
                f"has the {where} {q['kind']} {q['handle']} with non-default parameters ({', '.join(changed)}), "
                f"{lead}; {anew if q['handle'] == '0:' else fix}"
            )
    return None


def _major(handle: str) -> int:
    """The major number of a handle as tc prints it ("8001:", ":1" for major 0)."""
    return int(handle.split(":")[0] or "0", 16)


_fresh: dict[tuple[str, int, int], dict[str, Any]] = {}


def _fresh_options(kind: str, mtu: int, txqlen: int) -> dict[str, Any]:
    """The options a new qdisc of ``kind`` gets with no parameters, on a device like the port (some
    defaults follow the MTU or the queue length): made on a veth in a namespace of its own."""
    if (kind, mtu, txqlen) not in _fresh:
        ((ns, _),) = netns_mod.create(["qdisc-probe"])
        try:
            ip = [
                "ip",
                "-n",
                ns.name,
                "link",
                "add",
                "q0",
                "mtu",
                str(mtu),
                "txqueuelen",
                str(txqlen),
                "type",
                "veth",
                "peer",
                "name",
                "q1",
            ]
            subprocess.run(ip, capture_output=True, check=True)
            _tc("qdisc", "replace", "dev", "q0", "root", kind, netns=ns.name)
            (made,) = _tc("qdisc", "show", "dev", "q0", "root", netns=ns.name)
            _fresh[(kind, mtu, txqlen)] = dict(made.get("options") or {})
        finally:
            netns_mod.remove(ns)
    return _fresh[(kind, mtu, txqlen)]


def set_irq_affinity(irqs: list[int], cpus: str) -> None:
    """Pin the interrupts that exist now (drivers request theirs when the port opens)."""
    for irq in irqs:
        if (PROC_IRQ / str(irq)).is_dir():
            (PROC_IRQ / str(irq) / "smp_affinity_list").write_text(cpus)


def find_by_mac(mac: str, wait_s: float = 0.0) -> str | None:
    """The name of the port with this MAC in the current namespace (waiting up to ``wait_s``);
    only devices with hardware behind them count (a VLAN or macvlan on a port shares its MAC)."""
    deadline = time.monotonic() + wait_s
    while True:
        for dev in SYS_NET.iterdir():
            try:
                if (dev / "device").exists() and _read(dev / "address").lower() == mac:
                    return dev.name
            except OSError:
                continue
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _irq_writes(state: PortState) -> dict[int, str]:
    """Affinity to write: the saved one, and the default for vectors the test's open created."""
    default = _read(PROC_IRQ / "default_smp_affinity")
    wanted = {irq: state.irqs.get(irq, default) for irq in state.irq_numbers() if (PROC_IRQ / str(irq)).is_dir()}
    return {irq: mask for irq, mask in wanted.items() if _read(PROC_IRQ / str(irq) / "smp_affinity") != mask}


def restore_irqs(state: PortState) -> None:
    """Put the IRQ affinity back (call while the port is open: a closed port's vectors ignore it)."""
    for irq, mask in _irq_writes(state).items():
        (PROC_IRQ / str(irq) / "smp_affinity").write_text(mask)


def restore(state: PortState, wait_s: float = RETURN_WAIT_S) -> None:
    """Give the port back its name, MTU, addresses (with their flags and metrics), up state, the
    routes through it, root qdisc, RPS masks, IRQ affinity, per-device IP sysctls and TX checksum offload."""
    current = find_by_mac(state.mac, wait_s)
    if current is None:
        raise ConfigError(f"NIC port {state.name} ({state.mac}) did not come back to this namespace")
    rt = Rtnl()
    try:
        index = _index(current)
        if current != state.name:  # renamed devN on its way back: a device must be down to be renamed
            rt.call(link_set_msg(index, up=False), link_set_msg(index, ifname=state.name))
        # a port the host had down is opened only if its IRQ affinity must be written (closed, it is ignored)
        irqs_off = bool(_irq_writes(state))
        rt.call(link_set_msg(index, mtu=state.mtu, up=state.up or irqs_off))
        have = {(a, p, f) for a, p, f, *_ in capture(state.name).addresses}
        missing = [_address_msg(index, *addr) for addr in state.addresses if addr[:3] not in have]
        if missing:
            rt.call(*missing)
        _restore_qdisc(state)
        for queue, mask in state.rps.items():
            (SYS_NET / state.name / "queues" / queue / "rps_cpus").write_text(mask)
        for irq, mask in _irq_writes(state).items():
            (PROC_IRQ / str(irq) / "smp_affinity").write_text(mask)
        for knob, value in state.conf.items():
            family, _, leaf = knob.partition("/")
            (CONF / family / "conf" / state.name / leaf).write_text(value)
        if state.tx_checksum and tx_checksum(state.name) != state.tx_checksum:  # a journal of before: {}
            set_tx_checksum(state.name, state.tx_checksum)
        if not state.up and irqs_off:
            rt.call(link_set_msg(index, up=False))
    finally:
        rt.close()
    _restore_routes(state, index)


def _address_msg(index: int, address: str, prefixlen: int, family: int, flags: int, metric: int) -> Any:
    """The address as the host had it: a noprefixroute one adds no route, a metric sets its route's."""
    msg = addr_msg(index, address, prefixlen, family)
    msg["flags"] = flags & 0xFF
    msg["attrs"].append(("IFA_FLAGS", flags))
    if metric:
        msg["attrs"].append(("IFA_RT_PRIORITY", metric))
    return msg


def _restore_routes(state: PortState, index: int) -> None:
    """Make the kernel's routes through the port those journaled: the addresses brought most back;
    add what is missing, delete what the host did not have."""
    if state.routes is None:
        return  # journaled by a version that kept none: the addresses brought back what they bring
    ipr = _iproute()
    try:
        have = [_route_key(r) for r in _routes_through(ipr, index) if _journaled(r)]
        for key in [k for k in state.routes if k not in have]:
            ipr.route("add", oif=index, **{k: v for k, v in key.items() if v is not None})
        for key in [k for k in have if k not in state.routes]:
            ipr.route("del", oif=index, **{k: v for k, v in key.items() if v is not None})
    except Exception as exc:  # pyroute2's NetlinkError
        raise ConfigError(
            f"NIC port {state.name}: could not give back its routes ({exc}); see 'ip route show table all "
            f"dev {state.name}'"
        ) from None
    finally:
        ipr.close()


def _restore_qdisc(state: PortState) -> None:
    """A moved port is closed, so its root qdisc was replaced by the default one on the way back.
    tc(8) puts the kind back with its default parameters (pyroute2 has no defaults for every kind)."""
    if not state.up or not state.qdisc or capture(state.name).qdisc == state.qdisc:
        return
    done = subprocess.run(
        ["tc", "qdisc", "replace", "dev", state.name, "root", state.qdisc], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ConfigError(
            f"NIC port {state.name}: could not put its root qdisc {state.qdisc} back: {done.stderr.strip()}"
        )


def differences(before: PortState, after: PortState) -> list[str]:
    """What differs between two captures of a port.  An interrupt vector that exists only
    afterwards (the port was opened once) counts only if its affinity is not the default."""
    a, b = asdict(before), asdict(after)
    default = _read(PROC_IRQ / "default_smp_affinity")
    b["irqs"] = {irq: mask for irq, mask in after.irqs.items() if irq in before.irqs or mask != default}
    return [f"{key}: {a[key]!r} -> {b[key]!r}" for key in a if a[key] != b[key]]


class Borrowed:
    """A port journaled before it leaves the host, restored (and unjournaled) when it comes back."""

    def __init__(self, name: str, journal: journal_mod.Journal) -> None:
        self.state = capture(name)
        refuse_if_used(self.state)
        self.journal = journal
        self.key = f"port {self.state.mac}"
        journal.record(self.key, self.state.to_json())

    def give_back(self) -> None:
        restore(self.state)
        self.journal.forget(self.key)


def orphans_exist() -> bool:
    return bool(journal_mod.orphans(journal_dir()))


def restore_orphans() -> journal_mod.Restored:
    """Ports that dead sessions borrowed: run after their namespaces were reaped."""
    done = journal_mod.restore_orphans(lambda _key, value: restore(PortState.from_json(value)), journal_dir())
    done.knobs = [f"NIC port {PortState.from_json(k.split('=', 1)[1]).name}" for k in done.knobs]
    return done

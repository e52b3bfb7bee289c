"""Borrowing a real NIC port for a test, and giving it back exactly as it was.

A NIC link moves two ports of the host (two cabled ports, two VFs, or the lane
guest's emulated pair) into the test's namespaces.  Moving a port out and back
loses its addresses and root qdisc (the device is closed on the move), and its
name if another device took it; RPS masks and IRQ
affinity are changed on purpose by the topology.  So, before the move, the port's
state is captured and journaled (like a global sysctl): name, MAC, MTU, up state,
addresses, root qdisc kind, RPS masks, IRQ affinity.  Teardown moves the port
back and restores it; after a SIGKILL, the next session's reaper deletes the dead
namespaces (the kernel returns physical ports to the initial namespace, a little
later, possibly renamed ``devN``) and restores the journaled state, finding the
port by its MAC.

A port the host relies on is refused: one carrying a default route, or whose
address a socket of the host is bound to.  IRQ affinity is written under
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
from pytest_udpsend.host.rtnl import Rtnl, addr_msg, link_set_msg

SYS_NET = Path("/sys/class/net")
PROC_IRQ = Path("/proc/irq")
RETURN_WAIT_S = 10.0  # a dead namespace's ports come back from a kernel workqueue


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
    addresses: list[tuple[str, int, int]] = field(default_factory=list)  # (address, prefixlen, family)
    qdisc: str = ""  # root qdisc kind while up ("" when down: the device has none then)
    rps: dict[str, str] = field(default_factory=dict)  # rx queue -> rps_cpus mask
    irqs: dict[int, str] = field(default_factory=dict)  # irq -> smp_affinity (mask), of the vectors that exist
    conf: dict[str, str] = field(default_factory=dict)  # "ipv4/rp_filter" -> value, where not the default
    device: str = ""  # its sysfs device path: valid wherever the port is (its IRQs are found there)

    def irq_numbers(self) -> list[int]:
        return irq_numbers(self.name, Path(self.device) if self.device else None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> PortState:
        data = json.loads(text)
        data["addresses"] = [tuple(a) for a in data["addresses"]]
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
        addresses = [(a.get_attr("IFA_ADDRESS") if a["family"] == socket.AF_INET6 else a.get_attr("IFA_LOCAL"),
                      a["prefixlen"], a["family"]) for a in ipr.get_addr(index=index)
                     if not (a["family"] == socket.AF_INET6 and a["scope"] == 253)]  # link-local comes back by itself  # fmt: skip
        roots = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=index) if q["parent"] == 0xFFFFFFFF]
    finally:
        ipr.close()
    up = bool(int(_read(base / "flags"), 16) & 1)
    return PortState(
        name=name,
        mac=_read(base / "address").lower(),
        mtu=int(_read(base / "mtu")),
        up=up,
        addresses=addresses,
        qdisc=(roots[0] if roots else "") if up else "",
        rps={q.name: _read(q / "rps_cpus") for q in sorted(base.glob("queues/rx-*")) if (q / "rps_cpus").exists()},
        irqs={irq: _read(PROC_IRQ / str(irq) / "smp_affinity") for irq in irq_numbers(name)
              if (PROC_IRQ / str(irq)).is_dir()},  # a never-opened port may hold no vectors yet  # fmt: skip
        conf=_conf(name),
        device=str(device_path(name)),
    )


def _hex_addr(address: str, family: int) -> str:
    """An address as /proc/net/{tcp,udp}{,6} print it (host-order 32-bit words)."""
    raw = socket.inet_pton(family, address)
    return "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))


def _bound_locals() -> set[str]:
    found: set[str] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        found.update(line.split()[1].split(":")[0] for line in lines if line.strip())
    return found


def refuse_if_used(state: PortState) -> None:
    """One sentence if the host relies on this port: a bond/bridge/VLAN on it, a default route
    through it, or a bound address; or if it would not come back (a virtual device dies with
    the test's namespace after a SIGKILL)."""
    base = SYS_NET / state.name
    if not (base / "device").exists():
        raise ConfigError(f"--udpsend-nic-pair: {state.name} is a virtual device (no {base}/device), which a killed "
                          "session's namespace would take with it; name two physical ports or VFs")  # fmt: skip
    uppers = sorted(p.name.removeprefix("upper_") for p in base.glob("upper_*"))
    if (base / "master").exists() or uppers:
        over = os.path.basename(os.readlink(base / "master")) if (base / "master").exists() else ", ".join(uppers)
        raise ConfigError(f"--udpsend-nic-pair: {state.name} is part of {over} (a bond, bridge or VLAN the host uses "
                          "through it); name two ports the host does not use")  # fmt: skip
    index = _index(state.name)
    ipr = _iproute()
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=254):
                hops = [route.get_attr("RTA_OIF")] + [h["oif"] for h in route.get_attr("RTA_MULTIPATH") or []]
                if route["dst_len"] == 0 and index in hops:
                    raise ConfigError(f"--udpsend-nic-pair: {state.name} carries this host's default route; "
                                      "name two ports the host does not use (cabled back to back, or two VFs)")  # fmt: skip
    finally:
        ipr.close()
    bound = _bound_locals()
    for address, _prefix, fam in state.addresses:
        if _hex_addr(address, fam) in bound:
            raise ConfigError(f"--udpsend-nic-pair: {state.name} has {address}, which a socket of this host is bound to; "
                              "name two ports the host does not use")  # fmt: skip


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
    """Give the port back its name, MTU, addresses, up state, root qdisc, RPS masks, IRQ affinity
    and per-device IP sysctls."""
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
        have = {(a, p, f) for a, p, f in capture(state.name).addresses}
        missing = [addr_msg(index, a, p, f) for a, p, f in state.addresses if (a, p, f) not in have]
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
        if not state.up and irqs_off:
            rt.call(link_set_msg(index, up=False))
    finally:
        rt.close()


def _restore_qdisc(state: PortState) -> None:
    """A moved port is closed, so its root qdisc was replaced by the default one on the way back.
    tc(8) puts the kind back with its default parameters (pyroute2 has no defaults for every kind)."""
    if not state.up or not state.qdisc or capture(state.name).qdisc == state.qdisc:
        return
    done = subprocess.run(["tc", "qdisc", "replace", "dev", state.name, "root", state.qdisc],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise ConfigError(f"NIC port {state.name}: could not put its root qdisc {state.qdisc} back: {done.stderr.strip()}")


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

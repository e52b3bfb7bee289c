"""NIC links: emulated NIC pairs in the kernel lane, and the bare-metal --udpsend-nic-pair path.

These run inside the lane's guest (ci/lane.sh), which boots with a back-to-back pair of
each NIC model the selected tests' topology markers name; on a host without such a
pair they skip.  The pair path is exercised on the guest's emulated ports standing in
for cabled ones: inner pytest sessions borrow them with --udpsend-nic-pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import nicport, nics

pytestmark = pytest.mark.nic

# The driver's TX completion, as a substring of a frame of the top release stack.
TX_COMPLETION = {"vmxnet3": ("vmxnet3_tq_tx_complete", "vmxnet3_poll"), "virtio": ("free_old_xmit", "virtnet_poll")}


def _per_cpu(r, port):
    """A port's interrupts during the run, summed over its vectors, per CPU."""
    return [sum(col) for col in zip(*r.irqs[port].values())]


@pytest.mark.parametrize(
    "link", [pytest.param(link, marks=pytest.mark.topology(link=link, irq_cpus=[1])) for link in ("vmxnet3", "virtio")]
)
@pytest.mark.udpsend(duration=1.0, cpu=0, payload=1000)
@pytest.mark.wfree_latency(backend="bpf")
def test_tx_completion_frees_every_datagram_in_the_driver(udpsend_result, link):
    r = udpsend_result
    w = r.wfree
    assert r.topology.startswith(f"{link} "), r.topology
    assert r.received > 0.5 * r.sent
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    frames = [f for stack in w["stacks"][:1] for f in stack["frames"]]
    assert any(name in f for f in frames for name in TX_COMPLETION[link]), w["stacks"][:2]
    sender_port = next(iter(r.irqs))
    per_cpu = _per_cpu(r, sender_port)
    assert per_cpu[1] >= 0.95 * sum(per_cpu) > 0, r.irqs  # irq_cpus=[1] (x86 moves a vector at its next interrupt)


@pytest.mark.topology(link="vmxnet3", irq_cpus=[1], rps_cpus=[1], mtu=1400)
def test_nic_pair_fixture_moves_the_ports_into_the_test_and_pins_their_irqs(nic_pair):
    assert nic_pair.describe().startswith("vmxnet3 mtu=1400")
    for port in (nic_pair.sender.ifname, nic_pair.receiver.ifname):
        assert not (Path("/sys/class/net") / port).exists()  # it lives in the test's namespace now
        assert all(Path(f"/proc/irq/{irq}/smp_affinity_list").read_text().strip() == "1" for irq in nic_pair.irqs[port])


INNER = """
import os, time
import pytest

@pytest.mark.topology(link="nic", rps_cpus=[1], irq_cpus=[1], mtu=1400, qdisc="prio")
@pytest.mark.udpsend(duration=0.5, cpu=0)
def test_send(udpsend_result):
    assert udpsend_result.received > 0

@pytest.mark.topology(link="nic", rps_cpus=[1], irq_cpus=[1], mtu=1400, qdisc="prio")
def test_hang(nic_pair):
    open(os.environ["HANG_FLAG"], "w").close()
    time.sleep(600)
"""


def _inner(tmp_path: Path, pair: tuple[str, str], *args: str, popen: bool = False):
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDPSEND_LANE_")}  # not a lane guest itself
    env["HANG_FLAG"] = str(tmp_path / "hanging")
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--udpsend-require-privileges",
        "--udpsend-backend",
        "timestamp",
        f"--udpsend-nic-pair={pair[0]},{pair[1]}",
        str(tmp_path),
        *args,
    ]
    if popen:
        return subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


CARRIER_FLAGS = {"NO-CARRIER", "LOWER_UP", "DORMANT", "M-DOWN"}  # link negotiation, not configuration


def _snapshot(port: str) -> dict:
    """The port as ip(8), tc(8), sysfs and procfs show it: independent of nicport.capture()."""

    def ip_json(*args: str) -> list:
        return json.loads(subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout)

    link = ip_json("-d", "link", "show", "dev", port)[0]
    addrs = [
        {k: a.get(k) for k in ("family", "local", "prefixlen", "broadcast", "scope", "noprefixroute", "metric")}
        for a in ip_json("addr", "show", "dev", port)[0]["addr_info"]
        if a.get("scope") != "link"
    ]
    # IPv6's link-local and multicast routes are the kernel's: addrconf adds them once the port has
    # carrier, a moment after it comes up, and the give-back leaves them to it (nicport.py); a
    # snapshot taken before carrier lacks them, so they are not part of what must come back.
    routes = sorted(
        json.dumps({k: v for k, v in r.items() if k != "flags"}, sort_keys=True)  # flags: carrier
        for fam in ("-4", "-6")
        for r in ip_json(fam, "route", "show", "table", "all", "dev", port)
        if not str(r.get("dst", "")).startswith(("fe80:", "ff00:"))
    )
    qdisc = json.loads(
        subprocess.run(
            ["tc", "-j", "qdisc", "show", "dev", port, "root"], check=True, capture_output=True, text=True
        ).stdout
    )
    base = Path("/sys/class/net") / port
    irqs = {
        irq: Path(f"/proc/irq/{irq}/smp_affinity").read_text().strip()
        for irq in nicport.irq_numbers(port)
        if Path(f"/proc/irq/{irq}/smp_affinity").exists()
    }
    default = Path("/proc/irq/default_smp_affinity").read_text().strip()
    conf = {}
    for fam in ("ipv4", "ipv6"):
        for knob in sorted((Path("/proc/sys/net") / fam / "conf" / port).glob("*")):
            with contextlib.suppress(OSError):  # write-only knobs
                conf[f"{fam}/{knob.name}"] = knob.read_text().strip()
    return {
        "link": {k: link.get(k) for k in ("ifname", "address", "mtu", "qdisc")},
        "flags": sorted(set(link.get("flags", [])) - CARRIER_FLAGS),
        "addrs": addrs,
        "routes": routes,
        "root_qdisc": [(q.get("kind"), q.get("options")) for q in qdisc],
        "rps": {q.name: (q / "rps_cpus").read_text().strip() for q in sorted(base.glob("queues/rx-*"))},
        "irqs_pinned": {irq: mask for irq, mask in irqs.items() if mask != default},
        "conf": conf,
    }


def _changes(before: dict, port: str) -> dict:
    after = _snapshot(port)
    return {k: (before[k], after[k]) for k in before if before[k] != after[k]}


@pytest.fixture
def host_ports():
    """The lane's e1000e pair, set up the way a host might have its spare ports: addresses (one
    without its prefix route, one with a metric), odd MTU, a root qdisc tc made (with its default
    parameters: one made with others is refused), an RPS mask, an IRQ pinned, one port up and one down."""
    pairs = nics.lane_pairs(os.environ.get(nics.LANE_NICS_ENV, ""))
    if "e1000e" not in pairs:
        pytest.skip("needs the kernel lane's e1000e pair (ci/lane.sh)")
    a, b = pairs["e1000e"]
    _ip("addr", "flush", "dev", a)
    _ip("link", "set", a, "mtu", "1450", "up")
    _ip("addr", "add", "10.251.0.1/24", "dev", a)
    _ip("addr", "add", "10.252.0.1/24", "dev", a, "noprefixroute")
    _ip("addr", "add", "10.253.0.1/24", "dev", a, "metric", "77")
    _ip("link", "set", b, "down")
    subprocess.run(["tc", "qdisc", "replace", "dev", a, "root", "pfifo"], check=True)
    (Path("/sys/class/net") / b / "queues/rx-0/rps_cpus").write_text("1")
    irq = nicport.irq_numbers(a)[0]
    Path(f"/proc/irq/{irq}/smp_affinity_list").write_text("0")
    (Path("/proc/sys/net/ipv4/conf") / a / "rp_filter").write_text("2")  # a per-device sysctl the host set
    before = {p: nicport.capture(p) for p in (a, b)}
    snap = {p: _snapshot(p) for p in (a, b)}
    yield a, b, snap
    for state in before.values():  # leave the guest as found even if the test failed
        if nicport.find_by_mac(state.mac) is not None:
            nicport.restore(state, wait_s=0)
    _ip("addr", "flush", "dev", a)
    subprocess.run(["tc", "qdisc", "del", "dev", a, "root"], check=False)  # the kernel's default again
    (Path("/proc/sys/net/ipv4/conf") / a / "rp_filter").write_text("0")


# The lane boots its guest with an e1000e pair because of this marker; the test borrows it by name.
@pytest.mark.topology(link="e1000e")
def test_ports_come_back_exactly_after_a_pass_and_after_a_sigkill(tmp_path, host_ports):
    a, b, before = host_ports
    done = _inner(tmp_path, (a, b), "-k", "test_send")
    assert done.returncode == 0, done.stdout[-3000:]
    assert {p: _changes(before[p], p) for p in (a, b)} == {a: {}, b: {}}

    proc = _inner(tmp_path, (a, b), "-k", "test_hang", popen=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "hanging").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (Path("/sys/class/net") / a).exists()  # still in the dead session's namespace

    nxt = _inner(tmp_path, (a, b), "-k", "test_send")  # the next session reaps and restores first
    assert nxt.returncode == 0, nxt.stdout[-3000:]
    assert "restored leftovers of dead sessions" in nxt.stdout and f"NIC port {a}" in nxt.stdout, nxt.stdout[-3000:]
    assert {p: _changes(before[p], p) for p in (a, b)} == {a: {}, b: {}}


@pytest.mark.topology(link="e1000e")
def test_a_port_the_host_uses_is_refused(tmp_path, host_ports):
    a, b, before = host_ports
    _ip("route", "add", "default", "via", "10.251.0.2", "dev", a)
    try:
        done = _inner(tmp_path, (a, b), "-k", "test_send")
    finally:
        _ip("route", "del", "default", "via", "10.251.0.2", "dev", a)
    assert done.returncode == 1
    assert f"{a} carries this host's route 'default via 10.251.0.2' (table main, proto boot)" in done.stdout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("10.251.0.1", 5353))
        done = _inner(tmp_path, (a, b), "-k", "test_send")
    assert done.returncode == 1
    assert "10.251.0.1, which a socket of this host is bound to" in done.stdout
    assert {p: _changes(before[p], p) for p in (a, b)} == {a: {}, b: {}}


# Each use as a command run on the guest, its undo, and what the refusal names ({a}: the port).
USES = [
    (
        ["ip route add 10.9.0.0/16 via 10.251.0.2 dev {a} table 100"],
        ["ip route flush table 100"],
        "{a} carries this host's route '10.9.0.0/16 via 10.251.0.2' (table 100, proto boot)",
    ),
    (
        ["ip -6 route add 2001:db8:9::/64 dev {a} proto static"],
        ["ip -6 route del 2001:db8:9::/64 dev {a}"],
        "{a} carries this host's route '2001:db8:9::/64' (table main, proto static)",
    ),
    (
        ["ip rule add iif {a} table 100"],
        ["ip rule del iif {a} table 100"],
        "{a} is named by this host's routing rule 'iif {a} lookup 100'",
    ),
    (
        ["ip link add link {a} name vl9 type vlan id 9"],
        ["ip link del vl9"],
        "{a} is the lower device of this host's vlan device vl9 (its link)",
    ),
    (
        ["ip link add gre9 type gre local 10.251.0.1 remote 10.251.0.9"],
        ["ip link del gre9"],
        "{a} is the underlay of this host's gre device gre9 (its local address 10.251.0.1)",
    ),
    (
        ["ip link add gnv9 type geneve id 9 remote 10.251.0.9"],
        ["ip link del gnv9"],
        "{a} is the underlay of this host's geneve device gnv9 (its remote 10.251.0.9 is reached through {a})",
    ),
    (
        ["ip link add bond9 type bond", "ip link set {a} down", "ip link set {a} master bond9"],
        ["ip link del bond9"],
        "{a} is part of bond9",
    ),
    (["tc qdisc replace dev {a} root handle 1: prio"], [], "{a} has the qdisc prio 1: with classes"),
    (
        ["tc qdisc add dev {a} ingress"],
        ["tc qdisc del dev {a} ingress"],
        "{a} has the qdisc ingress ffff: on ingress or egress",
    ),
    (
        [
            "tc qdisc replace dev {a} root handle 9: fq_codel",
            "tc filter add dev {a} parent 9: protocol all matchall action pass",
        ],
        [],
        "{a} has filters on its root qdisc fq_codel 9:",
    ),
    # the kernel's own fq_codel (handle 0:, which tc cannot change) is borrowed; so is one tc made with
    # the defaults for the port's MTU; one made with other parameters is refused
    (
        [
            "sysctl -qw net.core.default_qdisc=fq_codel",
            "tc qdisc replace dev {a} root pfifo",
            "tc qdisc del dev {a} root",
        ],
        [],
        None,
    ),
    (["tc qdisc replace dev {a} root handle 9: fq_codel"], [], None),
    (
        ["tc qdisc replace dev {a} root handle 9: fq_codel limit 100"],
        [],
        "{a} has the root qdisc fq_codel 9: with non-default parameters (limit 100)",
    ),
]
USE_IDS = [
    "route-table-100",
    "route-v6-static",
    "rule-iif",
    "vlan",
    "gre-local",
    "geneve-remote",
    "bond",
    "prio-classes",
    "ingress",
    "filter",
    "kernel-fq_codel",
    "tc-fq_codel-defaults",
    "tc-fq_codel-limit",
]


@pytest.mark.topology(link="e1000e")
@pytest.mark.parametrize(("setup", "undo", "said"), USES, ids=USE_IDS)
def test_each_use_of_a_port_by_the_host_is_refused_in_one_sentence(host_ports, setup, undo, said):
    a, _b, _before = host_ports
    default_qdisc = Path("/proc/sys/net/core/default_qdisc").read_text().strip()
    try:
        for command in setup:
            subprocess.run(command.format(a=a).split(), check=True)
        if said is None:
            nicport.refuse_if_used(nicport.capture(a))  # borrowed: no use, and its qdisc comes back as it is
            return
        with pytest.raises(ConfigError) as caught:
            nicport.refuse_if_used(nicport.capture(a))
        sentence = str(caught.value)
        assert said.format(a=a) in sentence and "\n" not in sentence, sentence
    finally:
        for command in undo:
            subprocess.run(command.format(a=a).split(), check=False)
        Path("/proc/sys/net/core/default_qdisc").write_text(default_qdisc)


@pytest.mark.topology(link="e1000e")
def test_a_packet_socket_on_a_port_is_refused_naming_its_process(host_ports):
    """What a DHCP client or keepalived (VRRP) holds on the port."""
    a, _b, _before = host_ports
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
        s.bind((a, 0))
        with pytest.raises(ConfigError) as caught:
            nicport.refuse_if_used(nicport.capture(a))
    assert f"{a} has a packet socket of pid {os.getpid()} (" in str(caught.value), caught.value
    nicport.refuse_if_used(nicport.capture(a))  # closed: the port is free again

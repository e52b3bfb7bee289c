"""Issue 24, item 11: a port the host uses is refused, and what a borrowed port carries comes back.

Host-level: a veth pair in a test-made namespace stands in for the port.  A veth is refused
anyway (a virtual device dies with a killed session's namespace), and that refusal comes
last: so a port the host uses is refused for that use, and a port it does not use is refused
only as virtual.  What needs a physical port (or a module this host lacks: GRE, geneve,
bonds, classifiers) is proved in the kernel lane (tests/test_nic.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import nicport
from pytest_udpsend.host.netns import Namespace

VIRTUAL = "p0 is a virtual device"


def ip(ns: Namespace, *args: str) -> None:
    subprocess.run(["ip", "-n", ns.name, *args], check=True, capture_output=True, text=True)


def tc(ns: Namespace, *args: str) -> None:
    subprocess.run(["tc", "-n", ns.name, *args], check=True, capture_output=True, text=True)


@pytest.fixture
def port(netns):
    """p0 (the port) and p1 in a namespace of their own, p0 with the addresses a spare port may have."""
    ns = netns("nic11")
    ip(ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    for dev in ("p0", "p1"):
        ip(ns, "link", "set", dev, "up")
    ip(ns, "addr", "add", "10.77.0.1/24", "dev", "p0")
    ip(ns, "addr", "add", "10.76.0.1/24", "dev", "p0", "noprefixroute")
    ip(ns, "addr", "add", "10.75.0.1/24", "dev", "p0", "metric", "77")
    ip(ns, "addr", "add", "fd77::1/64", "dev", "p0", "nodad")
    ip(ns, "addr", "add", "10.74.0.1/24", "dev", "p1")
    return ns


def refusal(ns: Namespace, before=None) -> str:
    """The sentence nicport refuses p0 with, checked inside ``ns`` (``before`` runs there first)."""

    def body() -> str:
        keep = before() if before else None  # e.g. a socket that must stay open during the check
        try:
            with pytest.raises(ConfigError) as caught:
                nicport.refuse_if_used(nicport.capture("p0"))
            return str(caught.value)
        finally:
            if keep is not None:
                keep.close()

    sentence = ns.run_with_sysfs(body)
    assert "\n" not in sentence and sentence.count(". ") == 0, sentence
    return sentence


def test_a_port_the_host_does_not_use_is_refused_only_as_virtual(port):
    """Addresses (noprefixroute, a metric), their own routes and a route through another device are no use."""
    ip(port, "route", "add", "10.73.0.0/16", "via", "10.74.0.2", "dev", "p1", "table", "100")
    ip(port, "rule", "add", "oif", "p1", "table", "100")
    tc(port, "qdisc", "replace", "dev", "p0", "root", "pfifo")  # tc-made, default parameters
    assert VIRTUAL in refusal(port)


def test_an_mq_root_with_the_kernels_per_queue_qdiscs_is_no_use(netns):
    ns = netns("nic11mq")
    ip(ns, "link", "add", "p0", "numtxqueues", "2", "type", "veth", "peer", "name", "p1")
    ip(ns, "link", "set", "p0", "up")
    tc(ns, "qdisc", "replace", "dev", "p0", "root", "handle", "5:", "mq")  # its children: handle 0:, parent 5:1, 5:2
    assert VIRTUAL in refusal(ns)
    tc(ns, "qdisc", "replace", "dev", "p0", "parent", "5:1", "handle", "7:", "pfifo", "limit", "5")
    sentence = refusal(ns)
    assert "p0 has the qdisc pfifo 7: under 5:1, which a move into a test namespace deletes" in sentence, sentence


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        (
            ["route", "add", "default", "via", "10.77.0.2", "dev", "p0"],
            "p0 carries this host's route 'default via 10.77.0.2' (table main, proto boot)",
        ),
        (
            ["route", "add", "10.78.0.0/16", "via", "10.77.0.2", "dev", "p0", "proto", "static"],
            "p0 carries this host's route '10.78.0.0/16 via 10.77.0.2' (table main, proto static)",
        ),
        (
            ["route", "add", "10.78.0.0/16", "via", "10.77.0.2", "dev", "p0", "table", "100"],
            "p0 carries this host's route '10.78.0.0/16 via 10.77.0.2' (table 100, proto boot)",
        ),
        (
            ["route", "add", "default", "via", "10.77.0.2", "dev", "p0", "table", "4000000"],
            "p0 carries this host's route 'default via 10.77.0.2' (table 4000000, proto boot)",
        ),
        (
            ["-6", "route", "add", "2001:db8:5::/64", "dev", "p0", "table", "200"],
            "p0 carries this host's route '2001:db8:5::/64' (table 200, proto boot)",
        ),
        (
            ["route", "add", "10.78.0.0/16", "dev", "p0", "metric", "5", "table", "local"],
            "p0 carries this host's route '10.78.0.0/16' (table local, proto boot)",
        ),
        (["rule", "add", "oif", "p0", "table", "100"], "p0 is named by this host's routing rule 'oif p0 lookup 100'"),
        (
            ["-6", "rule", "add", "iif", "p0", "table", "main"],
            "p0 is named by this host's routing rule 'iif p0 lookup main'",
        ),
        (
            ["link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789", "dev", "p0"],
            "p0 is the underlay of this host's vxlan device vx0 (its link)",
        ),
        (
            [
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "5",
                "dstport",
                "4789",
                "local",
                "10.77.0.1",
                "remote",
                "10.99.0.9",
            ],
            "p0 is the underlay of this host's vxlan device vx0 (its local address 10.77.0.1)",
        ),
        (
            ["link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789", "remote", "10.77.0.9"],
            "p0 is the underlay of this host's vxlan device vx0 (its remote 10.77.0.9 is reached through p0)",
        ),
        (
            ["-6", "link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789", "remote", "fd77::9"],
            "p0 is the underlay of this host's vxlan device vx0 (its remote fd77::9 is reached through p0)",
        ),
        (
            ["link", "add", "mv0", "link", "p0", "type", "macvlan"],
            "p0 is the lower device of this host's macvlan device mv0 (its link)",
        ),
        (
            ["addr", "add", "10.79.0.1/24", "dev", "p0", "valid_lft", "300", "preferred_lft", "300"],
            "p0 has the dynamic address 10.79.0.1/24 (a lease that expires: the host's DHCP or SLAAC renews it)",
        ),
    ],
)
def test_a_route_rule_tunnel_upper_or_lease_through_the_port_is_refused(port, setup, said):
    ip(port, *setup)
    sentence = refusal(port)
    assert said in sentence and "name two ports the host does not use" in sentence, sentence


def test_a_bridge_the_port_is_in_is_refused(port):
    ip(port, "link", "add", "br9", "type", "bridge")
    ip(port, "link", "set", "p0", "master", "br9")
    assert "p0 is part of br9" in refusal(port)


def test_a_packet_socket_on_the_port_is_refused_naming_its_process(port):
    """A DHCP client or keepalived (VRRP) holds one; one bound to every device (ifindex 0) or to p1 is no use of p0."""

    def bound(dev: str):
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            if dev:
                s.bind((dev, 0))
            return s

        return make

    sentence = refusal(port, bound("p0"))
    assert f"p0 has a packet socket of pid {os.getpid()} (" in sentence, sentence
    assert "a DHCP client, keepalived/VRRP or a capture" in sentence, sentence
    assert VIRTUAL in refusal(port, bound("p1"))
    assert VIRTUAL in refusal(port, bound(""))


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        ([["qdisc", "replace", "dev", "p0", "root", "pfifo", "limit", "33"]], "with non-default parameters (limit 33)"),
        (
            [
                ["qdisc", "replace", "dev", "p0", "root", "handle", "1:", "htb"],
                ["class", "add", "dev", "p0", "parent", "1:", "classid", "1:1", "htb", "rate", "1mbit"],
            ],
            "p0 has the qdisc htb 1: with classes",
        ),
        ([["qdisc", "add", "dev", "p0", "clsact"]], "p0 has the qdisc clsact ffff: on ingress or egress"),
    ],
)
def test_a_qdisc_tree_that_cannot_come_back_exactly_is_refused_up_front(port, setup, said):
    for args in setup:
        tc(port, *args)
    sentence = refusal(port)
    assert said in sentence and "which a move into a test namespace deletes" in sentence, sentence
    assert sentence.startswith("--udpsend-nic-pair: p0 has the "), sentence
    assert "'tc qdisc del dev p0 root'" in sentence or "'tc qdisc del dev p0 clsact'" in sentence, sentence


def _routes_and_addresses(ns: Namespace) -> dict[str, object]:
    """p0 as ip(8) shows it, independent of nicport."""

    def show(*args: str) -> list:
        out = subprocess.run(["ip", "-n", ns.name, "-j", *args], check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    return {
        "routes": sorted(
            json.dumps(r, sort_keys=True)
            for fam in ("-4", "-6")
            for r in show(fam, "route", "show", "table", "all", "dev", "p0")
        ),
        "addrs": sorted(
            json.dumps({k: a.get(k) for k in ("local", "prefixlen", "noprefixroute", "metric", "dynamic")})
            for a in show("addr", "show", "dev", "p0")[0]["addr_info"]
            if a.get("scope") != "link"
        ),
    }


def test_the_routes_through_a_port_are_journaled_and_come_back_exactly(port, monkeypatch):
    """A move drops the port's addresses and so their routes: give-back brings both back as they were
    (a noprefixroute address adds no route, a metric stays), from the journal's JSON."""
    before = _routes_and_addresses(port)

    def journal() -> str:
        return nicport.capture("p0").to_json()

    text = port.run_with_sysfs(journal)
    state = nicport.PortState.from_json(text)
    assert ["10.75.0.0", 24, socket.AF_INET, 254, 77] in [
        [r["dst"], r["dst_len"], r["family"], r["table"], r["priority"]] for r in json.loads(text)["routes"]
    ], text
    ip(port, "addr", "flush", "dev", "p0", "scope", "global")  # what the move into a test namespace and back does
    assert _routes_and_addresses(port) != before
    monkeypatch.setattr(nicport, "find_by_mac", lambda mac, wait_s=0.0: "p0")  # a veth has no device to find
    port.run_with_sysfs(lambda: nicport.restore(state, wait_s=0))
    assert _routes_and_addresses(port) == before
    assert port.run_with_sysfs(lambda: nicport.differences(state, nicport.capture("p0"))) == []


def test_a_journal_written_before_routes_were_kept_still_reads():
    """An older session's journal: 3-field addresses, no routes (give-back then leaves the routes to the addresses)."""
    old = {
        "name": "p0",
        "mac": "02:00:00:00:00:01",
        "mtu": 1500,
        "up": True,
        "addresses": [["10.77.0.1", 24, 2]],
        "qdisc": "",
        "rps": {},
        "irqs": {},
        "conf": {},
        "device": "",
    }
    state = nicport.PortState.from_json(json.dumps(old))
    assert state.addresses == [("10.77.0.1", 24, 2, 0, 0)] and state.routes is None

"""Real namespaces: what the netns, veth and topology fixtures build."""

from __future__ import annotations

import socket
import subprocess

import pytest

from pytest_udpsend.host.topology import read_receiver_sysfs

from .conftest import netns_names


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def test_netns_factory_makes_listed_namespaces(netns):
    a, b = netns("alpha"), netns("beta")
    names = netns_names()
    assert a.name in names and b.name in names and a.name != b.name
    assert "alpha" in a.name and a.name.startswith("udps-")
    assert "LOOPBACK,UP" in ip("-n", a.name, "link", "show", "lo")


def roundtrip(veth, family: int, dst: str, payload: bytes) -> tuple[bytes, str]:
    """Send one datagram from the sender namespace to ``dst`` in the receiver's; return what arrived."""
    rx = veth.receiver.run(lambda: socket.socket(family, socket.SOCK_DGRAM))
    tx = veth.sender.run(lambda: socket.socket(family, socket.SOCK_DGRAM))
    with rx, tx:
        rx.bind((dst, 9000))
        rx.settimeout(2)
        tx.sendto(payload, (dst, 9000))
        data, peer = rx.recvfrom(100)
    return data, peer[0]


def test_veth_pair_is_addressed_and_carries_udp(veth):
    assert veth.sender.addr in ip("-n", veth.sender.name, "-4", "addr", "show", veth.sender.ifname)
    assert veth.receiver.addr in ip("-n", veth.receiver.name, "-4", "addr", "show", veth.receiver.ifname)
    assert roundtrip(veth, socket.AF_INET, veth.receiver.addr, b"ping") == (b"ping", veth.sender.addr)


@pytest.mark.topology(ipv6=True, mtu=9000)
def test_ipv6_and_mtu(veth):
    assert veth.sender.addr6 and veth.receiver.addr6
    link = ip("-n", veth.receiver.name, "link", "show", veth.receiver.ifname)
    assert "mtu 9000" in link
    assert roundtrip(veth, socket.AF_INET6, veth.receiver.addr6, b"ping6") == (b"ping6", veth.sender.addr6)


def test_no_ipv6_unless_asked(veth):
    assert veth.sender.addr6 is None
    assert "inet6" not in ip("-n", veth.sender.name, "addr", "show", veth.sender.ifname)


@pytest.mark.topology(rps_cpus=[1], gro=True, threaded_napi=True)
def test_receiver_shaping(veth):
    assert read_receiver_sysfs(veth, "queues/rx-0/rps_cpus").strip("0,") == "2"
    assert read_receiver_sysfs(veth, "threaded") == "1"


@pytest.mark.topology(qdisc="tbf rate 200mbit burst 32kb latency 50ms")
def test_tbf_qdisc(veth):
    out = subprocess.run(
        ["tc", "-n", veth.sender.name, "qdisc", "show", "dev", veth.sender.ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tbf" in out and "rate 200Mbit" in out


@pytest.mark.topology(qdisc="htb rate 50mbit")
def test_htb_qdisc(veth):
    out = subprocess.run(
        ["tc", "-n", veth.sender.name, "class", "show", "dev", veth.sender.ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "htb 1:10" in out and "rate 50Mbit" in out


def test_namespaces_gone_after_test(pytester, host_unchanged):
    pytester.makepyfile(
        """
        def test_a(veth, netns):
            netns("extra")
            assert 0, "fails on purpose"
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)

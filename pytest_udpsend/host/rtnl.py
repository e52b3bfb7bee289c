"""A minimal, batched rtnetlink client on pyroute2's message classes.

pyroute2 encodes the messages (ifinfmsg, ifaddrmsg, tcmsg); this module sends a
whole batch in one ``send()`` and reads the acks, skipping pyroute2's asyncio
machinery, which costs more than the kernel work for a two-namespace topology.
One ``Rtnl`` is bound to the namespace its socket was created in.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from typing import Any

from pyroute2.netlink import NETLINK_ROUTE, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_SETLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

NLMSG_ERROR = 2
IFF_UP = 1
NUD_PERMANENT = 0x80
_NLMSGHDR = struct.Struct("=IHHII")
_seq = itertools.count(1)


class Rtnl:
    """An rtnetlink socket in the namespace that was current when it was made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        self.sock.bind((0, 0))

    def close(self) -> None:
        self.sock.close()

    def call(self, *msgs: Any) -> None:
        """Send ``msgs`` as one batch, each with NLM_F_ACK; raise OSError on the first nack."""
        buf = bytearray()
        for msg in msgs:
            msg["header"]["sequence_number"] = next(_seq)
            msg["header"]["flags"] = msg["header"].get("flags", 0) | NLM_F_REQUEST | NLM_F_ACK
            msg.encode()
            buf += msg.data
        self.sock.send(buf)
        pending = len(msgs)
        while pending:
            data = self.sock.recv(65536)
            off = 0
            while off < len(data):
                length, mtype, _flags, _seq_no, _pid = _NLMSGHDR.unpack_from(data, off)
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
                    pending -= 1
                    if err:
                        raise OSError(-err, os.strerror(-err))
                off += (length + 3) & ~3


def veth_msg(
    ifname: str,
    peer_ifname: str,
    peer_netns_fd: int,
    mtu: int,
    index: int,
    peer_index: int,
    mac: str | None = None,
    peer_mac: str | None = None,
) -> ifinfmsg:
    """RTM_NEWLINK for a veth pair, this end up, the peer created straight in another netns.

    The peer cannot be set up in the same message (veth_open() fails with ENOTCONN
    while its peer is not registered yet), so link_up() it afterwards.
    """
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_CREATE | NLM_F_EXCL
    msg["index"] = index
    msg["flags"] = IFF_UP
    msg["change"] = IFF_UP
    peer_attrs: list[tuple[str, Any]] = [
        ("IFLA_IFNAME", peer_ifname),
        ("IFLA_NET_NS_FD", peer_netns_fd),
        ("IFLA_MTU", mtu),
    ]
    if peer_mac:
        peer_attrs.append(("IFLA_ADDRESS", peer_mac))
    peer = {"index": peer_index, "attrs": peer_attrs}
    msg["attrs"] = [
        ("IFLA_IFNAME", ifname),
        ("IFLA_MTU", mtu),
        *([("IFLA_ADDRESS", mac)] if mac else []),
        (
            "IFLA_LINKINFO",
            {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]},
        ),
    ]
    return msg


def neigh_msg(index: int, address: str, mac: str, family: int) -> ndmsg:
    """RTM_NEWNEIGH: a permanent neighbour entry, so the first datagrams never wait for ARP / ND
    (an unresolved neighbour queues skbs that stay charged to the sender's socket)."""
    msg = ndmsg()
    msg["header"]["type"] = RTM_NEWNEIGH
    msg["header"]["flags"] = NLM_F_CREATE | NLM_F_EXCL
    msg["family"] = family
    msg["ifindex"] = index
    msg["state"] = NUD_PERMANENT
    msg["attrs"] = [("NDA_DST", address), ("NDA_LLADDR", mac)]
    return msg


def link_up_msg(index: int) -> ifinfmsg:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_SETLINK
    msg["index"] = index
    msg["flags"] = IFF_UP
    msg["change"] = IFF_UP
    return msg


def addr_msg(index: int, address: str, prefixlen: int, family: int) -> ifaddrmsg:
    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["header"]["flags"] = NLM_F_CREATE | NLM_F_EXCL
    msg["family"] = family
    msg["prefixlen"] = prefixlen
    msg["index"] = index
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    if family == socket.AF_INET6:
        msg["flags"] = 0x02  # IFA_F_NODAD: usable at once, no 1 s of duplicate detection
    return msg


def link_set_msg(
    index: int,
    *,
    up: bool | None = None,
    mtu: int | None = None,
    ifname: str | None = None,
    netns_fd: int | None = None,
) -> ifinfmsg:
    """RTM_SETLINK changing only what is given (up state, MTU, name, or the namespace it lives in)."""
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_SETLINK
    msg["index"] = index
    if up is not None:
        msg["flags"] = IFF_UP if up else 0
        msg["change"] = IFF_UP
    attrs: list[tuple[str, Any]] = []
    if mtu is not None:
        attrs.append(("IFLA_MTU", mtu))
    if ifname is not None:
        attrs.append(("IFLA_IFNAME", ifname))
    if netns_fd is not None:
        attrs.append(("IFLA_NET_NS_FD", netns_fd))
    msg["attrs"] = attrs
    return msg

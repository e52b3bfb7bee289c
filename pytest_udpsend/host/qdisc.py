"""tc-style qdisc descriptions: parsed at collection time, applied through pyroute2 netlink.

``"tbf rate 200mbit burst 32kb latency 50ms"`` reads as ``tc qdisc add dev X root
tbf rate 200mbit burst 32kb latency 50ms`` would.  ``htb`` is shorthand for a root
htb with one default class carrying the given rate.  Units follow tc(8).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_udpsend.errors import ConfigError

_RATE_UNITS = {
    "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9,
}  # fmt: skip
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "kbit": 128, "m": 1 << 20, "mb": 1 << 20, "mbit": 1 << 17, "g": 1 << 30, "gb": 1 << 30}
_TIME_UNITS = {"s": 1e6, "sec": 1e6, "ms": 1e3, "msec": 1e3, "us": 1, "usec": 1}
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)([a-z]*)$")


def _with_unit(text: str, units: Mapping[str, float], default: str, what: str) -> float:
    match = _NUMBER.match(text.lower())
    if not match or (match.group(2) or default) not in units:
        raise ValueError(f"{text!r} is not a {what} (units: {', '.join(units)})")
    return float(match.group(1)) * float(units[match.group(2) or default])


def rate_bytes(text: str) -> int:
    """tc rate -> bytes per second."""
    return int(_with_unit(text, _RATE_UNITS, "bit", "rate") / 8)


def size_bytes(text: str) -> int:
    return int(_with_unit(text, _SIZE_UNITS, "b", "size"))


def time_us(text: str) -> int:
    return int(_with_unit(text, _TIME_UNITS, "us", "time"))


def count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


# kind -> {tc keyword: (parser, pyroute2 keyword)}; required keywords per kind below.
_KINDS: dict[str, dict[str, tuple[Callable[[str], int], str]]] = {
    "tbf": {"rate": (rate_bytes, "rate"), "burst": (size_bytes, "burst"), "latency": (time_us, "latency"),
            "limit": (size_bytes, "limit"), "mtu": (size_bytes, "mtu")},
    "htb": {"rate": (rate_bytes, "rate"), "ceil": (rate_bytes, "ceil"), "burst": (size_bytes, "burst"),
            "cburst": (size_bytes, "cburst")},
    "pfifo": {"limit": (count, "limit")},
    "bfifo": {"limit": (size_bytes, "limit")},
    "pfifo_fast": {},
    "sfq": {"perturb": (count, "perturb"), "quantum": (size_bytes, "quantum"), "limit": (count, "limit")},
    "fq_codel": {"limit": (count, "fqc_limit"), "flows": (count, "fqc_flows"), "quantum": (size_bytes, "fqc_quantum"),
                 "target": (time_us, "fqc_target"), "interval": (time_us, "fqc_interval")},
}  # fmt: skip
_REQUIRED = {"tbf": ({"rate"}, {"burst"}, {"latency", "limit"}), "htb": ({"rate"},)}


@dataclass(frozen=True)
class QdiscSpec:
    """A parsed qdisc: ``kind`` and pyroute2 keyword arguments."""

    text: str
    kind: str
    params: dict[str, int] = field(default_factory=dict)


def parse(text: str) -> QdiscSpec:
    """Parse a tc-style description; ConfigError says what is wrong and what is accepted."""
    words = str(text).split()
    if not words or words[0] not in _KINDS:
        raise ConfigError(
            f"qdisc {text!r}: unknown or missing qdisc kind; supported: {', '.join(sorted(_KINDS))} "
            '(e.g. "tbf rate 200mbit burst 32kb latency 50ms")'
        )
    kind, rest = words[0], words[1:]
    table = _KINDS[kind]
    if len(rest) % 2:
        raise ConfigError(f"qdisc {text!r}: every {kind} keyword needs a value (keyword value ...)")
    params: dict[str, int] = {}
    seen: set[str] = set()
    for key, value in zip(rest[::2], rest[1::2]):
        if key not in table:
            accepted = ", ".join(table) or "no parameters"
            raise ConfigError(f"qdisc {text!r}: {kind} has no parameter {key!r}; accepted: {accepted}")
        parser, target = table[key]
        try:
            params[target] = parser(value)
        except ValueError as exc:
            raise ConfigError(f"qdisc {text!r}: {key}: {exc}") from None
        seen.add(key)
    for group in _REQUIRED.get(kind, ()):
        if not group & seen:
            raise ConfigError(f"qdisc {text!r}: {kind} needs {' or '.join(sorted(group))}")
    return QdiscSpec(str(text), kind, params)


def apply(spec: QdiscSpec, ipr: Any, index: int) -> None:
    """Install ``spec`` as the root qdisc of link ``index`` through pyroute2's IPRoute ``ipr``."""
    if spec.kind == "htb":
        ipr.tc("add", "htb", index, 0x10000, default=0x10)
        cls = dict(spec.params)
        cls.setdefault("burst", max(cls["rate"] // 100, 16384))
        ipr.tc("add-class", "htb", index, 0x10010, parent=0x10000, **cls)
    else:
        ipr.tc("add", spec.kind, index, 0x10000, **spec.params)


def open_iproute() -> Any:
    """pyroute2 IPRoute on a netlink socket of the calling thread's namespace."""
    from pyroute2 import IPRoute

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    return IPRoute(fileno=sock.detach())

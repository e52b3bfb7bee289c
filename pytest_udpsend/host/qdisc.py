"""tc-style qdisc descriptions: parsed at collection time, applied through pyroute2 netlink.

``"tbf rate 200mbit burst 32kb latency 50ms"`` reads as ``tc qdisc add dev X root
tbf rate 200mbit burst 32kb latency 50ms`` would.  ``htb`` is shorthand for a root
htb with one default class carrying the given rate.  Units follow tc(8).

``netem`` reads as tc-netem(8) does: ``delay TIME [JITTER [CORRELATION]]``,
``loss [random] PERCENT [CORRELATION]``, ``duplicate``/``reorder``/``corrupt PERCENT
[CORRELATION]``, ``gap N``, ``rate RATE``, ``limit PACKETS`` (e.g. ``"netem delay 10ms 2ms
loss 1%"``); a percent may omit its ``%``.  ``prio`` takes ``bands N`` and ``priomap`` with
16 bands; ``mq`` needs a multiqueue device.

A kind whose ``sch_*`` module this kernel lacks (neither built in nor loadable, as
/proc/modules, /lib/modules/RELEASE and the kernel config tell) is refused with one
sentence naming the module and the fix, before any netlink request is made.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import ConfigError, PrivilegeError

_RATE_UNITS = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}
_SIZE_UNITS = {
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kbit": 128,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mbit": 1 << 17,
    "g": 1 << 30,
    "gb": 1 << 30,
}
_TIME_UNITS = {"s": 1e6, "sec": 1e6, "secs": 1e6, "ms": 1e3, "msec": 1e3, "msecs": 1e3, "us": 1, "usec": 1, "usecs": 1}
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)([a-z]*)$")


# What the kernel's fields can hold, as pyroute2 fills them: rates, sizes and counts are u32 (tbf and
# netem have no 64-bit rate there), and netem's delay and jitter, tbf's burst time and htb's buffers
# are u32 counts of psched ticks, 64 ns each (PSCHED_SHIFT 6): at most 2**32 * 64 ns = 274.9 s.
_U32 = (1 << 32) - 1
MAX_TICKS_US = _U32 * 64 // 1000  # 274877906 us
# The slowest rate taken: at 8kbit a 1400-byte datagram needs 1.4 s to leave, and below it a test's
# run sends next to nothing (a "1bit" tbf is 0 bytes/s to the kernel and never sends at all).
MIN_RATE_BYTES = 1000


def _with_unit(text: str, units: Mapping[str, float], default: str, what: str) -> float:
    match = _NUMBER.match(text.lower())
    if not match or (match.group(2) or default) not in units:
        raise ValueError(f"{text!r} is not a {what} (units: {', '.join(units)})")
    return float(match.group(1)) * float(units[match.group(2) or default])


def _within(text: str, value: float, low: float, high: float, below: str, above: str) -> int:
    """``value`` as an int if from ``low`` to ``high``; else a ValueError: "'1bit' is below {below}"."""
    if not low <= value <= high:
        raise ValueError(f"{text!r} is {'below ' + below if value < low else 'above ' + above}")
    return int(value)


_SLOWEST = "8kbit (1000 bytes/s), the slowest rate accepted: slower, a datagram takes seconds to leave"
_U32_FIELD = "the most the kernel's 32-bit field holds"


def rate_bytes(text: str) -> int:
    """tc rate -> bytes per second, from 8kbit to 34gbit (tbf and netem hold a u32 of bytes/s)."""
    value = _with_unit(text, _RATE_UNITS, "bit", "rate") / 8
    return _within(text, value, MIN_RATE_BYTES, _U32, _SLOWEST, f"34gbit (2^32 - 1 bytes/s), {_U32_FIELD}")


def rate64_bytes(text: str) -> int:
    """An htb rate: as ``rate_bytes``, but htb takes 64 bits (TCA_HTB_RATE64) above 34gbit."""
    value = _with_unit(text, _RATE_UNITS, "bit", "rate") / 8
    return _within(text, value, MIN_RATE_BYTES, (1 << 64) - 1, _SLOWEST, "2^64 - 1 bytes/s, the most htb holds")


def size_bytes(text: str) -> int:
    return _within(
        text, _with_unit(text, _SIZE_UNITS, "b", "size"), 0, _U32, "0", f"4gb (2^32 - 1 bytes), {_U32_FIELD}"
    )


def time_us(text: str) -> int:
    """tc time -> microseconds, at most 274s (netem and tbf hold times as 32 bits of 64 ns ticks)."""
    value = _with_unit(text, _TIME_UNITS, "us", "time")
    return _within(
        text,
        value,
        0,
        MAX_TICKS_US,
        "0",
        "274s, the longest qdisc time accepted (netem and tbf hold times as 32 bits of the kernel's 64 ns ticks)",
    )


def count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return _within(text, int(text), 0, _U32, "0", f"{_U32}, {_U32_FIELD}")


def percent(text: str) -> float:
    """tc percent ("1%", "0.5" meaning 0.5 %) -> percent, 0 to 100."""
    match = re.match(r"^(\d+(?:\.\d+)?)%?$", text)
    if not match or float(match.group(1)) > 100:
        raise ValueError(f"{text!r} is not a percentage from 0 to 100 (e.g. 1% or 0.5%)")
    return float(match.group(1))


# netem: tc keyword -> (value parsers and pyroute2 keywords, first one required).
_NETEM: dict[str, tuple[tuple[Callable[[str], Any], str], ...]] = {
    "delay": ((time_us, "delay"), (time_us, "jitter"), (percent, "delay_corr")),
    "loss": ((percent, "loss"), (percent, "loss_corr")),
    "duplicate": ((percent, "duplicate"), (percent, "dup_corr")),
    "reorder": ((percent, "prob_reorder"), (percent, "corr_reorder")),
    "corrupt": ((percent, "prob_corrupt"), (percent, "corr_corrupt")),
    "gap": ((count, "gap"),),
    "rate": ((rate_bytes, "rate"),),
    "limit": ((count, "limit"),),
}
_PRIOMAP = (1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)  # tc's default: TOS to band
# kind -> {tc keyword: (parser, pyroute2 keyword)}; required keywords per kind below.
_KINDS: dict[str, dict[str, tuple[Callable[[str], int], str]]] = {
    "tbf": {
        "rate": (rate_bytes, "rate"),
        "burst": (size_bytes, "burst"),
        "latency": (time_us, "latency"),
        "limit": (size_bytes, "limit"),
        "mtu": (size_bytes, "mtu"),
    },
    "htb": {
        "rate": (rate64_bytes, "rate"),
        "ceil": (rate64_bytes, "ceil"),
        "burst": (size_bytes, "burst"),
        "cburst": (size_bytes, "cburst"),
    },
    "pfifo": {"limit": (count, "limit")},
    "bfifo": {"limit": (size_bytes, "limit")},
    "pfifo_fast": {},
    "sfq": {"perturb": (count, "perturb"), "quantum": (size_bytes, "quantum"), "limit": (count, "limit")},
    "fq_codel": {
        "limit": (count, "fqc_limit"),
        "flows": (count, "fqc_flows"),
        "quantum": (size_bytes, "fqc_quantum"),
        "target": (time_us, "fqc_target"),
        "interval": (time_us, "fqc_interval"),
    },
    "netem": {},  # its own grammar: _parse_netem
    "prio": {},  # its own grammar: _parse_prio
    "mq": {},
}
_REQUIRED = {"tbf": ({"rate"}, {"burst"}, {"latency", "limit"}), "htb": ({"rate"},)}


@dataclass(frozen=True)
class QdiscSpec:
    """A parsed qdisc: ``kind`` and pyroute2 keyword arguments."""

    text: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def parse(text: str) -> QdiscSpec:
    """Parse a tc-style description; ConfigError says what is wrong and what is accepted."""
    words = str(text).split()
    if not words or words[0] not in _KINDS:
        raise ConfigError(
            f"qdisc {text!r}: unknown or missing qdisc kind; supported: {', '.join(sorted(_KINDS))} "
            '(e.g. "tbf rate 200mbit burst 32kb latency 50ms")'
        )
    kind, rest = words[0], words[1:]
    if kind == "netem":
        return QdiscSpec(str(text), kind, _parse_netem(str(text), rest))
    if kind == "prio":
        return QdiscSpec(str(text), kind, _parse_prio(str(text), rest))
    table = _KINDS[kind]
    if len(rest) % 2:
        raise ConfigError(f"qdisc {text!r}: every {kind} keyword needs a value (keyword value ...)")
    params: dict[str, Any] = {}
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
    if problem := _derived_out_of_range(kind, params):
        raise ConfigError(f"qdisc {text!r}: {problem}")
    return QdiscSpec(str(text), kind, params)


def _derived_out_of_range(kind: str, params: Mapping[str, int]) -> str | None:
    """What the kernel gets computed from several values (tbf's limit and burst time, htb's buffers) must fit
    its u32 fields too, or the request fails at set-up (or wraps) instead of at collection."""
    times = [("burst", "rate")] if kind == "tbf" else [("burst", "rate"), ("cburst", "ceil")] if kind == "htb" else []
    for size, rate in times:
        if size in params and rate in params and params[size] / params[rate] * 1e6 > MAX_TICKS_US:
            return (
                f"{kind} {size} {params[size]} bytes at {rate} {params[rate]} bytes/s lasts "
                f"{params[size] / params[rate]:.3g}s, above 274s (32 bits of the kernel's 64 ns ticks): "
                f"lower {size} or raise {rate}"
            )
    if kind == "tbf" and "latency" in params and "limit" not in params:
        limit = params["rate"] * params["latency"] / 1e6 + params["burst"]
        if limit > _U32:
            return (
                f"tbf rate x latency + burst is {limit:.3g} bytes, above the 4gb (2^32 - 1 bytes) its queue "
                "limit holds: lower latency or give limit instead"
            )
    return None


def _parse_netem(text: str, words: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    i = 0
    while i < len(words):
        key = words[i]
        if key not in _NETEM:
            raise ConfigError(f"qdisc {text!r}: netem has no parameter {key!r}; accepted: {', '.join(_NETEM)}")
        i += 1
        if key == "loss" and i < len(words) and words[i] == "random":
            i += 1  # tc's default loss model; state and gemodel are not supported
        for n, (parser, target) in enumerate(_NETEM[key]):
            if i >= len(words) or (n and words[i] in _NETEM):
                if n == 0:
                    raise ConfigError(f"qdisc {text!r}: netem {key} needs a value")
                break
            try:
                params[target] = parser(words[i])
            except ValueError as exc:
                raise ConfigError(f"qdisc {text!r}: netem {key}: {exc}") from None
            i += 1
    for needs, needed, why in (
        ("prob_reorder", "delay", "reorder needs a delay (tc-netem(8))"),
        ("gap", "prob_reorder", "gap needs reorder"),
        ("delay_corr", "jitter", "a delay correlation needs a jitter"),
    ):
        if needs in params and not params.get(needed):
            raise ConfigError(f"qdisc {text!r}: netem {why}")
    if "jitter" in params and not params.get("delay"):
        raise ConfigError(f"qdisc {text!r}: netem jitter needs a delay larger than 0")
    return params


def _parse_prio(text: str, words: list[str]) -> dict[str, Any]:
    priomap: tuple[int, ...]
    bands, priomap = 3, tuple(_PRIOMAP)
    i = 0
    while i < len(words):
        try:
            if words[i] == "bands" and i + 1 < len(words):
                bands, i = count(words[i + 1]), i + 2
            elif words[i] == "priomap" and len(words) >= i + 17:
                priomap, i = tuple(count(w) for w in words[i + 1 : i + 17]), i + 17
            else:
                raise ValueError("accepted: bands N, priomap followed by 16 band numbers")
        except ValueError as exc:
            raise ConfigError(f"qdisc {text!r}: prio {words[i]!r}: {exc}") from None
    if not 2 <= bands <= 16 or max(priomap) >= bands:
        raise ConfigError(f"qdisc {text!r}: prio needs 2 to 16 bands and every priomap entry below bands")
    return {"bands": bands, "priomap": priomap}


# sch_* module of each kind; pfifo, bfifo, pfifo_fast and mq are part of the core.
_MODULES = {
    "tbf": "sch_tbf",
    "htb": "sch_htb",
    "sfq": "sch_sfq",
    "fq_codel": "sch_fq_codel",
    "netem": "sch_netem",
    "prio": "sch_prio",
}


def _kernel_config(root: Path, release: str) -> dict[str, str] | None:
    """CONFIG_* values of the running kernel from /proc/config.gz or /boot/config-RELEASE, if either exists."""
    try:
        text = gzip.decompress((root / "proc/config.gz").read_bytes()).decode()
    except OSError:
        try:
            text = (root / "boot" / f"config-{release}").read_text()
        except OSError:
            return None
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)


def _mentions(path: Path, module: str) -> bool | None:
    try:
        return re.search(rf"(^|/){module}\.ko", path.read_text(), re.M) is not None
    except OSError:
        return None


def missing_module(kind: str, release: str | None = None, root: Path = Path("/")) -> str | None:
    """Why this kernel cannot provide ``kind``'s sch_* module (one clause), or None if it can or it cannot be told."""
    module = _MODULES.get(kind)
    if module is None:
        return None
    release = release or os.uname().release
    if (root / "sys/module" / module).exists() or _mentions(root / "proc/modules", module):
        return None
    moddir = root / "lib/modules" / release
    if _mentions(moddir / "modules.builtin", module) or _mentions(moddir / "modules.dep", module):
        return None
    symbol = f"CONFIG_NET_SCH_{kind.upper()}"
    config = _kernel_config(root, release)
    value = "unknown" if config is None else config.get(symbol)
    if value == "y":
        return None
    if value == "m":
        return f"{module} is built as a module but not installed under {moddir}"
    if value is None:
        return f"{symbol} is not set"
    return f"no {module} in {moddir}" if (moddir / "modules.dep").exists() else None


def unavailable(spec: QdiscSpec, release: str | None = None, root: Path = Path("/")) -> str | None:
    """The sentence (cause and fix) when this kernel lacks ``spec``'s qdisc module, else None."""
    why = missing_module(spec.kind, release, root)
    return None if why is None else _no_module(spec, why, release)


def _no_module(spec: QdiscSpec, why: str, release: str | None = None) -> str:
    module = _MODULES.get(spec.kind, f"sch_{spec.kind}")
    return (
        f"qdisc '{spec.text}': kernel {release or os.uname().release} has no {module} ({why}): modprobe {module} "
        f"where it is a module, or run on a kernel built with CONFIG_NET_SCH_{spec.kind.upper()} "
        "(e.g. a Debian kernel through --udpsend-kernel)"
    )


def apply(spec: QdiscSpec, ipr: Any, index: int) -> None:
    """Install ``spec`` as the root qdisc of link ``index`` through pyroute2's IPRoute ``ipr``.

    PrivilegeError when the kernel lacks the kind's module, ConfigError for mq on a one-queue device."""
    if problem := unavailable(spec):
        raise PrivilegeError(problem)
    try:
        _apply(spec, ipr, index)
    except Exception as exc:  # pyroute2's NetlinkError carries the errno as .code
        code = getattr(exc, "code", getattr(exc, "errno", None))
        if code == errno.ENOENT:
            raise PrivilegeError(_no_module(spec, "the kernel does not know this qdisc kind")) from None
        if code == errno.EOPNOTSUPP and spec.kind == "mq":
            raise ConfigError(
                f"qdisc '{spec.text}': mq needs a device with several TX queues; this one has one"
            ) from None
        raise


def _apply(spec: QdiscSpec, ipr: Any, index: int) -> None:
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

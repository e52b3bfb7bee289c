"""Parameters of one send run (``udp_sender.run()`` and the ``udpsend`` marker)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure import replay
from pytest_udpsend.measure.shapes import SendMode


@dataclass(frozen=True)
class SendParams:
    duration: float = 2.0
    payload: int = 1400
    sndbuf: int | None = None
    force_sndbuf: bool = False
    rate: float | None = None
    cpu: int | tuple[int, ...] | None = None  # a list with threads > 1: thread i on cpu[i % len]
    ipv6: bool = False
    receiver_cpu: int | None = None  # beyond SPEC: pin the draining receiver (the busy application CPU)
    mode: SendMode = "send"  # send | sendto | sendmmsg | gso
    batch: int = 32  # sendmmsg: messages per call
    gso_size: int | None = None  # gso: UDP_SEGMENT, bytes per wire segment
    flows: int = 1  # sockets per sender thread, served round-robin
    threads: int = 1  # pinned sender threads, each with its own socket(s)
    replay: str | None = (
        None  # a pcap/pcapng (or "shape:telemetry" | "shape:media" | "shape:dns"): its UDP datagrams with their sizes and gaps, sent once
    )
    speed: float = 1.0  # replay: scales the capture's clock (2.0: twice as fast); 0: as fast as possible, gaps ignored
    loop: int = 1  # replay: passes through the capture
    replay_filter: str | None = (
        None  # replay: datagrams to keep, e.g. "dst=10.0.0.2 dport=53" (src, dst, host, sport, dport, port)
    )
    replay_mtu: int = 1500  # replay: the capture link's MTU: an unfragmented UDP record larger than it is a GSO/GRO super-packet, split

    def thread_cpus(self) -> list[int | None]:
        """The CPU each sender thread is pinned to (None: not pinned)."""
        if isinstance(self.cpu, tuple):
            return [self.cpu[i % len(self.cpu)] for i in range(self.threads)]
        return [self.cpu] * self.threads

    def segments_per_send(self) -> int:
        """Wire datagrams per successful send call (GSO: ceil(payload / gso_size))."""
        return -(-self.payload // self.gso_size) if self.mode == "gso" and self.gso_size else 1

    def largest_payload(self) -> int | None:
        """The largest UDP payload a datagram on the wire carries (a GSO segment's), None for a replay (its capture's)."""
        if self.replay is not None:
            return None
        return min(self.payload, self.gso_size) if self.mode == "gso" and self.gso_size else self.payload

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def accepted(low: float = 0.0, high: float = math.inf, integer: bool = False) -> str:
    """What ``number`` accepts, as the end of a sentence: "must be an integer from 1 to 64"."""
    kind = "an integer" if integer else "a number" if math.isfinite(high) else "a finite number"
    return f"must be {kind} " + (f"from {low:g} to {high:g}" if math.isfinite(high) else f"of {low:g} or more")


def number(
    key: str, value: Any, low: float = 0.0, high: float = math.inf, integer: bool = False, unit: str = ""
) -> float:
    """The one check of every number a user gives (marker arguments, options, ini values): an int or a
    float, never a bool (Python counts True as 1), finite, from ``low`` to ``high``.

    Returns ``value`` as given (an int stays an int); ConfigError names ``key``, the value and what is accepted.
    """
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{key}={value!r}: {accepted(low, high, integer)}" + (f" ({unit})" if unit else ""))
    return value


def make_params(**kwargs: Any) -> SendParams:
    """Validate keyword arguments into SendParams; unknown keys are named with the accepted ones."""
    accepted = list(SendParams.__dataclass_fields__)
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"unknown argument {key!r}; accepted: {', '.join(accepted)}")
    params = SendParams(**kwargs)
    number("duration", params.duration, 0.05, 3600)
    number("payload", params.payload, 16, 65000, integer=True)
    if params.sndbuf is not None:
        number("sndbuf", params.sndbuf, 1024, 1 << 30, integer=True)
    if params.rate is not None:
        number("rate", params.rate, 1, 50_000_000)
    params = _check_send_pattern(params)
    params = _check_replay(params)
    online = sorted(os.sched_getaffinity(0))
    for key in ("cpu", "receiver_cpu"):
        value = getattr(params, key)
        for cpu in value if isinstance(value, tuple) else (value,):
            if cpu is not None and (isinstance(cpu, bool) or cpu not in online):
                raise ConfigError(f"{key}={value!r}: not an available CPU (have {online})")
    for key in ("force_sndbuf", "ipv6"):
        if not isinstance(getattr(params, key), bool):
            raise ConfigError(f"{key}={getattr(params, key)!r}: must be True or False")
    if params.force_sndbuf and params.sndbuf is None:
        raise ConfigError("force_sndbuf=True needs sndbuf= (the size to force)")
    return params


MODES: tuple[SendMode, ...] = ("send", "sendto", "sendmmsg", "gso")
UDP_MAX_SEGMENTS = 64  # the kernel's limit per GSO send (64 before 6.10, 128 since): the portable one


def _check_send_pattern(params: SendParams) -> SendParams:
    """mode, batch, gso_size, flows, threads and a cpu list; returns params with cpu as a tuple."""
    if params.mode not in MODES:
        raise ConfigError(f"mode={params.mode!r}: accepted: {', '.join(repr(m) for m in MODES)}")
    number("batch", params.batch, 1, 1024, integer=True)
    if params.batch != 32 and params.mode != "sendmmsg":
        raise ConfigError(f"batch={params.batch!r} applies to mode='sendmmsg' only (mode is {params.mode!r})")
    if params.mode == "gso":
        if params.gso_size is None:
            raise ConfigError("mode='gso' needs gso_size= (bytes per wire segment, e.g. 1400)")
        number("gso_size", params.gso_size, 1, params.payload, integer=True)
        if params.segments_per_send() > UDP_MAX_SEGMENTS:
            raise ConfigError(
                f"payload={params.payload} / gso_size={params.gso_size} makes {params.segments_per_send()} "
                f"segments per send; the kernel takes at most {UDP_MAX_SEGMENTS}: raise gso_size"
            )
    elif params.gso_size is not None:
        raise ConfigError(f"gso_size={params.gso_size!r} applies to mode='gso' only (mode is {params.mode!r})")
    number("flows", params.flows, 1, 256, integer=True)
    number("threads", params.threads, 1, 64, integer=True)
    if isinstance(params.cpu, (list, tuple)):
        if params.threads == 1:
            raise ConfigError(f"cpu={params.cpu!r}: a list of CPUs needs threads > 1 (one CPU per sender thread)")
        if not params.cpu or any(isinstance(c, bool) or not isinstance(c, int) for c in params.cpu):
            raise ConfigError(f"cpu={params.cpu!r}: must be a CPU number or a non-empty list of CPU numbers")
        params = replace(params, cpu=tuple(params.cpu))
    return params


REPLAY_ONLY = {"speed": 1.0, "loop": 1, "replay_filter": None, "replay_mtu": 1500}
NOT_WITH_REPLAY = {"duration": 2.0, "payload": 1400, "rate": None, "flows": 1, "threads": 1}  # the capture sets them


def _check_replay(params: SendParams) -> SendParams:
    """replay= and its arguments; returns params with replay as a str (a Path is accepted)."""
    if params.replay is None:
        for key, default in REPLAY_ONLY.items():
            if getattr(params, key) != default:
                raise ConfigError(f"{key}={getattr(params, key)!r} applies to replay= only (the capture to replay)")
        return params
    if not isinstance(params.replay, (str, os.PathLike)) or not os.fspath(params.replay):
        raise ConfigError(
            f"replay={params.replay!r}: must be the path of a pcap or pcapng capture, or a built-in shape "
            f"({', '.join(replay.SHAPE_PREFIX + n for n in replay.SHAPES)})"
        )
    params = replace(params, replay=os.fspath(params.replay))
    for key, default in NOT_WITH_REPLAY.items():
        if getattr(params, key) != default:
            raise ConfigError(
                f"{key}={getattr(params, key)!r} does not apply with replay=: the capture sets the datagrams, "
                "their sizes and times (use speed= and loop=)"
            )
    if params.mode not in ("send", "sendto"):
        raise ConfigError(
            f"mode={params.mode!r} does not apply with replay=: a replay sends one datagram per call "
            "(mode='send' or 'sendto')"
        )
    number("speed", params.speed, 0, 1000)
    number("loop", params.loop, 1, 1_000_000, integer=True)
    number("replay_mtu", params.replay_mtu, 576, 65536, integer=True)
    replay.parse_filter(params.replay_filter)
    replay.check_source(str(params.replay))
    return params

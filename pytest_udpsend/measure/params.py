"""Parameters of one send run (``udp_sender.run()`` and the ``udpsend`` marker)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from pytest_udpsend.errors import ConfigError


@dataclass(frozen=True)
class SendParams:
    duration: float = 2.0
    payload: int = 1400
    sndbuf: int | None = None
    force_sndbuf: bool = False
    rate: float | None = None
    cpu: int | None = None
    ipv6: bool = False
    receiver_cpu: int | None = None  # beyond SPEC: pin the draining receiver (the busy application CPU)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(key: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}={value!r}: must be {kind} from {low:g} to {high:g}")


def make_params(**kwargs: Any) -> SendParams:
    """Validate keyword arguments into SendParams; unknown keys are named with the accepted ones."""
    accepted = list(SendParams.__dataclass_fields__)
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"unknown argument {key!r}; accepted: {', '.join(accepted)}")
    params = SendParams(**kwargs)
    _number("duration", params.duration, 0.05, 3600)
    _number("payload", params.payload, 16, 65000, integer=True)
    if params.sndbuf is not None:
        _number("sndbuf", params.sndbuf, 1024, 1 << 30, integer=True)
    if params.rate is not None:
        _number("rate", params.rate, 1, 50_000_000)
    online = sorted(os.sched_getaffinity(0))
    for key in ("cpu", "receiver_cpu"):
        value = getattr(params, key)
        if value is not None and (isinstance(value, bool) or value not in online):
            raise ConfigError(f"{key}={value!r}: not an available CPU (have {online})")
    for key in ("force_sndbuf", "ipv6"):
        if not isinstance(getattr(params, key), bool):
            raise ConfigError(f"{key}={getattr(params, key)!r}: must be True or False")
    if params.force_sndbuf and params.sndbuf is None:
        raise ConfigError("force_sndbuf=True needs sndbuf= (the size to force)")
    return params

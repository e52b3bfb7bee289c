"""Types of the C extension built from ``_engine.c`` (its method table: ``send_loop``, ``recv_loop``).

Every parameter may be passed by position or by name (PyArg_ParseTupleAndKeywords, no keyword-only
marker); the defaults are the C ones.  Buffers: ``stop`` is a writable byte the caller sets to stop the
loop, ``latencies`` a writable uint32 buffer; ``dst``, ``sizes`` (uint32), ``due`` (uint64) and
``burst_ends`` (uint32) are read.  Both return a fresh dict of counts (keys as ``_engine.c`` builds
them); the callers read it as ``dict[str, Any]``, so that is its type here.
"""

from collections.abc import Sequence
from typing import Any

from _typeshed import ReadableBuffer, WriteableBuffer

def send_loop(
    fd: int | Sequence[int],
    duration: float,
    payload: int,
    rate: float = 0.0,
    stamp: bool = False,
    bucket_ms: int = 10,
    outq_every: int = 64,
    stop: WriteableBuffer = ...,
    mode: int = 0,
    batch: int = 32,
    dst: ReadableBuffer = ...,
    gso_size: int = 0,
    sizes: ReadableBuffer = ...,
    due: ReadableBuffer = ...,
    loops: int = 1,
    period_ns: int = 0,
    burst_ends: ReadableBuffer = ...,
) -> dict[str, Any]:
    """Timed non-blocking send()/sendto()/sendmmsg()/GSO loop over one or more sockets.

    Keys: attempts, sent, eagain, enobufs, other_errors, last_errno, elapsed_s, outq_max, outq_sum,
    outq_samples, series [(attempts, eagain, outq_max) per bucket], bucket_ms, stopped, calls, stops,
    flows {attempts, sent, eagain, stops: [per fd]}, errnos {errno: count}, full_ns, full_cpu_ns,
    full_wait_ns, bursts [(attempts, sent, bytes, eagain, outq_max) per burst and loop], late_sum_ns,
    late_max_ns.  Raises ValueError on arguments the loop cannot run with.
    """

def recv_loop(
    fd: int,
    until_mono_ns: int,
    quiet_ms: int = 100,
    latencies: WriteableBuffer = ...,
    timestamps: bool = False,
    stop: WriteableBuffer = ...,
) -> dict[str, Any]:
    """recvmmsg() drain loop.

    Keys: received, bytes, samples (latencies kept), seen, lost_samples, max_ns, truncated, stopped.
    """

"""Types of the C extension built from ``_engine.c`` (its method table: ``send_loop``, ``recv_loop``).

Every parameter may be passed by position or by name (PyArg_ParseTupleAndKeywords, no keyword-only
marker); the defaults are the C ones.  Buffers: ``stop`` is a writable byte the caller sets to stop the
loop, ``latencies`` a writable uint32 buffer; ``dst``, ``sizes`` (uint32), ``due`` (uint64) and
``burst_ends`` (uint32) are read.  Both return a fresh dict of counts, keys as ``_engine.c``'s
``Py_BuildValue`` builds them: ``SendCounts`` and ``RecvCounts`` (types of this stub only: import them
under ``TYPE_CHECKING``).
"""

from collections.abc import Sequence
from typing import TypedDict

from _typeshed import ReadableBuffer, WriteableBuffer

class FlowCounts(TypedDict):
    """Per socket, in the order of the ``fd`` list."""

    attempts: list[int]
    sent: list[int]
    eagain: list[int]
    stops: list[int]

class SendCounts(TypedDict):
    attempts: int
    sent: int
    eagain: int
    enobufs: int
    other_errors: int
    last_errno: int
    elapsed_s: float
    outq_max: int
    outq_sum: int
    outq_samples: int
    series: list[tuple[int, int, int]]  # per bucket: attempts, eagain, outq_max
    bucket_ms: int
    stopped: bool
    calls: int
    stops: int
    flows: FlowCounts
    errnos: dict[int, int]
    full_ns: int
    full_cpu_ns: int
    full_wait_ns: int
    bursts: list[tuple[int, int, int, int, int]]  # per burst and loop: attempts, sent, bytes, eagain, outq_max
    late_sum_ns: int
    late_max_ns: int

class RecvCounts(TypedDict):
    received: int
    bytes: int
    samples: int  # latencies kept
    seen: int
    lost_samples: int
    max_ns: int
    truncated: int
    stopped: bool

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
) -> SendCounts:
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
) -> RecvCounts:
    """recvmmsg() drain loop.

    Keys: received, bytes, samples (latencies kept), seen, lost_samples, max_ns, truncated, stopped.
    """

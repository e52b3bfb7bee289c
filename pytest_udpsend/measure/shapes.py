"""The names and shapes of what a run measures: SendResult's structured fields, key for key.

TypedDicts, so a result stays the plain dict its JSON document is made of (``to_dict()`` and the
schema under ``results/schema/`` are unchanged); ``total=False`` where a field is empty when not
measured, or where its keys depend on the backend or the sender.  Built by: ``wfree`` the probes
(``probes.py``, ``bpfprobe.py``, ``tpprobe.py``; the unmeasured shape in ``wfree.py``), ``wmem``,
``series`` and ``flows`` the senders (``sender.py``, ``external.py``), ``busy_wait_detail``
``backpressure.py``, ``replay`` ``sender.replay_result`` from ``replay.py``'s schedule.
"""

from __future__ import annotations

from typing import Literal, TypedDict

SendMode = Literal["send", "sendto", "sendmmsg", "gso"]  # SendParams.mode; _engine.c's mode codes in sender.py
Backend = Literal["bpf", "tracepoint", "timestamp"]  # the sock_wfree probe (--udpsend-backend, once chosen)
# where a datagram's release ran, as the eBPF probes tell it (bpfprobe.py): the charging thread itself, another
# task's softirq, a ksoftirqd/N thread, a threaded-NAPI napi/... thread
ReleaseContext = Literal["inline", "softirq", "ksoftirqd", "napi_thread"]


class Histogram(TypedDict, total=False):
    """counts[i] is below edges_us[i] (the last: at or above the last edge); empty when nothing was timed."""

    edges_us: list[float]
    counts: list[int]


class Latency(TypedDict):
    """Nearest-rank figures of a sample of latencies (histogram.latency_stats); None with no sample."""

    count: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    max_us: float | None
    histogram: Histogram


class Stack(TypedDict):
    """One of the most frequent kernel stacks of a context's releases, innermost caller first."""

    context: ReleaseContext
    count: int  # the releases it stands for
    samples: int  # the releases whose stack was taken
    share: float  # of all releases
    frames: list[str]
    text: str


class ReleasedAt(TypedDict, total=False):
    """Where a datagram's release was counted: at its GRO entry, else its own sock_wfree (bpf) or, tracepoint,
    the event where it was seen (an event not attached on that path is absent)."""

    gro_entry: int
    sock_wfree: int  # bpf
    netif_receive_skb: int  # tracepoint, from here on
    consume_skb: int
    kfree_skb: int


class WfreeSamples(TypedDict):
    """timestamp: how the percentiles' sample of receive stamps was taken."""

    seen: int
    kept: int
    cap: int
    method: str


class Wfree(TypedDict, total=False):
    """``SendResult.wfree``: sock_wfree timing.  Empty without a probe; ``unavailable`` (count and latencies
    None) where the backend cannot time this path.  The eBPF backends' ``_stacks`` return the stack keys alone."""

    backend: Backend
    method: str
    reason: str  # why this backend
    unavailable: str
    count: int | None  # datagrams released (timestamp: stamped)
    calls: int  # eBPF: sock_wfree calls (under GRO one releases a whole aggregate)
    released_at: ReleasedAt
    charges: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    max_us: float | None
    coverage: float  # timestamp: of the datagrams sent
    lost_samples: int
    contexts: dict[ReleaseContext, int]
    histogram: Histogram
    histograms: dict[ReleaseContext, Histogram]
    context_p99_us: dict[ReleaseContext, float | None]
    samples: WfreeSamples
    stacks: list[Stack]  # eBPF, with stack sampling on
    stacks_lost: int
    stacks_sampled: int
    stack_every: int
    timed: int  # tracepoint: datagrams timed
    time_every: int
    missed_events: int | None
    interval: dict[str, str]  # tracepoint: from, to, includes, misses


class Wmem(TypedDict, total=False):
    """``SendResult.wmem``: the send buffer's occupancy (SIOCOUTQ / tx_queue) sampled during the run."""

    max_bytes: int
    mean_bytes: float
    samples: int


class Series(TypedDict, total=False):
    """``SendResult.series``: per-bucket counts over the run (a program: occupancy, and ``sent`` under a schedule)."""

    bucket_ms: int
    attempts: list[int]
    eagain: list[int]
    outq_max: list[int]
    sent: list[float]


class Flow(TypedDict):
    """One socket of the plugin's sender (``SendResult.flows``)."""

    thread: int
    cpu: int | None
    sport: int
    attempts: int
    sent: int
    eagain: int
    stops: int


class Process(TypedDict, total=False):
    """``SendResult.process``: the user's program (``sender_process``)."""

    argv: list[str]
    returncode: int | None
    exited: bool
    stdout: str
    stderr: str


class BusyWaitDetail(TypedDict, total=False):
    """``SendResult.busy_wait_detail``: what busy_wait was computed from (backpressure.py), or why not."""

    full_s: float
    cpu_s: float
    asleep_s: float
    method: str
    waiting_s: float  # the plugin's loop: its run delay while the buffer was full
    samples: int  # a program: sock_diag samples
    full_samples: int
    unavailable: str


class BurstShape(TypedDict):
    """One burst as the capture has it (replay.Schedule.burst_table)."""

    first: int
    datagrams: int
    bytes: int
    start_s: float
    span_s: float


class ScheduleSummary(TypedDict):
    """replay.Schedule.describe(): ``bursts`` is their number here, the per-burst table in Replay."""

    source: str
    datagrams: int
    bytes: int
    span_s: float
    bursts: int
    burst_rule: str
    notes: dict[str, int]


class ReplayBurst(TypedDict):
    """One burst in one loop of a replay: the capture's figures, then what the send loop counted."""

    loop: int
    burst: int
    start_s: float
    span_s: float
    datagrams: int
    bytes: int
    attempts: int
    sent: int
    sent_bytes: int
    eagain: int
    eagain_rate: float
    outq_max: int


class Replay(TypedDict, total=False):
    """``SendResult.replay``: the schedule, how well the loop kept it, and each burst's counts."""

    source: str
    datagrams: int
    bytes: int
    span_s: float
    bursts: list[ReplayBurst]
    burst_rule: str
    notes: dict[str, int]
    filter: str | None
    speed: float
    loop: int
    expected_s: float
    timing_error: float | None
    late_mean_us: float | None
    late_max_us: float | None
    worst_burst: int | None  # the index in bursts of the highest EAGAIN rate

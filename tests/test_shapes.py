"""SendResult's structured fields have declared shapes (measure/shapes.py): every producer builds
exactly those keys, the shapes agree with the JSON Schema, and the Literal names with those in use."""

from __future__ import annotations

import json
import typing
from typing import Any

from pytest_udpsend.measure import backpressure, bpfprobe, external, params, probes, replay, sender, shapes, tpprobe
from pytest_udpsend.measure.wfree import not_measured
from pytest_udpsend.results import store
from pytest_udpsend.results.upgrade_report import CONTEXTS as REPORTED_CONTEXTS

# the shapes inside a wfree result, by key (lists of stacks checked item by item)
WFREE_NESTED: dict[str, Any] = {
    "histogram": shapes.Histogram,
    "samples": shapes.WfreeSamples,
    "released_at": shapes.ReleasedAt,
}


def conforms(value: dict[str, Any], shape: Any) -> None:
    """``value`` has every required key of the TypedDict ``shape`` and no key it does not declare."""
    keys = set(value)
    assert shape.__required_keys__ <= keys, (shape.__name__, shape.__required_keys__ - keys)
    assert keys <= shape.__required_keys__ | shape.__optional_keys__, (
        shape.__name__,
        keys - set(shape.__annotations__),
    )
    if shape is shapes.Wfree:
        for key, inner in WFREE_NESTED.items():
            if key in value:
                conforms(value[key], inner)
        for histogram in value.get("histograms", {}).values():
            conforms(histogram, shapes.Histogram)
        for stack in value.get("stacks", []):
            conforms(stack, shapes.Stack)
    for burst in value.get("bursts", []) if shape is shapes.Replay else []:
        conforms(burst, shapes.ReplayBurst)


class _Table:
    """A bcc table as the probes' end() reads it: per-CPU values, settable keys."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def values(self) -> list[list[int]]:
        return self.rows

    def Key(self, key: int) -> int:  # noqa: N802 (bcc's name)
        return key

    def Leaf(self, *values: int) -> tuple[int, ...]:  # noqa: N802 (bcc's name)
        return values

    def __setitem__(self, key: object, value: object) -> None:
        pass


class _PerCpuStruct:
    """The tracepoint probe's one-slot per-CPU array of ``struct pcpu``, as bcc returns it: a struct per CPU."""

    def __init__(self, slots: int) -> None:
        self.cpus = [type("pcpu", (), {"stats": [i + cpu for i in range(slots)]})() for cpu in range(2)]

    def Key(self, key: int) -> int:  # noqa: N802 (bcc's name)
        return key

    def __getitem__(self, key: int) -> list[Any]:
        return self.cpus


def _fake_bpf(slots: int) -> dict[Any, _Table]:
    """Releases in three contexts, a few buckets each; names as bytes (tpprobe) and str (bpfprobe)."""
    n = len(bpfprobe.CONTEXTS)
    hist = [[0, 0] for _ in range(n * bpfprobe.NBUCKETS)]
    for index, count in ((5, 3), (40, 2), (bpfprobe.NBUCKETS + 50, 7), (3 * bpfprobe.NBUCKETS + 90, 1)):
        hist[index] = [count, 1]
    stats = [[v, 0] for v in (4, 9000, 7, 12000, 0, 0, 1, 30000)] + [[i, 2] for i in range(n * 2, slots)]
    tables = {"hist": _Table(hist), "stats": _Table(stats), "cfg": _Table([])}
    return {**tables, **{k.encode(): t for k, t in tables.items()}}


def test_every_wfree_producer_builds_the_wfree_shape() -> None:
    ts = probes.TimestampProbe("chosen")
    conforms(ts.end([1000, 5000, 1_200_000], 3, 7), shapes.Wfree)
    conforms(ts.end([], 0, 0), shapes.Wfree)
    conforms(not_measured("timestamp", "why"), shapes.Wfree)
    bpf = bpfprobe.BpfProbe("chosen", stack_every=0)
    bpf._bpf, bpf.attach = _fake_bpf(len(bpfprobe.CONTEXTS) * 2 + 4), "kprobe"
    bpf._set_attached = lambda on: None
    conforms(bpf.end([], 0, 5), shapes.Wfree)
    tp = tpprobe.TracepointProbe("chosen", stack_every=0)
    tp._bpf = _fake_bpf(0) | {b"pcpu": _PerCpuStruct(tpprobe.NSTATS)}
    tp._set_attached = lambda on: None
    conforms(tp.end([], 0, 5), shapes.Wfree)
    frames = {1: ["sock_wfree", "ip_rcv_core", "do_softirq"], 2: ["sock_wfree", "veth_xmit", "do_syscall_64"]}
    stacks = bpfprobe.top_stacks(
        {("softirq", 1): 30, ("inline", 2): 5}, lambda i: frames[i], {"softirq": 70, "inline": 20}
    )
    conforms(
        {"backend": "bpf", "stacks": stacks, "stacks_lost": 0, "stacks_sampled": 35, "stack_every": 8}, shapes.Wfree
    )
    sampled = {"backend": "timestamp", "count": 1}
    sender._note_sampling(sampled, {"seen": 10, "samples": 8, "max_ns": 12345}, 20)
    conforms(sampled, shapes.Wfree)


class _Sock:
    def __init__(self, port: int) -> None:
        self.port = port

    def getsockname(self) -> tuple[str, int]:
        return ("198.18.0.1", self.port)


def test_the_senders_build_the_series_flows_replay_and_busy_wait_shapes() -> None:
    conforms(external._series([(0.0, 10), (0.004, 20), (0.025, 5)]), shapes.Series)
    conforms(external._series([]), shapes.Series)
    conforms(backpressure.loop_busy_wait(10**9, 3 * 10**8, 10**8)[1], shapes.BusyWaitDetail)
    conforms(backpressure.detail(0, 0, 0, "m"), shapes.BusyWaitDetail)
    p = params.make_params(flows=2)
    counts = {"attempts": [1, 2], "sent": [1, 1], "eagain": [0, 1], "stops": [0, 0]}
    for flow in sender._flow_table(p, [[_Sock(1), _Sock(2)]], [{"flows": counts}]):
        conforms(flow, shapes.Flow)
    pairs = [(0, 100), (1000, 200), (50_000_000, 300), (50_001_000, 400)]
    schedule = replay.make_schedule(pairs, "cap.pcap", {})
    conforms(schedule.describe(), shapes.ScheduleSummary)
    for row in schedule.burst_table():
        conforms(row, shapes.BurstShape)

    class P:  # what replay_result reads of SendParams
        speed, loop, replay_filter = 1.0, 2, None

    rows = [(a, a, 100 * a, 0, 999) for a in range(1, 1 + 2 * len(schedule.burst_ends))]
    out = {"elapsed_s": 0.2, "bursts": rows, "attempts": 10, "late_sum_ns": 1, "late_max_ns": 1}
    conforms(sender.replay_result(schedule, P, out), shapes.Replay)


def test_the_shapes_name_only_keys_the_schema_describes() -> None:
    """A key a producer writes is in the JSON Schema's properties for that field (where it lists them)."""
    defs = json.loads(store.SCHEMA.read_text())["$defs"]
    sample = defs["sample"]["properties"]

    def props(node: dict[str, Any]) -> set[str]:
        node = defs[node["$ref"].split("/")[-1]] if "$ref" in node else node
        return set(node.get("properties", {}))

    undocumented = {
        "interval"
    }  # tracepoint's wfree["interval"]: accepted (no additionalProperties: false), not described
    for name, shape in (
        ("wfree", shapes.Wfree),
        ("series", shapes.Series),
        ("process", shapes.Process),
        ("busy_wait_detail", shapes.BusyWaitDetail),
        ("replay", shapes.Replay),
    ):
        assert set(shape.__annotations__) - undocumented <= props(sample[name]), name
    assert set(shapes.Flow.__annotations__) == set(sample["flows"]["items"]["properties"])
    assert set(shapes.ReplayBurst.__annotations__) == set(defs["replay"]["properties"]["bursts"]["items"]["properties"])
    assert set(shapes.Stack.__annotations__) == props(defs["stack"])
    assert set(shapes.Histogram.__annotations__) == props(defs["histogram"])
    assert set(shapes.WfreeSamples.__annotations__) == props(defs["wfree"]["properties"]["samples"])


def test_the_literals_are_the_names_in_use() -> None:
    assert typing.get_args(shapes.ReleaseContext) == bpfprobe.CONTEXTS == REPORTED_CONTEXTS
    assert typing.get_args(shapes.SendMode) == params.MODES == tuple(sender.MODE_CODES)
    backends = {bpfprobe.BpfProbe.backend, tpprobe.TracepointProbe.backend, probes.TimestampProbe.backend}
    assert backends == set(typing.get_args(shapes.Backend))
    assert {probes.choose("timestamp")[0]} <= backends

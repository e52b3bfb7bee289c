"""One send run: pinned C send loops in the sender namespace, a C drain in the receiver's.

Send patterns (``mode``): ``send`` on a connected socket, ``sendto`` on an
unconnected one, ``sendmmsg`` batches, ``gso`` super-datagrams (UDP_SEGMENT).
``flows`` sockets per thread are served round-robin by one C loop; ``threads``
C loops run at once, each pinned, each with its own sockets.  Totals are sums
over all sockets; ``SendResult.flows`` keeps each socket's counts.  How attempts
are counted per mode: see ``_engine.c`` (a sendmmsg batch that stops at message
k+1 counts k sent and one EAGAIN attempt, and one ``stops``).

Python builds the sockets (each inside its namespace, from a thread that entered
it), snapshots counters, starts the two loops in threads (both release the GIL),
and assembles a SendResult with the cross-checks.

Replay (``replay=``): ``measure/replay.py`` reads the capture into a schedule (sizes and send
times) before any socket exists; the C loop keeps it (one send call per datagram, paced on the
wall clock, a failed one counted and dropped) and counts per burst; ``SendResult.replay`` holds
the schedule's description, the timing and the bursts.

Stopping: both loops watch a shared stop byte.  Whatever interrupts the wait
(KeyboardInterrupt, an error in the other loop), the byte is set and both
threads are joined before the sockets close, so a loop never runs on a closed
(or reused) fd.  Memory: receive timestamps go into a fixed buffer of
``SAMPLE_CAP`` latencies (reservoir-sampled past that), whatever the duration.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host.sysctl import Sysctls, normalize
from pytest_udpsend.host.topology import Topology
from pytest_udpsend.measure import _engine, backpressure, counters, load, recovery, replay
from pytest_udpsend.measure.diagnosis import diagnose
from pytest_udpsend.measure.params import SendParams, make_params
from pytest_udpsend.measure.probes import WfreeProbe
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.measure.shapes import Flow, Replay, ReplayBurst, SendMode, Wfree

if TYPE_CHECKING:
    from pytest_udpsend.measure._engine import RecvCounts, SendCounts

T = TypeVar("T")

PORT = 40000
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD; Python 3.11's socket module lacks the constant
IP_RECVERR = 11
IPV6_RECVERR = 25
UDP_SEGMENT = 103  # Python 3.11's socket module lacks the constant
MODE_CODES: dict[SendMode, int] = {"send": 0, "sendto": 1, "sendmmsg": 2, "gso": 3}  # as in _engine.c
RCVBUF = 64 << 20
SAMPLE_CAP = 1 << 18  # timestamp samples kept per run (1 MiB); a uniform reservoir beyond that
REPORTED_KNOBS = (
    "net.core.netdev_budget",
    "net.core.netdev_budget_usecs",
    "net.core.netdev_max_backlog",
    "net.core.dev_weight",
    "net.core.wmem_default",
    "net.core.wmem_max",
    "net.core.netdev_tstamp_prequeue",
)


def knobs_in_force(extra: dict[str, str]) -> dict[str, str]:
    values = {}
    for name in REPORTED_KNOBS:
        path = Path("/proc/sys", *name.split("."))
        if path.exists():
            values[name] = normalize(path.read_text())
    values.update(extra)
    return values


def _receiver_socket(topo: Topology, ipv6: bool, timestamps: bool) -> socket.socket:
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    addr = topo.receiver.addr6 if ipv6 else topo.receiver.addr

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, (0).to_bytes(8, "little") + (20000).to_bytes(8, "little")
        )
        sock.bind((addr, PORT))
        return sock

    sock: socket.socket = topo.receiver.run(make)
    return sock


def _sender_socket(topo: Topology, p: SendParams) -> socket.socket:
    family = socket.AF_INET6 if p.ipv6 else socket.AF_INET
    addr = topo.receiver.addr6 if p.ipv6 else topo.receiver.addr
    connect = p.mode != "sendto"  # sendto: unconnected, the destination goes with every call

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if p.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE if p.force_sndbuf else socket.SO_SNDBUF, p.sndbuf)
        # IP_RECVERR makes a qdisc/device drop (NET_XMIT_DROP) come back as ENOBUFS; without it
        # udp_send_skb() swallows the error (send() succeeds, SndbufErrors counts it, OutDatagrams not),
        # and sent == OutDatagrams would no longer hold.  It costs nothing measurable, also for
        # unconnected sendto() (ci/bench_modes.py: 0.98-0.99 of a C sender without it).
        if p.ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if p.mode == "gso":
            sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, p.gso_size or 0)
        sock.setblocking(False)
        if connect:
            sock.connect((addr, PORT))
        else:
            sock.bind(("::" if p.ipv6 else "0.0.0.0", 0))  # a source port now, to report per flow
        return sock

    sock: socket.socket = topo.sender.run(make)
    return sock


def _sender_sockets(topo: Topology, p: SendParams) -> list[list[socket.socket]]:
    """``flows`` sockets for each of the ``threads`` senders; all closed if one cannot be made."""
    made: list[list[socket.socket]] = []
    try:
        for _ in range(p.threads):
            made.append([])
            for _ in range(p.flows):
                made[-1].append(_sender_socket(topo, p))
    except BaseException:
        for sock in (s for group in made for s in group):
            sock.close()
        raise
    return made


def _sockaddr(family: int, addr: str, port: int) -> bytes:
    """A packed struct sockaddr_in / sockaddr_in6 for the engine's sendto()."""
    head = struct.pack("=H", family) + port.to_bytes(2, "big")
    if family == socket.AF_INET6:
        return head + bytes(4) + socket.inet_pton(family, addr) + bytes(4)
    return head + socket.inet_pton(family, addr) + bytes(8)


def _check_gso(topo: Topology, p: SendParams) -> None:
    """UDP_SEGMENT refuses (EINVAL) a segment that, with its headers, exceeds the MTU."""
    headers = 48 if p.ipv6 else 28
    if p.mode == "gso" and p.gso_size and p.gso_size + headers > topo.spec.mtu:
        raise ConfigError(
            f"gso_size={p.gso_size} plus {headers} bytes of IP/UDP headers exceeds the link MTU "
            f"{topo.spec.mtu}: use gso_size <= {topo.spec.mtu - headers}"
        )


class _Thread(threading.Thread, Generic[T]):
    """A thread that keeps its target's return value or exception."""

    def __init__(self, name: str, target: Callable[[], T]) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self._value: list[T] = []  # the return value, once there is one
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value.append(self._fn())
        except BaseException as exc:
            self.error = exc

    def result(self) -> T:
        # In slices: a Ctrl-C the kernel hands to another thread (the C loops', xdist's) only sets a flag
        # that the main thread reads between waits; one join() for the whole run would sleep through it.
        while self.is_alive():
            self.join(0.1)
        if self.error:
            raise self.error
        return self._value[0]


RECOVERY_RATE_FROM = "attempts - EAGAIN per 10 ms bucket of the C send loop"
RELEASE_LEAD_NS = 2_000_000  # more than a toggle's lateness (0.1 to 0.3 ms here)


def _stamped(starts: list[int], fn: Callable[[], T], cycle: load.Cycle | None) -> Callable[[], T]:
    """``fn`` noting when it began (the C loop's series starts microseconds later); the first sender thread
    starts the pressure schedule there, so the schedule keeps time with the series, however late the thread ran."""

    def body() -> T:
        starts.append(time.monotonic_ns())
        if cycle is not None:  # releases land just before a bucket edge: a sender back at once reads ~2 ms, not ~10
            cycle.start(RELEASE_LEAD_NS)
        return fn()

    return body


def _pinned(cpu: int | None, fn: Callable[[], T]) -> Callable[[], T]:
    def body() -> T:
        # Ctrl-C and SIGTERM go to a thread that does not block them: let that be the waiting main thread
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # pid 0 = this thread only
        return fn()

    return body


def run(
    topo: Topology,
    p: SendParams,
    sysctls: Sysctls,
    probe: WfreeProbe | None,
    pressure: load.PressureSpec | None = None,
    capture: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
) -> SendResult:
    """Measure one run.  The caller holds the host lock."""
    if p.ipv6 and topo.receiver.addr6 is None:
        raise ConfigError("ipv6=True needs an IPv6 topology: add @pytest.mark.topology(ipv6=True)")
    _check_gso(topo, p)
    schedule = _schedule(p)
    if probe is not None:
        # the path decides what the probe can measure (probes.timestamp_premise) and attaches (tpprobe.attached_events)
        probe.prepare(sysctls, topo.spec, p.largest_payload())
    stamp = probe is not None and probe.receiver_timestamps
    rx = _receiver_socket(topo, p.ipv6, stamp)
    try:
        tx = _sender_sockets(topo, p)
    except BaseException:
        rx.close()
        raise
    snd_snmp, rcv_snmp = counters.SnmpReader(topo.sender.ns), counters.SnmpReader(topo.receiver.ns)
    latencies = memoryview(bytearray(4 * SAMPLE_CAP)).cast("I") if stamp else None
    try:
        with contextlib.ExitStack() as stack:
            cycle = None
            if pressure is not None:
                cycle = stack.enter_context(load.cycled(pressure, stack.enter_context(load.pressure(pressure))))
            if capture is not None:
                stack.enter_context(capture())
            result = _measure(topo, p, tx, rx, snd_snmp, rcv_snmp, probe, latencies, stamp, schedule, cycle)
    finally:
        for sock in (s for group in tx for s in group):
            sock.close()
        rx.close()
        snd_snmp.close()
        rcv_snmp.close()
    result.sysctls = knobs_in_force({k: v for k, v in sysctls.in_force.items() if ":" in k})
    result.pressure = pressure.describe() if pressure else ""
    result.diagnosis = diagnose(result)  # needs the sysctls and pressure above
    return result


def _measure(
    topo: Topology,
    p: SendParams,
    tx: list[list[socket.socket]],
    rx: socket.socket,
    snd_snmp: counters.SnmpReader,
    rcv_snmp: counters.SnmpReader,
    probe: WfreeProbe | None,
    latencies: memoryview | None,
    stamp: bool,
    schedule: replay.Schedule | None = None,
    cycle: load.Cycle | None = None,
) -> SendResult:
    all_irqs = [irq for irqs in topo.irqs.values() for irq in irqs]
    irq0 = counters.read_interrupts(all_irqs)
    soft0, snd0, rcv0 = counters.read_softnet(), snd_snmp.read(), rcv_snmp.read()
    if probe is not None:
        probe.begin(tx[0][0].fileno(), os.getpid())
    started = time.time()
    seconds = _replay_seconds(schedule, p) if schedule is not None else p.duration
    until = time.monotonic_ns() + int(seconds * 1e9)
    buf = latencies if latencies is not None else bytearray()
    stop = bytearray(1)
    dst = _destination(topo, p)
    receiver = _Thread(
        "udpsend-rx", _pinned(p.receiver_cpu, lambda: _engine.recv_loop(rx.fileno(), until, 100, buf, stamp, stop))
    )
    starts: list[int] = []  # CLOCK_MONOTONIC at each send loop's start: the series' time base for the schedule
    senders = [
        _Thread(
            f"udpsend-tx{i}",
            _pinned(
                cpu,
                _stamped(
                    starts,
                    _send_body(p, [s.fileno() for s in socks], stamp, stop, dst, schedule),
                    cycle if i == 0 else None,
                ),
            ),
        )
        for i, (cpu, socks) in enumerate(zip(p.thread_cpus(), tx))
    ]
    try:
        receiver.start()
        for thread in senders:
            thread.start()
        outs = [thread.result() for thread in senders]
        if cycle is not None:
            cycle.stop()  # no toggle after the series ended
        rx_out = receiver.result()
    except BaseException:
        stop_loops(stop, (*senders, receiver))
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.end([], 0, 0)  # disarm (and detach) the probe: nobody reads this run
        raise
    finished = time.time()
    soft1, snd1, rcv1 = counters.read_softnet(), snd_snmp.read(), rcv_snmp.read()
    irqs = counters.irq_delta(topo.irqs, irq0, counters.read_interrupts(all_irqs))
    snmp = counters.snmp_delta(snd0, snd1)
    rcv_snmp_delta = counters.snmp_delta(rcv0, rcv1)
    softnet = counters.softnet_delta(soft0, soft1)
    tx_out = _combine(outs)
    if topo.spec.tx_checksum:  # turned off on purpose, failed GSO sends are what the test looks at
        _refuse_gso_errors(p, tx_out)
    attempts, elapsed = tx_out["attempts"], tx_out["elapsed_s"]
    wfree: Wfree = {}
    if probe is not None:
        samples = latencies[: rx_out["samples"]] if latencies is not None else []
        wire = tx_out["sent"] * p.segments_per_send()  # the receiver sees (and stamps) GSO segments
        wfree = probe.end(samples, 0, wire)  # nothing is lost: past SAMPLE_CAP it samples
        wfree.setdefault("reason", probe.reason)
        if latencies is not None:
            _note_sampling(wfree, rx_out, wire)
    result = SendResult(
        attempts=attempts,
        sent=tx_out["sent"],
        eagain=tx_out["eagain"],
        enobufs=tx_out["enobufs"],
        eagain_rate=tx_out["eagain"] / attempts if attempts else 0.0,
        pps=tx_out["sent"] / elapsed if elapsed else 0.0,
        duration_s=round(elapsed, 4),
        payload=round(sum(schedule.sizes) / len(schedule.sizes)) if schedule is not None else p.payload,
        sndbuf_requested=p.sndbuf,
        sndbuf_effective=tx[0][0].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        time_squeeze=sum(c["time_squeeze"] for c in softnet.values()),
        softnet=softnet,
        irqs=irqs,
        snmp=snmp,
        wmem={
            "max_bytes": tx_out["outq_max"],
            "mean_bytes": round(tx_out["outq_sum"] / tx_out["outq_samples"], 1) if tx_out["outq_samples"] else 0.0,
            "samples": tx_out["outq_samples"],
        },
        wfree=wfree,
        received=rx_out["received"],
        rcvbuf_errors=rcv_snmp_delta.get("Udp6RcvbufErrors" if p.ipv6 else "UdpRcvbufErrors", 0),
        kernel=os.uname().release,
        other_errors=tx_out["other_errors"],
        calls=tx_out["calls"],
        stops=tx_out["stops"],
        segments=tx_out["sent"] * p.segments_per_send(),
        flows=_flow_table(p, tx, outs),
        series={
            "bucket_ms": tx_out["bucket_ms"],
            "attempts": [b[0] for b in tx_out["series"]],
            "eagain": [b[1] for b in tx_out["series"]],
            "outq_max": [b[2] for b in tx_out["series"]],
        },
        topology=topo.describe(),
        params=p.as_dict(),
        started=started,
        finished=finished,
        errno=backpressure.errno_names(tx_out["errnos"]),
        errno_method=backpressure.LOOP_ERRNO_METHOD,
    )
    result.busy_wait, result.busy_wait_detail = backpressure.loop_busy_wait(
        tx_out["full_ns"], tx_out["full_cpu_ns"], tx_out["full_wait_ns"]
    )
    result.checks = cross_checks(result, p.ipv6, gso_segmenter(topo))
    if cycle is not None:
        result.recovery = recovery.measure(cycle, result.series, min(starts), elapsed, RECOVERY_RATE_FROM)
    if schedule is not None:
        result.replay = replay_result(schedule, p, tx_out)
    return result


REPLAY_US_PER_DATAGRAM = 5e-6  # a generous send call: how long the receiver waits beyond the schedule's own time
IPV4_MAX_DATAGRAM, IPV6_MAX_DATAGRAM = 65507, 65527


def _schedule(p: SendParams) -> replay.Schedule | None:
    """replay=: the capture read (and refused in one sentence) before any socket exists."""
    if p.replay is None:
        return None
    schedule = replay.read(p.replay, p.replay_filter, p.replay_mtu)
    limit = IPV6_MAX_DATAGRAM if p.ipv6 else IPV4_MAX_DATAGRAM
    if max(schedule.sizes) > limit:
        raise ConfigError(
            f"replay={p.replay!r} has a datagram of {max(schedule.sizes)} bytes, more than an "
            f"{'IPv6' if p.ipv6 else 'IPv4'} socket sends ({limit}): pick its flows out with replay_filter="
        )
    return schedule


def _replay_seconds(schedule: replay.Schedule, p: SendParams) -> float:
    """The wall time a replay may take: its schedule's, plus a generous send call per datagram."""
    return schedule.expected_s(p.speed, p.loop) + len(schedule.sizes) * p.loop * REPLAY_US_PER_DATAGRAM + 0.2


def replay_result(schedule: replay.Schedule, p: SendParams, out: SendCounts) -> Replay:
    """SendResult.replay: the schedule, how well the loop kept it, and each burst's counts (per loop)."""
    expected = schedule.expected_s(p.speed, p.loop)
    elapsed = out["elapsed_s"]
    shape = schedule.burst_table()
    bursts: list[ReplayBurst] = []
    for row, (attempts, sent, sent_bytes, eagain, outq_max) in enumerate(out["bursts"]):
        loop, burst = divmod(row, len(shape))
        bursts.append(
            {
                "loop": loop,
                "burst": burst,
                "start_s": shape[burst]["start_s"],
                "span_s": shape[burst]["span_s"],
                "datagrams": shape[burst]["datagrams"],
                "bytes": shape[burst]["bytes"],
                "attempts": attempts,
                "sent": sent,
                "sent_bytes": sent_bytes,
                "eagain": eagain,
                "eagain_rate": round(eagain / attempts, 6) if attempts else 0.0,
                "outq_max": outq_max,
            }
        )
    paced = out["attempts"] if p.speed else 0
    return {
        **schedule.describe(),
        "filter": p.replay_filter,
        "speed": p.speed,
        "loop": p.loop,
        "expected_s": round(expected, 6),
        "timing_error": round((elapsed - expected) / expected, 4) if expected else None,
        "late_mean_us": round(out["late_sum_ns"] / paced / 1000, 2) if paced else None,
        "late_max_us": round(out["late_max_ns"] / 1000, 2) if paced else None,
        "bursts": bursts,
        "worst_burst": max(range(len(bursts)), key=lambda i: bursts[i]["eagain_rate"]) if bursts else None,
    }


def _destination(topo: Topology, p: SendParams) -> bytes:
    """sendto mode: the receiver as a packed sockaddr for the engine; other modes are connected."""
    if p.mode != "sendto":
        return b""
    if p.ipv6:
        return _sockaddr(socket.AF_INET6, topo.receiver.addr6 or "", PORT)
    return _sockaddr(socket.AF_INET, topo.receiver.addr, PORT)


def _send_body(
    p: SendParams, fds: list[int], stamp: bool, stop: bytearray, dst: bytes, schedule: replay.Schedule | None = None
) -> Callable[[], SendCounts]:
    mode, batch = MODE_CODES[p.mode], p.batch
    if schedule is not None:  # the C loop keeps the schedule: sizes, due times, bursts; one call per datagram
        due, period = schedule.due_ns(p.speed), int(schedule.period_ns() / p.speed) if p.speed else 0
        largest = max(16, max(schedule.sizes))

        def replay_body() -> SendCounts:
            return _engine.send_loop(
                fds[0],
                _replay_seconds(schedule, p),
                largest,
                stamp=stamp,
                stop=stop,
                mode=mode,
                dst=dst,
                sizes=schedule.sizes,
                due=due,
                loops=p.loop,
                period_ns=period,
                burst_ends=schedule.burst_ends,
            )

        return replay_body

    def body() -> SendCounts:
        return _engine.send_loop(
            fds if len(fds) > 1 else fds[0],
            p.duration,
            p.payload,
            rate=(p.rate or 0.0) / p.threads,
            stamp=stamp,
            stop=stop,
            mode=mode,
            batch=batch,
            dst=dst,
            gso_size=p.gso_size or 0,
        )

    return body


# the engine's counts that add up over sender threads
Summed = Literal[
    "attempts",
    "sent",
    "eagain",
    "enobufs",
    "other_errors",
    "outq_sum",
    "outq_samples",
    "calls",
    "stops",
    "full_ns",
    "full_cpu_ns",
    "full_wait_ns",
]
SUMMED: tuple[Summed, ...] = get_args(Summed)


def _combine(outs: list[SendCounts]) -> SendCounts:
    """One engine result from the sender threads': counts summed, occupancy max, series per bucket."""
    if len(outs) == 1:
        return outs[0]
    total = outs[0].copy()
    for key in SUMMED:
        total[key] = sum(o[key] for o in outs)
    total["errnos"] = {e: sum(o["errnos"].get(e, 0) for o in outs) for o in outs for e in o["errnos"]}
    total["outq_max"] = max(o["outq_max"] for o in outs)
    total["elapsed_s"] = max(o["elapsed_s"] for o in outs)
    total["last_errno"] = next((o["last_errno"] for o in outs if o["last_errno"]), 0)
    width = max(len(o["series"]) for o in outs)
    rows = [[0, 0, 0] for _ in range(width)]
    for o in outs:
        for i, (att, eag, outq) in enumerate(o["series"]):
            rows[i][0] += att
            rows[i][1] += eag
            rows[i][2] = max(rows[i][2], outq)
    total["series"] = [(att, eag, outq) for att, eag, outq in rows]
    return total


def _flow_table(p: SendParams, tx: list[list[socket.socket]], outs: list[SendCounts]) -> list[Flow]:
    """Each socket's counts: its sender thread, CPU and source port."""
    table: list[Flow] = []
    for t, (cpu, socks, out) in enumerate(zip(p.thread_cpus(), tx, outs)):
        for f, sock in enumerate(socks):
            table.append(
                {
                    "thread": t,
                    "cpu": cpu,
                    "sport": sock.getsockname()[1],
                    "attempts": out["flows"]["attempts"][f],
                    "sent": out["flows"]["sent"][f],
                    "eagain": out["flows"]["eagain"][f],
                    "stops": out["flows"]["stops"][f],
                }
            )
    return table


def _refuse_gso_errors(p: SendParams, out: SendCounts) -> None:
    """GSO that the device or the kernel refuses fails every send: one sentence, not a table of zeros."""
    if p.mode != "gso" or not out["other_errors"] or out["sent"]:
        return
    if out["last_errno"] == errno.EIO:
        raise ConfigError(
            "mode='gso': every send failed with EIO: UDP GSO needs TX checksum offload on the sender's "
            "device (ethtool -K IF tx on)"
        )
    raise ConfigError(
        f"mode='gso': every send failed with {errno.errorcode.get(out['last_errno'], out['last_errno'])} "
        f"({os.strerror(out['last_errno'])}): check gso_size against the MTU and payload"
    )


def stop_loops(stop: bytearray, threads: tuple[threading.Thread, ...]) -> None:
    """Ask the C loops to return and wait for them (again if a second Ctrl-C interrupts the wait)."""
    stop[0] = 1
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                continue


def _note_sampling(wfree: Wfree, rx_out: RecvCounts, sent: int) -> None:
    """The timestamp estimate's percentiles come from a bounded sample: say how it was taken."""
    seen, kept = rx_out["seen"], rx_out["samples"]
    wfree["samples"] = {
        "seen": seen,
        "kept": kept,
        "cap": SAMPLE_CAP,
        "method": "all" if kept == seen else "uniform reservoir (Algorithm R)",
    }
    wfree["count"] = seen
    wfree["coverage"] = round(seen / sent, 4) if sent else 0.0
    if seen:
        wfree["max_us"] = round(rx_out["max_ns"] / 1000, 2)  # exact, also when sampled


def gso_segmenter(topo: Topology) -> str:
    """What on this path may segment a GSO super-datagram in software before sock_wfree releases it ("": nothing).

    veth advertises UDP GSO (NETIF_F_GSO_UDP_L4, part of NETIF_F_GSO_SOFTWARE), so the super-skb crosses it
    whole and the peer's ip_rcv_core() orphans it once.  A qdisc may segment it (tbf above its max size, netem
    when it corrupts, cake), and so does validate_xmit_skb() for a NIC without UDP segmentation offload."""
    if topo.spec.qdisc:
        return f"the qdisc '{topo.spec.qdisc.text}'"
    return "" if topo.spec.link == "veth" else f"the {topo.spec.link} NIC (unless it offloads UDP GSO)"


def _gso_wfree_check(r: SendResult, segmenter: str, n: int) -> str:
    """GSO: one charge (skb_set_owner_w) per super-send.  Released whole, that is one sock_wfree per super-send;
    segmented first, __udp_gso_segment() hands sock_wfree to each segment, skbs the probe never saw charged.
    ``n``: the datagrams the probe counted released."""
    if segmenter:
        return (
            f"sock_wfree count {n} not compared: {segmenter} may segment the super-datagrams before their release, "
            f"and then each segment is released under an skb the probe never saw charged: what it counts (and times) are "
            f"segments at recycled addresses of earlier super-skbs (charges {r.wfree.get('charges', 0)}, "
            f"super-sends {r.sent})"
        )
    ok = abs(n - r.sent) <= 0.05 * max(r.sent, 1)
    return (
        f"sock_wfree count {n} vs super-sends {r.sent} (each crosses veth whole and is released once; "
        f"{r.segments} segments on the wire): {'ok' if ok else 'MISMATCH'}"
    )


def cross_checks(r: SendResult, ipv6: bool, segmenter: str = "") -> list[str]:
    """Our counts against the kernel's: one line each, 'ok' or 'MISMATCH' (``segmenter``: see gso_segmenter)."""
    prefix = "Udp6" if ipv6 else "Udp"
    sndbuf_errors = r.snmp.get(f"{prefix}SndbufErrors", 0)
    out_dgrams = r.snmp.get(f"{prefix}OutDatagrams", 0)
    # the receiver sees wire datagrams: GSO segments, while OutDatagrams counts each super-datagram once
    wire, wire_name = (r.segments, "segments") if r.segments and r.segments != r.sent else (r.sent, "sent")
    lines = [
        f"EAGAIN {r.eagain} <= {prefix}SndbufErrors {sndbuf_errors}: {'ok' if r.eagain <= sndbuf_errors else 'MISMATCH'}",
        f"sent {r.sent} == {prefix}OutDatagrams {out_dgrams}: {'ok' if r.sent == out_dgrams else 'MISMATCH'}",
        f"received {r.received} + RcvbufErrors {r.rcvbuf_errors} <= {wire_name} {wire}: "
        f"{'ok' if r.received + r.rcvbuf_errors <= wire else 'MISMATCH'}",
    ]
    n = r.wfree.get("count")
    if n is None or r.wfree.get("backend") not in ("bpf", "tracepoint"):  # the exact backends only
        return lines
    if r.params.get("mode") == "gso":
        lines.append(_gso_wfree_check(r, segmenter, n))
    else:  # datagrams, not sock_wfree calls: under GRO one call releases an aggregate
        tolerance = 0.01 if r.wfree.get("backend") == "tracepoint" else 0.05
        # a datagram a qdisc dropped (ENOBUFS, through IP_RECVERR) was charged and is released at its drop
        charged, against = r.sent + r.enobufs, f"sent {r.sent}" + (f" + ENOBUFS {r.enobufs}" if r.enobufs else "")
        lines.append(
            f"datagrams released {n} (sock_wfree calls {r.wfree.get('calls', n)}) vs {against}: "
            f"{'ok' if abs(n - charged) <= tolerance * max(charged, 1) else 'MISMATCH'}"
        )
    return lines


class UdpSender:
    """The ``udp_sender`` fixture's value: ``run(**params) -> SendResult`` on its topology.

    Each run takes the host lock (measurements never overlap, also across xdist
    workers), applies the ``cpu_pressure`` marker around the measurement, and is
    recorded for the assertion markers, ``--udpsend-json`` and the baseline.
    """

    def __init__(
        self,
        topo: Topology,
        sysctls: Sysctls,
        lock: Callable[[], None],
        probe: Callable[[], WfreeProbe | None],
        pressure: load.PressureSpec | None = None,
        capture: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    ) -> None:
        self.topology = topo
        self._sysctls = sysctls
        self._lock = lock
        self._probe = probe
        self._pressure = pressure
        self._capture = capture
        self.results: list[SendResult] = []

    def run(self, **params: Any) -> SendResult:
        p = make_params(**params)
        self._lock()
        result = run(self.topology, p, self._sysctls, self._probe(), self._pressure, self._capture)
        self.results.append(result)
        return result

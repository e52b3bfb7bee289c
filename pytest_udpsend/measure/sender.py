"""One send run: a pinned C send() loop in the sender namespace, a C drain in the receiver's.

Python builds the sockets (each inside its namespace, from a thread that entered
it), snapshots counters, starts the two loops in threads (both release the GIL),
and assembles a SendResult with the cross-checks.

Stopping: both loops watch a shared stop byte.  Whatever interrupts the wait
(KeyboardInterrupt, an error in the other loop), the byte is set and both
threads are joined before the sockets close, so a loop never runs on a closed
(or reused) fd.  Memory: receive timestamps go into a fixed buffer of
``SAMPLE_CAP`` latencies (reservoir-sampled past that), whatever the duration.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host.sysctl import Sysctls, normalize
from pytest_udpsend.host.topology import Topology
from pytest_udpsend.measure import _engine, counters, load  # type: ignore[attr-defined]
from pytest_udpsend.measure.diagnosis import diagnose
from pytest_udpsend.measure.params import SendParams, make_params
from pytest_udpsend.measure.probes import WfreeProbe
from pytest_udpsend.measure.result import SendResult

PORT = 40000
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD; Python 3.11's socket module lacks the constant
IP_RECVERR = 11
IPV6_RECVERR = 25
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
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, (0).to_bytes(8, "little") + (20000).to_bytes(8, "little"))
        sock.bind((addr, PORT))
        return sock

    sock: socket.socket = topo.receiver.run(make)
    return sock


def _sender_socket(topo: Topology, p: SendParams) -> socket.socket:
    family = socket.AF_INET6 if p.ipv6 else socket.AF_INET
    addr = topo.receiver.addr6 if p.ipv6 else topo.receiver.addr

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if p.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE if p.force_sndbuf else socket.SO_SNDBUF, p.sndbuf)
        # IP_RECVERR makes a qdisc/device drop (NET_XMIT_DROP) come back as ENOBUFS instead of
        # being counted silently.
        if p.ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.setblocking(False)
        sock.connect((addr, PORT))
        return sock

    sock: socket.socket = topo.sender.run(make)
    return sock


class _Thread(threading.Thread):
    """A thread that keeps its target's return value or exception."""

    def __init__(self, name: str, target: Callable[[], dict[str, Any]]) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.value: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:
            self.error = exc

    def result(self) -> dict[str, Any]:
        self.join()
        if self.error:
            raise self.error
        return self.value


def _pinned(cpu: int | None, fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def body() -> dict[str, Any]:
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
    capture: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> SendResult:
    """Measure one run.  The caller holds the host lock."""
    if p.ipv6 and topo.receiver.addr6 is None:
        raise ConfigError("ipv6=True needs an IPv6 topology: add @pytest.mark.topology(ipv6=True)")
    if probe is not None:
        probe.prepare(sysctls)
    stamp = probe is not None and probe.receiver_timestamps
    rx = _receiver_socket(topo, p.ipv6, stamp)
    tx = _sender_socket(topo, p)
    snd_snmp, rcv_snmp = counters.SnmpReader(topo.sender.ns), counters.SnmpReader(topo.receiver.ns)
    latencies = memoryview(bytearray(4 * SAMPLE_CAP)).cast("I") if stamp else None
    try:
        with contextlib.ExitStack() as stack:
            if pressure is not None:
                stack.enter_context(load.pressure(pressure))
            if capture is not None:
                stack.enter_context(capture())
            result = _measure(topo, p, tx, rx, snd_snmp, rcv_snmp, probe, latencies, stamp)
    finally:
        tx.close()
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
    tx: socket.socket,
    rx: socket.socket,
    snd_snmp: counters.SnmpReader,
    rcv_snmp: counters.SnmpReader,
    probe: WfreeProbe | None,
    latencies: memoryview | None,
    stamp: bool,
) -> SendResult:
    soft0, snd0, rcv0 = counters.read_softnet(), snd_snmp.read(), rcv_snmp.read()
    if probe is not None:
        probe.begin(tx.fileno(), os.getpid())
    started = time.time()
    until = time.monotonic_ns() + int(p.duration * 1e9)
    buf = latencies if latencies is not None else bytearray()
    stop = bytearray(1)
    receiver = _Thread("udpsend-rx", _pinned(p.receiver_cpu, lambda: _engine.recv_loop(rx.fileno(), until, 100, buf, stamp, stop)))
    sender = _Thread(
        "udpsend-tx",
        _pinned(p.cpu, lambda: _engine.send_loop(tx.fileno(), p.duration, p.payload, rate=p.rate or 0.0, stamp=stamp, stop=stop)),
    )
    try:
        receiver.start()
        sender.start()
        tx_out = sender.result()
        rx_out = receiver.result()
    except BaseException:
        stop_loops(stop, (sender, receiver))
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.end([], 0, 0)  # disarm (and detach) the probe: nobody reads this run
        raise
    finished = time.time()
    soft1, snd1, rcv1 = counters.read_softnet(), snd_snmp.read(), rcv_snmp.read()
    snmp = counters.snmp_delta(snd0, snd1)
    rcv_snmp_delta = counters.snmp_delta(rcv0, rcv1)
    softnet = counters.softnet_delta(soft0, soft1)
    attempts, elapsed = tx_out["attempts"], tx_out["elapsed_s"]
    wfree: dict[str, Any] = {}
    if probe is not None:
        samples = latencies[: rx_out["samples"]] if latencies is not None else []
        wfree = probe.end(samples, 0, tx_out["sent"])  # nothing is lost: past SAMPLE_CAP it samples
        wfree.setdefault("reason", probe.reason)
        if latencies is not None:
            _note_sampling(wfree, rx_out, tx_out["sent"])
    result = SendResult(
        attempts=attempts,
        sent=tx_out["sent"],
        eagain=tx_out["eagain"],
        enobufs=tx_out["enobufs"],
        eagain_rate=tx_out["eagain"] / attempts if attempts else 0.0,
        pps=tx_out["sent"] / elapsed if elapsed else 0.0,
        duration_s=round(elapsed, 4),
        payload=p.payload,
        sndbuf_requested=p.sndbuf,
        sndbuf_effective=tx.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        time_squeeze=sum(c["time_squeeze"] for c in softnet.values()),
        softnet=softnet,
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
        series={"bucket_ms": tx_out["bucket_ms"], "attempts": [b[0] for b in tx_out["series"]],
                "eagain": [b[1] for b in tx_out["series"]], "outq_max": [b[2] for b in tx_out["series"]]},  # fmt: skip
        topology=topo.describe(),
        params=p.as_dict(),
        started=started,
        finished=finished,
    )
    result.checks = cross_checks(result, p.ipv6)
    return result


def stop_loops(stop: bytearray, threads: tuple[threading.Thread, ...]) -> None:
    """Ask the C loops to return and wait for them (again if a second Ctrl-C interrupts the wait)."""
    stop[0] = 1
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                continue


def _note_sampling(wfree: dict[str, Any], rx_out: dict[str, Any], sent: int) -> None:
    """The timestamp estimate's percentiles come from a bounded sample: say how it was taken."""
    seen, kept = rx_out["seen"], rx_out["samples"]
    wfree["samples"] = {"seen": seen, "kept": kept, "cap": SAMPLE_CAP,
                        "method": "all" if kept == seen else "uniform reservoir (Algorithm R)"}  # fmt: skip
    wfree["count"] = seen
    wfree["coverage"] = round(seen / sent, 4) if sent else 0.0
    if seen:
        wfree["max_us"] = round(rx_out["max_ns"] / 1000, 2)  # exact, also when sampled


def cross_checks(r: SendResult, ipv6: bool) -> list[str]:
    """Our counts against the kernel's: one line each, 'ok' or 'MISMATCH'."""
    prefix = "Udp6" if ipv6 else "Udp"
    sndbuf_errors = r.snmp.get(f"{prefix}SndbufErrors", 0)
    out_dgrams = r.snmp.get(f"{prefix}OutDatagrams", 0)
    lines = [
        f"EAGAIN {r.eagain} <= {prefix}SndbufErrors {sndbuf_errors}: {'ok' if r.eagain <= sndbuf_errors else 'MISMATCH'}",
        f"sent {r.sent} == {prefix}OutDatagrams {out_dgrams}: {'ok' if r.sent == out_dgrams else 'MISMATCH'}",
        f"received {r.received} + RcvbufErrors {r.rcvbuf_errors} <= sent {r.sent}: "
        f"{'ok' if r.received + r.rcvbuf_errors <= r.sent else 'MISMATCH'}",
    ]
    if r.wfree.get("backend") == "bpf":
        n = r.wfree.get("count", 0)
        lines.append(f"sock_wfree count {n} vs sent {r.sent}: {'ok' if abs(n - r.sent) <= 0.05 * max(r.sent, 1) else 'MISMATCH'}")
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
        capture: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
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

"""SendResult: what one run measured, with how it was measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_udpsend.measure.recovery import Recovery, no_schedule
from pytest_udpsend.measure.shapes import BusyWaitDetail, Flow, Process, Replay, Series, Wfree, Wmem


@dataclass
class SendResult:
    """Attributes and JSON keys as in SPEC.md; extra keys say how it was measured.  The keys of the dict fields:
    their TypedDicts in measure/shapes.py (``Wfree``, ``Series``, ...)."""

    attempts: int = 0
    sent: int = 0
    eagain: int = 0
    enobufs: int = 0
    eagain_rate: float = 0.0
    pps: float = 0.0
    duration_s: float = 0.0
    payload: int = 0
    sndbuf_requested: int | None = None
    sndbuf_effective: int = 0
    time_squeeze: int = 0
    softnet: dict[str, dict[str, int]] = field(default_factory=dict)
    irqs: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # NIC port -> "<irq> <name>" -> per-CPU count
    snmp: dict[str, int] = field(default_factory=dict)
    wmem: Wmem = field(default_factory=Wmem)  # send buffer occupancy (SIOCOUTQ): max_bytes, mean_bytes, samples
    # backend, method, count (datagrams released), p50_us..max_us, contexts; bpf: calls (sock_wfree calls: under GRO one
    # releases a whole aggregate), released_at, charges; "unavailable": why there are no figures (then count and latencies None)
    wfree: Wfree = field(default_factory=Wfree)
    received: int = 0
    rcvbuf_errors: int = 0
    kernel: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    diagnosis: list[dict[str, str]] = field(default_factory=list)  # findings, each {"finding", "evidence"}
    # failed send calls by errno name; None where they cannot be told apart (errno_method says why): measure/backpressure.py
    errno: dict[str, int] | None = field(default_factory=dict)
    # fraction of one CPU the sender used while its send buffer was full; None if it never was (or not measured)
    busy_wait: float | None = None
    # sender_process(time_blocked=True): how long its send calls waited (calls, slept, total_s, p50_us, p99_us, max_us,
    # histogram, method; measure/sendtrace.py), or "unavailable": why not; empty for the plugin's own loop
    blocked: dict[str, Any] = field(default_factory=dict)
    # replay=: the schedule (source, datagrams, bytes, span_s, burst_rule, notes), its timing (expected_s,
    # timing_error, late_mean_us, late_max_us) and bursts (per burst and loop: datagrams, bytes, attempts, sent,
    # sent_bytes, eagain, eagain_rate, outq_max), worst_burst (its index by EAGAIN rate); empty otherwise
    replay: Replay = field(default_factory=Replay)
    # cpu_pressure(on_s=, off_s=): per release, how long the send rate took to come back to resume_fraction x the
    # unpressured rate in window_ms windows (measure/recovery.py); resume_ms: the worst release's, None with a reason
    recovery: Recovery = field(default_factory=no_schedule)
    # beyond SPEC: context and raw series
    other_errors: int = 0
    calls: int = 0  # send system calls (sendmmsg: one per batch)
    stops: int = 0  # sendmmsg batches that stopped early (counted as EAGAIN attempts)
    segments: int = 0  # wire datagrams: sent x segments per send (GSO), else sent
    flows: list[Flow] = field(default_factory=list)  # per socket: thread, cpu, sport, attempts, sent, eagain, stops
    process: Process = field(default_factory=Process)  # sender_process: argv, returncode, exited, stdout, stderr
    # per bucket of bucket_ms: attempts, eagain, outq_max; a program: outq_max, and sent under a pressure schedule
    series: Series = field(default_factory=Series)
    topology: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    pressure: str = ""
    started: float = 0.0
    finished: float = 0.0
    checks: list[str] = field(default_factory=list)
    errno_method: str = ""  # how errno was counted, or why it is None
    # full_s, cpu_s, method (measure/backpressure.py)
    busy_wait_detail: BusyWaitDetail = field(default_factory=BusyWaitDetail)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def _backpressure(self) -> str:
        errnos = (
            self.errno_method
            if self.errno is None
            else (", ".join(f"{k} {v}" for k, v in self.errno.items()) or "none")
        )
        busy = (
            self.busy_wait_detail.get("unavailable") or "send buffer never full"
            if self.busy_wait is None
            else f"{self.busy_wait:.2f} of a CPU while the send buffer was full ({self.busy_wait_detail.get('full_s')} s)"
        )
        line = f"failed sends by errno: {errnos}  busy_wait: {busy}"
        if self.blocked.get("calls") is not None:
            b = self.blocked
            line += f"  blocked: {b['slept']} of {b['calls']} send calls slept, {b['total_s']} s in all, p99 {b['p99_us']} us"
        return line

    def _replay_line(self) -> str:
        r = self.replay
        timing = (
            f"{self.duration_s:.3f} s for the schedule's {r['expected_s']:.3f} s ({r['timing_error']:+.1%})"
            if r.get("timing_error") is not None
            else f"{self.duration_s:.3f} s (as fast as possible)"
        )
        line = (
            f"replay {r['source']}: {r['datagrams']} datagrams x {r['loop']} at speed {r['speed']:g} in "
            f"{len(r['bursts'])} bursts ({r['burst_rule']}); {timing}"
        )
        worst = r.get("worst_burst")
        if worst is not None:
            w = r["bursts"][worst]
            line += (
                f"; worst burst #{worst} (at {w['start_s']:.3f} s): EAGAIN {w['eagain']}/{w['attempts']} "
                f"({w['eagain_rate']:.1%}), SIOCOUTQ peak {w['outq_max']} B"
            )
        return line

    def _recovery_line(self) -> str:
        r = self.recovery
        back = ", ".join(
            f"{x['at_ms']:.0f}:{'-' if x['resume_ms'] is None else format(x['resume_ms'], '.0f')}"
            + (" (sender idle, left out)" if x.get("sender_idle_ms") else "")
            for x in r["releases"]
        )
        return (
            f"recovery (to {r['resume_fraction']:.0%} of {r['reference_pps']} pps, {r['window_ms']} ms windows; "
            f"pressured {r['pressured_pps']} pps): worst {r.get('resume_ms')} ms, median {r.get('resume_ms_median')} ms; "
            f"release ms:resume ms {back or '-'}"
            + (f"; {r['note']}" if r.get("note") else "")
            + (f"; {r['unavailable']}" if r.get("unavailable") else "")
        )

    def summary(self) -> str:
        w = self.wfree or {}
        lines = [
            f"kernel {self.kernel}  topology: {self.topology}"
            + (f"  pressure: {self.pressure}" if self.pressure else ""),
            f"attempts {self.attempts}  sent {self.sent}  EAGAIN {self.eagain} ({self.eagain_rate:.2%})  "
            f"ENOBUFS {self.enobufs}  other errors {self.other_errors}",
            self._backpressure(),
            f"rate {self.pps:,.0f} pps over {self.duration_s:.2f} s  payload {self.payload} B  "
            f"sndbuf {self.sndbuf_effective} effective ({self.sndbuf_requested or 'default'} requested)",
            f"received {self.received}  RcvbufErrors {self.rcvbuf_errors}  time_squeeze {self.time_squeeze}",
            f"SIOCOUTQ max {self.wmem.get('max_bytes', 0):.0f} B mean {self.wmem.get('mean_bytes', 0):.0f} B",
            f"SNMP (sender netns): UdpSndbufErrors {self.snmp.get('UdpSndbufErrors', 0)}  "
            f"UdpOutDatagrams {self.snmp.get('UdpOutDatagrams', 0)}  IpOutDiscards {self.snmp.get('IpOutDiscards', 0)}",
        ]
        mode = self.params.get("mode", "send")
        if mode != "send" or len(self.flows) > 1:
            lines.append(
                f"mode {mode}: {self.calls} calls, {self.stops} stopped batches, {self.segments} wire datagrams; "
                + "per socket (sport sent/EAGAIN): "
                + ", ".join(f"{f['sport']} {f['sent']}/{f['eagain']}" for f in self.flows)
            )
        if self.replay:
            lines.append(self._replay_line())
        if self.recovery.get("releases") is not None:
            lines.append(self._recovery_line())
        if self.process:
            lines.append(
                f"program {' '.join(self.process.get('argv', []))}: "
                + (
                    "exited with code {}".format(self.process.get("returncode"))
                    if self.process.get("exited")
                    else "stopped after the duration"
                )
            )
        if w.get("unavailable"):  # the backend cannot time the release on this path: why, not a number
            lines.append(f"sock_wfree ({w.get('backend')}): not measured: {w['unavailable']}")
        elif w.get("backend"):
            calls = f" (sock_wfree calls {w['calls']})" if "calls" in w else ""
            lines.append(
                f"sock_wfree ({w['backend']}): n={w.get('count', 0)}{calls} p50 {w.get('p50_us')} us  p90 {w.get('p90_us')} us  "
                f"p99 {w.get('p99_us')} us  max {w.get('max_us')} us  contexts {w.get('contexts') or '-'}"
            )
        if w.get("stacks"):  # bpf: the most frequent kernel stack at sock_wfree
            lines.append(f"sock_wfree top stack ({w['stacks'][0]['context']}): {w['stacks'][0]['text']}")
        lines.append("sysctls: " + (", ".join(f"{k}={v}" for k, v in sorted(self.sysctls.items())) or "-"))
        lines += [f"check: {c}" for c in self.checks]
        lines += [f"diagnosis: {d['finding']}\n  evidence: {d['evidence']}" for d in self.diagnosis] or [
            "diagnosis: nothing to report"
        ]
        return "\n".join(lines)

"""Why a run saw EAGAIN (or did not), and what lifts it: findings from what was measured.

Each finding is ``{"finding": str, "evidence": str}``: the finding says what happened
and, where there is one, the remedy; the evidence names the measurement it rests on.
Nothing is guessed: a finding appears only when its evidence was measured in this
run (a counter that rose, a socket option read back, a probe's figures), so a plain
veth run with nothing to report gets an empty list.
"""

from __future__ import annotations

from typing import Any

from pytest_udpsend.measure.result import SendResult

Finding = dict[str, str]

DEFERRED_SHARE = 0.01  # bpf: a context other than inline released at least this share of the skbs
DEFERRED_P99_US = 1000.0  # or p99 charge-to-release at or above 1 ms
SKB_OVERHEAD = 904  # sk_buff + skb_shared_info + headers beyond the payload: 2304 B truesize for 1400 B on x86-64


def diagnose(r: SendResult) -> list[Finding]:
    """The findings of one run, in the order of the send path: socket, release, softirq, queue, drops."""
    out: list[Finding] = []
    for check in (_clamp, _deferral, _budget, _occupancy, _drops):
        out += check(r)
    return out


def _finding(finding: str, evidence: str) -> Finding:
    return {"finding": finding, "evidence": evidence}


def _kb(n: float) -> str:
    return f"{n / 1024:.0f} KB" if n >= 10 * 1024 else f"{n:.0f} B"


def _clamp(r: SendResult) -> list[Finding]:
    """SO_SNDBUF above wmem_max is silently clamped to it (doubled); SO_SNDBUFFORCE is not."""
    wmem_max = _int(r.sysctls.get("net.core.wmem_max"))
    forced = bool(r.params.get("force_sndbuf"))
    req = r.sndbuf_requested
    if req is None or forced or wmem_max is None or req <= wmem_max or r.sndbuf_effective >= 2 * req:
        return []
    return [
        _finding(
            f"SO_SNDBUF clamped: {req} B requested, {r.sndbuf_effective} B effective (net.core.wmem_max={wmem_max}, "
            f"doubled by the kernel); force_sndbuf=True (SO_SNDBUFFORCE, needs CAP_NET_ADMIN) or raising "
            f"net.core.wmem_max to {req} lifts it",
            "getsockopt(SO_SNDBUF) after setsockopt(SO_SNDBUF); net.core.wmem_max read at the end of the run",
        )
    ]


def _deferral(r: SendResult) -> list[Finding]:
    """Where and how late sock_wfree ran: exact with bpf, timing only with the timestamp estimate."""
    w = r.wfree or {}
    p99, count = w.get("p99_us"), w.get("count") or 0
    if not count or p99 is None:
        return []
    during = f"; during the run: {r.pressure}" if r.pressure else ""
    if w.get("backend") in ("bpf", "tracepoint"):
        contexts = w.get("contexts") or {}
        total = sum(contexts.values()) or 1
        elsewhere = {k: v for k, v in contexts.items() if k != "inline" and v / total >= DEFERRED_SHARE}
        if not elsewhere and p99 < DEFERRED_P99_US:
            return []
        where = ", ".join(
            f"{v / total:.0%} of releases ran in {k}" for k, v in sorted(elsewhere.items(), key=lambda kv: -kv[1])
        )
        return [
            _finding(
                f"sock_wfree deferred: {where or 'all releases ran inline'}, p99 {_us(p99)} after the "
                f"{'charge' if w['backend'] == 'bpf' else 'skb was queued (net_dev_queue)'}; until it runs the skb stays charged to the socket",
                f"{'bpf on skb_set_owner_w, sock_wfree' if w['backend'] == 'bpf' else 'tracepoints at net_dev_queue, the receive/free events'} "
                f"and GRO entry: {count} datagrams released "
                f"({w.get('calls', count)} sock_wfree calls), contexts {contexts}{during}",
            )
        ]
    if p99 < DEFERRED_P99_US:
        return []
    return [
        _finding(
            f"sock_wfree deferred: p99 {_us(p99)} from send to release (estimate); the timestamp backend times the "
            "release but cannot say where sock_wfree ran (softirq, ksoftirqd, NAPI thread): --udpsend-backend bpf "
            "on a kernel with kprobes names the context",
            f"receiver SO_TIMESTAMPNS (net.core.netdev_tstamp_prequeue=0) minus the send time, {count} samples, "
            f"coverage {w.get('coverage', 0):.0%} of sent{during}",
        )
    ]


def _us(us: float) -> str:
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us:.0f} us"


def _budget(r: SendResult) -> list[Finding]:
    """time_squeeze: a NET_RX run stopped at netdev_budget packets or netdev_budget_usecs."""
    per_cpu = {cpu: c.get("time_squeeze", 0) for cpu, c in r.softnet.items() if c.get("time_squeeze", 0) > 0}
    if not per_cpu:
        return []
    budget, usecs = r.sysctls.get("net.core.netdev_budget", "?"), r.sysctls.get("net.core.netdev_budget_usecs", "?")
    cpus = ", ".join(f"CPU {cpu}: {n}" for cpu, n in sorted(per_cpu.items(), key=lambda kv: int(kv[0])))
    return [
        _finding(
            f"NET_RX budget exhausted {sum(per_cpu.values())} times ({cpus}) with net.core.netdev_budget={budget}, "
            f"netdev_budget_usecs={usecs}: the rest of the backlog waited for the next softirq run or ksoftirqd; "
            "raising netdev_budget / netdev_budget_usecs lets one run free more skbs",
            "/proc/net/softnet_stat column 3 (time_squeeze), per-CPU delta over the run",
        )
    ]


def _occupancy(r: SendResult) -> list[Finding]:
    """SIOCOUTQ (sk_wmem_alloc) at or above sk_sndbuf: the buffer was full, sends got EAGAIN."""
    peak = r.wmem.get("max_bytes", 0) or 0
    if not r.sndbuf_effective or peak < r.sndbuf_effective:
        return []
    truesize = r.payload + SKB_OVERHEAD
    return [
        _finding(
            f"the send buffer was full: SIOCOUTQ peaked at {peak:.0f} B against sndbuf {r.sndbuf_effective} B effective "
            f"({r.eagain} EAGAIN); SIOCOUTQ counts skb truesize, ~{_kb(truesize)} per {r.payload} B datagram, "
            f"so the buffer held about {r.sndbuf_effective // truesize} datagrams in flight",
            f"ioctl(SIOCOUTQ) sampled by the send loop ({r.wmem.get('samples', 0)} samples); getsockopt(SO_SNDBUF)",
        )
    ]


def _drops(r: SendResult) -> list[Finding]:
    out = []
    if r.enobufs:
        out.append(
            _finding(
                f"{r.enobufs} sends got ENOBUFS: a qdisc or the device dropped the datagram (NET_XMIT_DROP; on veth "
                f"also a full input backlog at the peer) on {r.topology or 'the sender link'}",
                "send() errno ENOBUFS, reported through IP_RECVERR on the sender socket",
            )
        )
    if r.rcvbuf_errors:
        out.append(
            _finding(
                f"the receiver dropped {r.rcvbuf_errors} datagrams: its receive buffer was full",
                "UdpRcvbufErrors delta in the receiver namespace (/proc/net/snmp)",
            )
        )
    dropped = {cpu: c.get("dropped", 0) for cpu, c in r.softnet.items() if c.get("dropped", 0) > 0}
    if dropped:
        backlog = r.sysctls.get("net.core.netdev_max_backlog", "?")
        cpus = ", ".join(f"CPU {cpu}: {n}" for cpu, n in sorted(dropped.items(), key=lambda kv: int(kv[0])))
        out.append(
            _finding(
                f"the input backlog dropped {sum(dropped.values())} packets ({cpus}) at "
                f"net.core.netdev_max_backlog={backlog}",
                "/proc/net/softnet_stat column 2 (dropped), per-CPU delta over the run",
            )
        )
    return out


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def lines(diagnosis: list[Finding]) -> list[str]:
    """One finding per line, its evidence in brackets: for the terminal and the failure table."""
    return [f"{d['finding']} [{d['evidence']}]" for d in diagnosis]

"""A ``sender_process`` program's send calls, counted from outside with tracepoint eBPF: its failed
sends by errno, its successful sends, and (asked for) how long its send calls waited.

Only the program's own processes count: the tasks of its own cgroup (``host/cgroup.py``) and the
cgroups below it (``bpf_get_current_ancestor_cgroup_id`` at its level), or, where it has none, its
first process (tgid, as this process's pid namespace numbers it).  Everything is counted in the kernel
(per-CPU arrays, no atomics, no events sent up); only the sums are read, at ``stop``.  The programs
are raw tracepoints attached by name (no tracefs), loaded with the header-free bcc loader (tploader.py),
and attached only while one program runs.

Per kernel, the send's return is seen at:

* ``sock:sock_send_length`` (6.3+; raw tracepoint args ``sk, ret, flags``): in ``sock_sendmsg_nosec``,
  once per message, so inside ``sendmmsg`` too (the errno of a batch that stopped part-way is seen,
  though the call returns the count) and for write(2) on a socket (how iperf3 -u sends).  Kept when
  the socket is UDP (``sk_type`` SOCK_DGRAM and ``sk_protocol`` 17, offsets from the kernel's BTF).
  It costs nothing to tasks that do not send: no syscall tracepoint is needed for the counts.
* without it (6.1): raw ``sys_exit`` of sendto, sendmsg and sendmmsg (the syscall number from
  ``pt_regs.orig_ax``), for sockets of any kind: write(2) cannot be told to be a send there, and a
  sendmmsg that stopped part-way returns the count, so its errno is not seen.  The syscall tracepoint
  puts every task's syscalls on the slow path while attached.

Time blocked (``time_blocked``): raw ``sys_enter`` stamps each syscall of the program's threads
(time, number, the thread's voluntary context switches ``task_struct.nvcsw``), and the send's return
(sock_send_length, or sys_exit) closes the interval; in sendmmsg each message is closed at its own
return and the next one starts there.  A call "slept" when the thread's voluntary context switch count
rose inside it: the kernel's own record that the call waited (a UDP send sleeps only in
``sock_wait_for_wmem`` for buffer space, or on a page fault of its data); a preempted call does not
count (that is the host's load, not the send's wait).  This needs no time threshold, which could not
tell a slow send on a loaded CPU from a wait.  ``sys_enter`` puts every task's syscalls on the slow
path and runs this filter in each: ci/bench_sendtrace.py measured a full-speed sender on 6.18 losing
2.8 % of its packets/s to the counts from sock_send_length, 3.3 % to those from sys_exit, and 14.5 %
once sys_enter is added: so time blocked is attached only when a run asks for it.
"""

from __future__ import annotations

import errno as errno_mod
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.measure import bpfc, tploader
from pytest_udpsend.measure.histogram import HIST_EDGES_US, SUB, percentile_us, rebin
from pytest_udpsend.measure.tploader import BTF_PATH, btf_offsets
from pytest_udpsend.measure.tpprobe import tracepoint_unavailable

NB = 64 << SUB  # log-linear buckets, as histogram.bucket_bounds_ns reads them
ERRNO_SLOTS = 256  # errnos at or above it are counted together ("other")
# send syscall numbers per machine: sendto, sendmsg, sendmmsg, write
SYSCALLS = {"x86_64": (44, 46, 307, 1), "aarch64": (206, 211, 269, 64)}
# slots of the stats array
S_SENT, S_TIMED, S_SLEPT, S_TOTAL_NS, S_MAX_NS = range(5)
RETURN_EVENT = "sock_send_length"  # from 6.3 (commit 6e6eda44b939)

PROGRAM = (
    r"""
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define NB (64 << SUB)
#define NERR 257

struct entry { u64 ts; u64 nr; u64 nvcsw; };
BPF_HASH(entries, u32, struct entry, 65536);  /* per thread: its last syscall's entry */
/* 0 armed, 1 cgroup id (0: none), 2 its level (-1: exact id only), 3 tgid (as our pid namespace numbers
   it; 0: none), 4 and 5 dev and inode of that pid namespace, 6 the tgid in the initial namespace, learned */
BPF_ARRAY(cfg, u64, 7);
BPF_PERCPU_ARRAY(errs, u64, NERR);
BPF_PERCPU_ARRAY(stats, u64, 5);
BPF_PERCPU_ARRAY(hist, u64, NB);

static __always_inline u64 cfg_get(u32 k)
{
    u64 *v = cfg.lookup(&k);
    return v ? *v : 0;
}

static __always_inline int ours(void)
{
    if (!cfg_get(0))
        return 0;
    u64 cg = cfg_get(1);
    if (cg) {
        s64 level = (s64)cfg_get(2);
        u64 id = level >= 0 ? bpf_get_current_ancestor_cgroup_id((int)level) : bpf_get_current_cgroup_id();
        if (id == cg)
            return 1;
    }
    u64 want = cfg_get(3);
    if (!want)
        return 0;
    u64 tgid = bpf_get_current_pid_tgid() >> 32, root = cfg_get(6);
    if (root)
        return tgid == root;
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(cfg_get(4), cfg_get(5), &ns, sizeof(ns)) || ns.tgid != want)
        return 0;
    u32 k = 6;
    u64 *slot = cfg.lookup(&k);
    if (slot)
        *slot = tgid;
    return 1;
}

static __always_inline void add(u32 slot, u64 n)
{
    u64 *v = stats.lookup(&slot);
    if (v)
        *v += n;
}

"""
    + bpfc.LOG2_BUCKET
    + bpfc.SYSCALL_ARGS
    + r"""
static __always_inline u64 nvcsw(void)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(bpf_get_current_task() + OFF_NVCSW));
    return v;
}

static __always_inline void count(long ret, u64 ok)
{
    if (ret >= 0) {
        add(0, ok);
        return;
    }
    u32 e = -ret < NERR - 1 ? (u32)-ret : NERR - 1;
    u64 *n = errs.lookup(&e);
    if (n)
        (*n)++;
}

static __always_inline int is_send(u64 nr, int with_write)
{
    return nr == NR_SENDTO || nr == NR_SENDMSG || nr == NR_SENDMMSG || (with_write && nr == NR_WRITE);
}

/* one send closed: its wait since the entry (or the previous message of the same sendmmsg) */
static __always_inline void close_wait(struct entry *e, int with_write)
{
    if (!is_send(e->nr, with_write))
        return;
    u64 now = bpf_ktime_get_ns(), d = now - e->ts, cs = nvcsw();
    u32 b = udps_bucket(d);
    u64 *h = hist.lookup(&b);
    if (h)
        (*h)++;
    add(1, 1);
    if (cs != e->nvcsw)
        add(2, 1);
    add(3, d);
    u32 k = 4;
    u64 *m = stats.lookup(&k);
    if (m && d > *m)
        *m = d;
    e->ts = now;
    e->nvcsw = cs;
}

/* raw sys_enter(struct pt_regs *regs, long id): stamp every syscall of the program's threads, so that
   a send's return is never paired with an older, other call */
int on_enter(struct bpf_raw_tracepoint_args *ctx)
{
    if (!ours())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct entry e = {};
    e.ts = bpf_ktime_get_ns();
    e.nr = ctx->args[1];
    e.nvcsw = nvcsw();
    entries.update(&tid, &e);
    return 0;
}

/* raw sock_send_length(struct sock *sk, int ret, int flags): every message's return, UDP sockets only */
int on_send_length(struct bpf_raw_tracepoint_args *ctx)
{
    if (!ours())
        return 0;
    u64 sk = ctx->args[0];
    u16 type = 0, proto = 0;
    bpf_probe_read_kernel(&type, sizeof(type), (void *)(sk + OFF_SK_TYPE));
    bpf_probe_read_kernel(&proto, sizeof(proto), (void *)(sk + OFF_SK_PROTOCOL));
    if (type != 2 || proto != 17)  /* SOCK_DGRAM, IPPROTO_UDP */
        return 0;
    count((long)(int)ctx->args[1], 1);
    if (TIMED) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        struct entry *e = entries.lookup(&tid);
        if (e)
            close_wait(e, 1);
    }
    return 0;
}

/* raw sys_exit(struct pt_regs *regs, long ret): the send syscalls' returns, where sock_send_length is not */
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
    if (!ours())
        return 0;
    u64 nr = udps_syscall_nr(ctx->args[0]);
    if (!is_send(nr, 0))
        return 0;
    long ret = (long)ctx->args[1];
    count(ret, nr == NR_SENDMMSG && ret > 0 ? (u64)ret : 1);
    if (TIMED) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        struct entry *e = entries.lookup(&tid);
        if (e) {
            close_wait(e, 0);
            entries.delete(&tid);
        }
    }
    return 0;
}
"""
)

MSG_METHOD = (
    "raw tracepoint sock:sock_send_length (bcc, header-free; socket fields from kernel BTF) on {kernel}: "
    "every message's return on a UDP socket of the program's {who}, inside sendmmsg too and for write(2) "
    "on a socket; errors raised before the protocol's sendmsg (EBADF, EFAULT, ENOTSOCK) are not seen"
)
SYSCALL_METHOD = (
    "raw tracepoint sys_exit of sendto/sendmsg/sendmmsg (bcc, header-free) on {kernel}, which has no "
    "sock:sock_send_length (6.3+): the program's {who}, sockets of any kind; write(2) is not attributable "
    "to a socket there and is not counted, and a sendmmsg that stopped part-way returns the count, so "
    "its errno is not seen"
)
BLOCKED_METHOD = (
    "raw sys_enter of the program's threads to the send's return ({ret}), per call (per message in "
    "sendmmsg); 'slept': the thread's voluntary context switches (task_struct.nvcsw) rose inside the "
    "call, i.e. it waited (for buffer space: sock_wait_for_wmem); histogram log-linear, 12.5 % buckets"
)
NOT_ASKED = "not measured: ask with sender_process.run(..., time_blocked=True) (its sys_enter tracepoint slows every task's syscalls)"


@dataclass
class Traced:
    """What one run's tracing counted."""

    errno: dict[str, int]
    sent: int  # sends that returned >= 0 (messages, in sendmmsg)
    method: str
    blocked: dict[str, Any] = field(default_factory=dict)


def has_send_length(path: Path = BTF_PATH) -> bool:
    """Does this kernel have the sock:sock_send_length tracepoint (its BTF names ``btf_trace_sock_send_length``)?"""
    return b"\0btf_trace_" + RETURN_EVENT.encode() + b"\0" in path.read_bytes()


def unavailable() -> str | None:
    """None if tracing the program's sends may work here, else why not (and the fix)."""
    if not BTF_PATH.exists():
        return (
            f"this kernel ({os.uname().release}) has no BTF at {BTF_PATH} (CONFIG_DEBUG_INFO_BTF unset), so the "
            "socket's fields cannot be located: use a kernel with BTF (--udpsend-kernel)"
        )
    if os.geteuid() != 0:
        return "loading eBPF programs needs root: run the tests as root"
    problem = tracepoint_unavailable()  # bcc importable, and the right bcc
    if problem is not None:
        return problem
    if platform.machine() not in SYSCALLS:
        return f"no send syscall numbers known for {platform.machine()} (have {', '.join(SYSCALLS)})"
    return None


def cgroup_level(path: Path) -> int:
    """The cgroup's level in the v2 hierarchy (root 0), or -1 where the mount does not show the root
    (a cgroup namespace: its levels are not the kernel's), so that only its own id can be matched."""
    for parent in path.parents:
        if os.path.ismount(parent):
            return len(path.relative_to(parent).parts) if os.stat(parent).st_ino == 1 else -1
    return -1


def errno_names(counts: list[int]) -> dict[str, int]:
    """Per-errno counts (index = errno, last slot: all at or above ERRNO_SLOTS) by name."""
    names: dict[str, int] = {}
    for number, n in enumerate(counts):
        if n and number:
            name = "other" if number >= ERRNO_SLOTS else errno_mod.errorcode.get(number, f"errno {number}")
            names[name] = names.get(name, 0) + n
    return names


class SendTrace:
    """Counts one program run's sends: ``start`` before it starts, ``follow`` its tgid where it has no
    cgroup of its own, ``stop`` at its end; ``close`` always."""

    def __init__(self, time_blocked: bool, per_message: bool | None = None) -> None:
        self.time_blocked = time_blocked
        self.kernel = os.uname().release
        self.per_message = False
        self._force = per_message  # None: sock_send_length where the kernel has it; False: the syscall path (tests)
        self.who = ""
        self._bpf: Any = None
        self._attached: list[str] = []

    def start(self, cgroup: Path | None) -> None:
        """Load, arm for the cgroup (and its children) and attach; PrivilegeError says why it cannot."""
        problem = unavailable()
        if problem is not None:
            raise PrivilegeError(problem)
        self._bpf = self._load()
        cfg = self._bpf[b"cfg"]
        pidns = os.stat("/proc/self/ns/pid")
        if cgroup is not None:
            level = cgroup_level(cgroup)
            cfg[cfg.Key(1)] = cfg.Leaf(os.stat(cgroup).st_ino)  # a v2 cgroup's id is its directory's inode
            cfg[cfg.Key(2)] = cfg.Leaf(level & 0xFFFFFFFFFFFFFFFF)
            self.who = f"processes (its cgroup {cgroup.name}" + (" and those below it)" if level >= 0 else " only)")
        cfg[cfg.Key(4)], cfg[cfg.Key(5)] = cfg.Leaf(pidns.st_dev), cfg.Leaf(pidns.st_ino)
        cfg[cfg.Key(0)] = cfg.Leaf(1)
        events = [(RETURN_EVENT, "on_send_length")] if self.per_message else [("sys_exit", "on_exit")]
        if self.time_blocked:
            events.insert(0, ("sys_enter", "on_enter"))
        try:
            for event, fn in events:
                self._bpf.attach_raw_tracepoint(tp=event.encode(), fn_name=fn.encode())
                self._attached.append(event)
        except Exception as exc:
            self.close()
            raise PrivilegeError(f"the send tracepoints could not be attached on {self.kernel}: {exc}") from None

    def follow(self, tgid: int) -> None:
        """Count this process (as our pid namespace numbers it) too: the program outside a cgroup of its own."""
        cfg = self._bpf[b"cfg"]
        cfg[cfg.Key(3)] = cfg.Leaf(tgid)
        self.who = f"first process (pid {tgid}; what it starts is not counted)"

    def _load(self) -> Any:
        try:
            self.per_message = has_send_length() if self._force is None else self._force
            offsets = {**btf_offsets("sock", ("sk_type", "sk_protocol")), **btf_offsets("task_struct", ("nvcsw",))}
            regs = tploader.syscall_cflags()
        except (OSError, ValueError, KeyError) as exc:
            raise PrivilegeError(
                f"the fields the send tracer reads could not be located in {BTF_PATH} on {self.kernel} ({exc})"
            ) from None
        nrs = dict(zip(("SENDTO", "SENDMSG", "SENDMMSG", "WRITE"), SYSCALLS[platform.machine()]))
        cflags = (
            [f"-DOFF_{name.upper()}={off}" for name, off in offsets.items()]
            + regs
            + [f"-DNR_{name}={nr}" for name, nr in nrs.items()]
            + [f"-DSUB={SUB}", f"-DTIMED={int(self.time_blocked)}"]
        )
        try:
            return tploader.load(PROGRAM, cflags)
        except tploader.LoadError as exc:
            raise PrivilegeError(f"the send tracer could not be built on {self.kernel} ({exc}): {exc.detail}") from None

    def stop(self) -> Traced:
        """Detach and read the sums."""
        bpf = self._bpf
        cfg = bpf[b"cfg"]
        cfg[cfg.Key(0)] = cfg.Leaf(0)
        self._detach()
        errs = [sum(v) for v in bpf[b"errs"].values()]
        stats = [max(v) if i == S_MAX_NS else sum(v) for i, v in enumerate(bpf[b"stats"].values())]
        template = MSG_METHOD if self.per_message else SYSCALL_METHOD
        traced = Traced(
            errno=errno_names(errs), sent=stats[S_SENT], method=template.format(kernel=self.kernel, who=self.who)
        )
        traced.blocked = (
            self._blocked(stats, [sum(v) for v in bpf[b"hist"].values()])
            if self.time_blocked
            else {"unavailable": NOT_ASKED}
        )
        return traced

    def _blocked(self, stats: list[int], hist: list[int]) -> dict[str, Any]:
        calls = stats[S_TIMED]
        ret = "sock:sock_send_length" if self.per_message else "sys_exit"
        return {
            "calls": calls,
            "slept": stats[S_SLEPT],
            "total_s": round(stats[S_TOTAL_NS] / 1e9, 6),
            "p50_us": percentile_us(hist, 0.50),
            "p99_us": percentile_us(hist, 0.99),
            "max_us": round(stats[S_MAX_NS] / 1000, 2) if calls else None,
            "histogram": {"edges_us": HIST_EDGES_US, "counts": rebin(hist)},
            "method": BLOCKED_METHOD.format(ret=ret),
        }

    def _detach(self) -> None:
        for event in self._attached:
            if event.encode() in self._bpf.raw_tracepoint_fds:
                self._bpf.detach_raw_tracepoint(tp=event.encode())
        self._attached = []

    def close(self) -> None:
        if self._bpf is not None:
            self._detach()
            self._bpf.cleanup()
            self._bpf = None


def cross_checks(traced: Traced, sndbuf_errors: int, out_datagrams: int) -> list[str]:
    """The traced counts against the sender netns's SNMP deltas, for the result's checks.

    UdpSndbufErrors counts in udp_sendmsg every -ENOBUFS and every error while the socket's
    SOCK_NOSPACE is set (after a full buffer), and in udp_send_skb the ENOBUFS a socket without
    IP_RECVERR is not told about (the send returns success).  So traced EAGAIN + ENOBUFS is at most
    UdpSndbufErrors, and equal unless one of those happened."""
    full = traced.errno.get("EAGAIN", 0) + traced.errno.get("ENOBUFS", 0)
    per_message = traced.method.startswith("raw tracepoint sock:")
    if full == sndbuf_errors:
        verdict = "ok"
    elif full < sndbuf_errors:
        why = (
            "ENOBUFS not returned to a socket without IP_RECVERR, or other errors after a full buffer (SOCK_NOSPACE)"
            + ("" if per_message else ", or EAGAIN inside a sendmmsg that stopped part-way (not seen on this path)")
        )
        verdict = f"UdpSndbufErrors higher by {sndbuf_errors - full}: {why}"
    else:
        verdict = (
            "MISMATCH"
            if per_message
            else f"traced higher by {full - sndbuf_errors}: this path counts sockets of every kind (not only UDP)"
        )
    return [
        f"EAGAIN+ENOBUFS traced {full} vs UdpSndbufErrors {sndbuf_errors}: {verdict}",
        f"sends traced as succeeded {traced.sent}, UdpOutDatagrams {out_datagrams} (a success without a datagram: "
        "ENOBUFS without IP_RECVERR, MSG_MORE corking)",
    ]

"""The exact sock_wfree probe: skb_set_owner_w and sock_wfree, traced through bcc.

Attached with fentry (BPF trampolines) where the kernel supports it (BTF), which
costs far less per event than a kprobe's breakpoint trap; kprobes otherwise.

The C is header-light on purpose: bcc 0.26 cannot compile ``<linux/skbuff.h>`` or
``<net/sock.h>`` against 6.12 headers, so the program includes only
``<uapi/linux/ptrace.h>``, reads arguments with PT_REGS_PARM1, keys its map by the
skb pointer and filters by the sender's tgid (armed only while a run measures).

The tgid filter works across pid namespaces (a container's ``unshare -p``): the
program asks ``bpf_get_ns_current_pid_tgid()`` for the current task's tgid *as
seen in the sender's pid namespace* (dev and inode of ``/proc/self/ns/pid``,
given at ``begin``), which is what ``os.getpid()`` returned there.  A plain
``bpf_get_current_pid_tgid()`` gives the initial namespace's number and would
match nothing inside a container.

Cost to tests that did not ask for it: none.  The program is compiled once per
session (a failure is kept and raised again at once, never recompiled), and
attached only between ``begin`` and ``end`` of a run that measures; in between it
is detached, so no other test pays a trap or trampoline per skb.

Counting each datagram once: the skb charged by the sender process is remembered
with its charge time and charging thread; ``sock_wfree`` consumes the entry, so an
skb is counted once however often it is seen.  IP fragments (payload above the
MTU): ``__ip_append_data`` charges only the first skb through
``skb_set_owner_w`` (the others' truesize is added to sk_wmem_alloc directly),
and ``ip_do_fragment`` later gives every fragment its own ``sock_wfree``; only the
head skb's release matches a charge, so a fragmented datagram counts once, timed
to its head's release (measured on 6.1: 3000-byte payloads, charges == count ==
datagrams sent).

Counting datagrams under GRO: the GRO merge paths (``skb_gro_receive()``,
``skb_gro_receive_list()``) clear a merged skb's destructor and add its truesize to the
aggregate ("sk ownership ... completely transferred to the aggregated packet"), so one
``sock_wfree`` releases the whole aggregate (6.1 lane, threaded NAPI: 6698 datagrams, 237
calls).  So a datagram's release is the first of two events for its skb: its GRO entry (the
raw tracepoint ``napi_gro_receive_entry``, once per skb on both 6.1 and 6.12, its first
argument the skb) or its own ``sock_wfree``.  Timed at GRO entry, a merged datagram's
latency includes its wait in the device's queue for the NAPI poll and excludes the time its
aggregate is held until the poll flushes it (the same poll).  ``sock_wfree`` calls on
charged skbs are counted on their own (``calls``).  At ``napi_gro_receive_exit`` a skb that
was merged (GRO_MERGED, GRO_MERGED_FREE) is forgotten, since no sock_wfree will come for it;
an aggregate head stays remembered until its sock_wfree.  Paths that enter GRO through
``napi_gro_frags`` build a fresh skb (drivers' RX buffers), never a charged one.

Where it ran, from the task current at the release (``sock_wfree``, or the GRO entry):
``inline`` the charging thread itself (its syscall, or a softirq it ran on the way
out), ``ksoftirqd`` a ksoftirqd/N thread, ``napi_thread`` a threaded-NAPI
``napi/...`` thread, ``softirq`` any other task (a softirq that interrupted it, e.g.
the RPS IPI path on another CPU).

Latencies go into log-linear histograms (8 sub-buckets per power of two: at most
12.5 % bucket width) per context; max is exact.  Compiled once per session.

Where it was freed, not only when: the first release of each context on a CPU and
then every STACK_EVERY-th also takes its kernel stack (``bpf_get_stackid``, at most
STACK_DEPTH frames), counted per (context, stack id).  Sampled because unwinding is
the costly part: a veth sender under TCG on 6.1 lost 54 % and 24 % of its throughput
in two runs with a stack every release, 22 % and 19 % without stacks, 11 % with one
in 8 (ci/bench_probe.py; emulated rounds are noisy).
``end`` symbolizes only the few most frequent stacks of each context, once, and
returns them as ``wfree["stacks"]``: a stack's share of its context's samples times
the context's exact share of all releases (exact with ``stack_every=1``), with
``wfree["stacks_lost"]`` for samples whose stack could not be kept (a stack-id
collision, a full map).  On veth (6.1 and
6.12): ``ip_rcv_core <- ip_rcv <- __netif_receive_skb_one_core <- process_backlog
<- __napi_poll <- net_rx_action <- handle_softirqs <- ...``, the receiver orphaning
the skb.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.measure import bpfc
from pytest_udpsend.measure.histogram import HIST_EDGES_US, SUB, percentile_us, rebin
from pytest_udpsend.measure.shapes import Backend, ReleaseContext, Stack, Wfree
from pytest_udpsend.measure.tploader import stderr_to_file

if TYPE_CHECKING:
    from pytest_udpsend.host.topology import TopologySpec

CONTEXTS: tuple[ReleaseContext, ...] = ("inline", "softirq", "ksoftirqd", "napi_thread")  # cx in the C
NBUCKETS = 64 << SUB
# slots of the C's stats array after the per-context pairs (count, max_ns): S_* there
S_CHARGES, S_LOST, S_CALLS, S_GRO = (len(CONTEXTS) * 2 + i for i in range(4))
STACKS_PER_CONTEXT = 3  # kept in the result, per context
STACK_EVERY = 8  # one release in this many (per context and CPU, the first included) takes its stack
SYMBOLIZED_PER_CONTEXT = 10  # symbolized per context: stacks differing only in offsets merge by name
# the probe's own frames above the caller that freed: the fentry program and trampoline (they
# return into sock_wfree, so sock_wfree is the last of them) or, with a kprobe, sock_wfree itself.
# JIT code may resolve to the nearest kallsyms name before it (6.12: a module's "handshake_exit"),
# so sock_wfree's position, not the names above it, says where the caller starts.
PROBE_DEPTH = 8
# A raw tracepoint's program is called by its runner (bpf_trace_run1, via __bpf_trace_<event>), which
# the traced function called: the runner marks the cut there as sock_wfree does (6.1, GRO entry:
# "mpls_gso_exit <- bpf_trace_run1 <- napi_gro_receive", the JIT code again under a module's name).
PROBE_FRAMES = (
    "bpf_prog_",
    "bpf_trampoline_",
    "[unknown]",
    "kprobe_",
    "ftrace_",
    "arch_ftrace_",
    "bpf_trace_run",
    "__bpf_trace_",
    "bpf_get_stackid",
)
CUT_FRAMES = ("sock_wfree", "bpf_trace_run", "__bpf_trace_")  # the last of these among the top frames is the probe's
# the frame that says who ran the release (a thread, bh enabled again in a syscall, an
# interrupt's exit): the compact text ends there.  Matched without a compiler clone's suffix
# (6.12: "do_softirq.part.0").
ROOT_FRAMES = (
    "run_ksoftirqd",
    "napi_threaded_poll",
    "do_softirq",
    "irq_exit_rcu",
    "__irq_exit_rcu",
    "do_syscall_64",
    "kthread",
)
TEXT_FRAMES = 10

PROGRAM = (
    r"""
#include <uapi/linux/ptrace.h>

#define NCTX 4
#define SUB 3
#define NB (64 << SUB)

/* released: the datagram's release was counted at its GRO entry; the entry stays until the skb's
   own sock_wfree (an aggregate head) or the GRO exit that merged it */
struct charge { u64 ts; u32 tid; u32 released; };
BPF_TABLE("lru_hash", u64, struct charge, charged, 262144);
BPF_ARRAY(cfg, u64, 3);  /* sender's tgid (0 = disarmed), dev and inode of its pid namespace */
/* per-CPU, so no atomic operations: a tracing program never nests into itself on
   one CPU (the kernel skips such recursion), and charge and release touch
   different slots */
BPF_PERCPU_ARRAY(hist, u64, NCTX * NB);
/* per ctx: datagrams released, max_ns; then charges, stacks lost, sock_wfree calls, released at GRO entry */
#define S_CHARGES (NCTX * 2)
#define S_LOST (NCTX * 2 + 1)
#define S_CALLS (NCTX * 2 + 2)
#define S_GRO (NCTX * 2 + 3)
BPF_PERCPU_ARRAY(stats, u64, NCTX * 2 + 4);
/* the charged skb between napi_gro_receive_entry and _exit on this CPU (GRO does not nest on a CPU) */
BPF_PERCPU_ARRAY(gro_pending, u64, 1);
#if STACK_EVERY
"""
    + bpfc.STACK_MAPS
    + r"""#endif

"""
    + bpfc.LOG2_BUCKET
    + r"""
static __always_inline void bump(u32 slot)
{
    u64 *n = stats.lookup(&slot);
    if (n)
        (*n)++;
}

static __always_inline int do_charge(u64 skb)
{
    u32 k_tgid = 0, k_dev = 1, k_ino = 2;
    u64 *want = cfg.lookup(&k_tgid), *dev = cfg.lookup(&k_dev), *ino = cfg.lookup(&k_ino);
    if (!want || !dev || !ino || *want == 0)
        return 0;
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(*dev, *ino, &ns, sizeof(ns)) || ns.tgid != *want)
        return 0;  /* not in the sender's pid namespace, or not the sender */
    u64 id = bpf_get_current_pid_tgid();
    struct charge c = {};
    c.ts = bpf_ktime_get_ns();
    c.tid = (u32)id;
    charged.update(&skb, &c);
    bump(S_CHARGES);
    return 0;
}

"""
    + bpfc.COUNT_STACK
    + r"""
/* one datagram released: its latency and context (the task current now against the charging thread) */
static __always_inline void release(void *ctx, struct charge *c)
{
    u64 d = bpf_ktime_get_ns() - c->ts;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 cx = 0;
    if (tid != c->tid) {  /* only then is the task's name needed */
        char comm[16] = {};
        bpf_get_current_comm(&comm, sizeof(comm));
        cx = 1;
        if (comm[0] == 'k' && comm[1] == 's' && comm[2] == 'o' && comm[3] == 'f' && comm[4] == 't' &&
            comm[5] == 'i' && comm[6] == 'r' && comm[7] == 'q')
            cx = 2;
        else if (comm[0] == 'n' && comm[1] == 'a' && comm[2] == 'p' && comm[3] == 'i' && comm[4] == '/')
            cx = 3;
    }
    u32 hidx = cx * NB + udps_bucket(d);
    u64 *h = hist.lookup(&hidx);
    if (h)
        (*h)++;
    bump(cx * 2);
    u32 sidx = cx * 2 + 1;
    u64 *mx = stats.lookup(&sidx);
    if (mx && d > *mx)
        *mx = d;
    count_stack(ctx, cx);
}

static __always_inline int do_wfree(void *ctx, u64 skb)
{
    struct charge *c = charged.lookup(&skb);
    if (!c)
        return 0;
    bump(S_CALLS);
    if (!c->released)
        release(ctx, c);
    charged.delete(&skb);
    return 0;
}

/* raw tracepoint net:napi_gro_receive_entry(const struct sk_buff *skb): once per skb entering GRO */
int on_gro_entry(struct bpf_raw_tracepoint_args *ctx)
{
    u64 skb = ctx->args[0];
    u32 zero = 0;
    u64 *pending = gro_pending.lookup(&zero);
    if (!pending)
        return 0;
    *pending = 0;
    struct charge *c = charged.lookup(&skb);
    if (!c)
        return 0;
    if (!c->released) {
        release(ctx, c);
        c->released = 1;
        bump(S_GRO);
    }
    *pending = skb;
    return 0;
}

/* raw tracepoint net:napi_gro_receive_exit(int ret): a merged skb's charge now belongs to the
   aggregate (GRO_MERGED = 0, GRO_MERGED_FREE = 1 in enum gro_result), no sock_wfree follows for it */
int on_gro_exit(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0;
    u64 *pending = gro_pending.lookup(&zero);
    if (!pending || !*pending)
        return 0;
    u64 skb = *pending;
    *pending = 0;
    int ret = (int)ctx->args[0];
    if (ret == 0 || ret == 1)
        charged.delete(&skb);
    return 0;
}
"""
)

# fentry (BPF trampolines) where the kernel has BTF: a direct call instead of a
# breakpoint trap per event.  Opaque struct declarations keep the C header-light.
ATTACH_FENTRY = r"""
struct sk_buff;
struct sock;
KFUNC_PROBE(skb_set_owner_w, struct sk_buff *skb, struct sock *sk) { return do_charge((u64)skb); }
KFUNC_PROBE(sock_wfree, struct sk_buff *skb) { return do_wfree(ctx, (u64)skb); }
"""
ATTACH_KPROBE = r"""
int on_charge(struct pt_regs *ctx) { return do_charge(PT_REGS_PARM1(ctx)); }
int on_wfree(struct pt_regs *ctx) { return do_wfree(ctx, PT_REGS_PARM1(ctx)); }
"""


GRO_EVENTS = ((b"napi_gro_receive_entry", b"on_gro_entry"), (b"napi_gro_receive_exit", b"on_gro_exit"))


def method_text(attach: str) -> str:
    return (
        f"exact: {attach} on skb_set_owner_w (charge) and sock_wfree (release), per skb, via bcc; a datagram merged "
        "by GRO is released with its aggregate and timed at its GRO entry (raw tracepoint napi_gro_receive_entry); "
        "count is datagrams released, calls the sock_wfree calls"
    )


class BpfProbe:
    backend: Backend = "bpf"
    receiver_timestamps = False
    method = method_text("kprobe or fentry")

    def __init__(self, reason: str, stack_every: int = STACK_EVERY) -> None:
        self.reason = reason
        self.stack_every = stack_every  # other than STACK_EVERY (0: no stacks) to measure the cost (ci/bench_probe.py)
        self.attach = "not attached yet"
        self._bpf: Any = None
        self._error: PrivilegeError | None = None  # a failed build, kept: never retried
        self._kfuncs: list[bytes] = []  # fentry programs, detached between runs
        self._attached = False

    def build(self) -> None:
        """Compile and load once per session; PrivilegeError (the same one every time) if it cannot."""
        if self._error is not None:
            raise self._error
        if self._bpf is not None:
            return
        from bcc import BPF

        fentry = bool(BPF.support_kfunc())
        self.attach = "fentry" if fentry else "kprobe"
        self.method = method_text(self.attach)
        with stderr_to_file() as log:
            try:
                bpf = BPF(
                    text=PROGRAM + (ATTACH_FENTRY if fentry else ATTACH_KPROBE),  # fentry attaches itself
                    cflags=[f"-DSTACK_EVERY={self.stack_every}"],
                )
                self._kfuncs = list(bpf.kfunc_entry_fds)
                for name in self._kfuncs:  # ... so detach until a run measures
                    bpf.detach_kfunc(name)
                for _, fn in GRO_EVENTS:  # load (and verify) now; attached only while a run measures
                    bpf.load_func(fn, BPF.RAW_TRACEPOINT)
            except Exception as exc:
                log.seek(0)
                errors = [line for line in log.read().splitlines() if "error" in line][:5]
                self._error = PrivilegeError(
                    f"the bcc probe could not be built on {os.uname().release} ({exc}): "
                    + ("; ".join(errors) or "no compiler output")
                    + "; check that the kernel headers match the running kernel"
                )
                raise self._error from None
        self._bpf = bpf

    def _compile(self) -> Any:
        self.build()
        return self._bpf

    def _set_attached(self, on: bool) -> None:
        if on == self._attached:
            return
        if on:
            try:
                self._attach()
            except Exception:
                self._detach()  # what a partial attach left: the next run starts clean
                raise
        else:
            self._detach()
        self._attached = on

    def _attach(self) -> None:
        bpf = self._bpf
        if self.attach == "fentry":
            for name in self._kfuncs:
                bpf.attach_kfunc(name)
        else:
            bpf.attach_kprobe(event="skb_set_owner_w", fn_name="on_charge")
            bpf.attach_kprobe(event="sock_wfree", fn_name="on_wfree")
        for event, fn in GRO_EVENTS:
            bpf.attach_raw_tracepoint(tp=event, fn_name=fn)

    def _detach(self) -> None:
        """Detach whatever is attached, also after a partial attach."""
        bpf = self._bpf
        for name in self._kfuncs:
            if name in bpf.kfunc_entry_fds:
                bpf.detach_kfunc(name)
        if self.attach == "kprobe":
            for event, fn in (("skb_set_owner_w", "on_charge"), ("sock_wfree", "on_wfree")):
                with contextlib.suppress(Exception):  # not attached
                    bpf.detach_kprobe(event=event, fn_name=fn)
        for tracepoint, _ in GRO_EVENTS:
            if tracepoint in bpf.raw_tracepoint_fds:
                bpf.detach_raw_tracepoint(tp=tracepoint)

    def prepare(self, sysctls: Sysctls, path: TopologySpec | None = None, largest: int | None = None) -> None:
        self._compile()  # compile outside the measured interval; exact on every path, so the path does not matter

    def begin(self, sock_fd: int, tgid: int) -> None:
        """Arm for one run of ``tgid`` (as numbered in this process's pid namespace) and attach."""
        bpf = self._compile()
        for name in ("hist", "stats", "charged", "gro_pending") + (
            ("stack_counts", "stack_seen") if self.stack_every else ()
        ):
            bpf[name].clear()
        if self.stack_every:  # bcc's StackTrace.clear() does nothing: delete the ids one by one
            table = bpf["stacks"]
            for key in list(table.keys()):
                del table[key]
        pidns = os.stat("/proc/self/ns/pid")
        cfg = bpf["cfg"]
        cfg[cfg.Key(1)] = cfg.Leaf(pidns.st_dev)
        cfg[cfg.Key(2)] = cfg.Leaf(pidns.st_ino)
        cfg[cfg.Key(0)] = cfg.Leaf(tgid)
        try:
            self._set_attached(True)
        except Exception as exc:
            cfg[cfg.Key(0)] = cfg.Leaf(0)
            raise PrivilegeError(f"the bcc probe could not be attached on {os.uname().release}: {exc}") from None

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> Wfree:
        bpf = self._compile()
        cfg = bpf["cfg"]
        cfg[cfg.Key(0)] = cfg.Leaf(0)
        self._set_attached(False)
        hist = [sum(v) for v in bpf["hist"].values()]  # per-CPU slots: add them up
        per_cpu_stats = list(bpf["stats"].values())
        stats = [max(v) if i % 2 and i < len(CONTEXTS) * 2 else sum(v) for i, v in enumerate(per_cpu_stats)]
        per_ctx = {name: hist[i * NBUCKETS : (i + 1) * NBUCKETS] for i, name in enumerate(CONTEXTS)}
        total = [sum(col) for col in zip(*per_ctx.values())]
        contexts = {name: stats[i * 2] for i, name in enumerate(CONTEXTS)}
        max_ns = max(stats[i * 2 + 1] for i in range(len(CONTEXTS)))
        count = sum(contexts.values())  # datagrams released: each once, at its GRO entry or its sock_wfree
        at_gro = stats[S_GRO]
        stacks = self._stacks(bpf, contexts) if self.stack_every else {}
        return {
            "backend": self.backend,
            "method": self.method,
            "count": count,
            "calls": stats[S_CALLS],
            "released_at": {"gro_entry": at_gro, "sock_wfree": count - at_gro},
            "charges": stats[S_CHARGES],
            "p50_us": percentile_us(total, 0.50),
            "p90_us": percentile_us(total, 0.90),
            "p99_us": percentile_us(total, 0.99),
            "max_us": round(max_ns / 1000, 2) if count else None,
            "contexts": contexts,
            "histogram": {"edges_us": HIST_EDGES_US, "counts": rebin(total)},
            "histograms": {n: {"edges_us": HIST_EDGES_US, "counts": rebin(c)} for n, c in per_ctx.items() if sum(c)},
            "context_p99_us": {n: percentile_us(c, 0.99) for n, c in per_ctx.items() if sum(c)},
            **stacks,
        }

    def _stacks(self, bpf: Any, contexts: Mapping[ReleaseContext, int]) -> Wfree:
        """The most frequent release stacks per context, symbolized once, here at the end of the run."""
        from bcc import BPF

        lost = sum(bpf["stats"][S_LOST])
        counts = {(CONTEXTS[k.cx], int(k.id)): sum(v) for k, v in bpf["stack_counts"].items() if k.cx < len(CONTEXTS)}
        table = bpf["stacks"]

        def frames_of(stack_id: int) -> list[str]:
            try:  # not bcc's walk(): it assumes 127 frames
                ips = table[table.Key(stack_id)].ip
            except KeyError:  # not in the stack map (cannot happen without BPF_F_REUSE_STACKID)
                return []
            return [BPF.ksym(addr).decode(errors="replace") for addr in itertools.takewhile(bool, ips)]

        return {
            "stacks": top_stacks(counts, frames_of, contexts),
            "stacks_lost": lost,
            "stacks_sampled": sum(counts.values()) + lost,
            "stack_every": self.stack_every,
        }

    def close(self) -> None:
        if self._bpf is not None:
            self._attached = False  # cleanup() detaches what is attached
            self._bpf.cleanup()
            self._bpf = None


def caller_frames(frames: Sequence[str]) -> list[str]:
    """The stack from the function that released the skb outwards: ``sock_wfree`` (or a raw
    tracepoint's runner) and the probe's frames above it (among the first PROBE_DEPTH) dropped."""
    top = list(frames[:PROBE_DEPTH])
    cuts = [i for i, f in enumerate(top) if f == "sock_wfree" or f.startswith(CUT_FRAMES[1:])]
    if cuts:
        return list(frames[cuts[-1] + 1 :])
    head = 0
    while head < len(top) and top[head].startswith(PROBE_FRAMES):
        head += 1
    return list(frames[head:])


def stack_text(share: float, frames: Sequence[str]) -> str:
    """'81 % of releases: vmxnet3_tq_tx_complete <- ... <- run_ksoftirqd', cut after the frame
    that says who ran it (or after TEXT_FRAMES frames)."""
    shown = list(frames[:TEXT_FRAMES])
    root = next((i for i, f in enumerate(shown) if f.split(".")[0] in ROOT_FRAMES), None)
    if root is not None:
        shown = shown[: root + 1]
    tail = " <- ..." if root is None and len(frames) > TEXT_FRAMES else ""
    return f"{share * 100:.0f} % of releases: " + (" <- ".join(shown) or "(no frames)") + tail


def top_stacks(
    counts: Mapping[tuple[ReleaseContext, int], int],
    frames_of: Callable[[int], Sequence[str]],
    contexts: Mapping[ReleaseContext, int],
    per_context: int = STACKS_PER_CONTEXT,
) -> list[Stack]:
    """Per context, the ``per_context`` most frequent release stacks, most frequent first overall.

    ``counts`` maps (context, stack id) to sampled releases, ``contexts`` each context to all its
    releases (exact); ``frames_of`` symbolizes a stack id (called only for the few most frequent
    ids of each context); ids whose caller frames have the same function names (they differ only
    in offsets) are merged.  ``samples`` is what was sampled, ``count`` the releases that stands
    for (its share of the context's samples times the context's releases), ``share`` that of all
    releases: rounded down, so the shares add up to at most 1.
    """
    total = sum(contexts.values())
    out: list[Stack] = []
    for context in sorted({c for c, _ in counts}):
        ids = sorted(((n, i) for (c, i), n in counts.items() if c == context and n > 0), reverse=True)
        kept = sum(n for n, _ in ids)
        merged: dict[tuple[str, ...], int] = {}
        for n, stack_id in ids[:SYMBOLIZED_PER_CONTEXT]:
            key = tuple(caller_frames(frames_of(stack_id)))
            merged[key] = merged.get(key, 0) + n
        for frames, n in sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:per_context]:
            releases = n / kept * contexts.get(context, 0)
            share = math.floor(releases / total * 10_000) / 10_000 if total else 0.0
            out.append(
                {
                    "context": context,
                    "count": round(releases),
                    "samples": n,
                    "share": share,
                    "frames": list(frames),
                    "text": stack_text(share, frames),
                }
            )
    return sorted(out, key=lambda s: (-s["count"], s["context"]))

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

Where it ran, from the task current at ``sock_wfree``:
``inline`` the charging thread itself (its syscall, or a softirq it ran on the way
out), ``ksoftirqd`` a ksoftirqd/N thread, ``napi_thread`` a threaded-NAPI
``napi/...`` thread, ``softirq`` any other task (a softirq that interrupted it, e.g.
the RPS IPI path on another CPU).

Latencies go into log-linear histograms (8 sub-buckets per power of two: at most
12.5 % bucket width) per context; max is exact.  Compiled once per session.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.measure.histogram import HIST_EDGES_US, SUB, percentile_us, rebin

CONTEXTS = ("inline", "softirq", "ksoftirqd", "napi_thread")
NBUCKETS = 64 << SUB

PROGRAM = r"""
#include <uapi/linux/ptrace.h>

#define NCTX 4
#define SUB 3
#define NB (64 << SUB)

struct charge { u64 ts; u32 tid; u32 pad; };
BPF_TABLE("lru_hash", u64, struct charge, charged, 262144);
BPF_ARRAY(cfg, u64, 3);  /* sender's tgid (0 = disarmed), dev and inode of its pid namespace */
/* per-CPU, so no atomic operations: a tracing program never nests into itself on
   one CPU (the kernel skips such recursion), and charge and release touch
   different slots */
BPF_PERCPU_ARRAY(hist, u64, NCTX * NB);
BPF_PERCPU_ARRAY(stats, u64, NCTX * 2 + 1);  /* per ctx: count, max_ns; last: charges */

static __always_inline u32 udps_log2(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

static __always_inline u32 udps_bucket(u64 v)
{
    if (v < (1 << SUB))
        return (u32)v;
    u32 l = udps_log2(v);
    return ((l - SUB + 1) << SUB) + (u32)((v >> (l - SUB)) & ((1 << SUB) - 1));
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
    u32 slot = NCTX * 2;
    u64 *n = stats.lookup(&slot);
    if (n)
        (*n)++;
    return 0;
}

static __always_inline int do_wfree(u64 skb)
{
    struct charge *c = charged.lookup(&skb);
    if (!c)
        return 0;
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
    charged.delete(&skb);
    u32 b = udps_bucket(d);
    if (b >= NB)
        b = NB - 1;
    u32 hidx = cx * NB + b;
    u64 *h = hist.lookup(&hidx);
    if (h)
        (*h)++;
    u32 sidx = cx * 2;
    u64 *cnt = stats.lookup(&sidx);
    if (cnt)
        (*cnt)++;
    sidx = cx * 2 + 1;
    u64 *mx = stats.lookup(&sidx);
    if (mx && d > *mx)
        *mx = d;
    return 0;
}
"""

# fentry (BPF trampolines) where the kernel has BTF: a direct call instead of a
# breakpoint trap per event.  Opaque struct declarations keep the C header-light.
ATTACH_FENTRY = r"""
struct sk_buff;
struct sock;
KFUNC_PROBE(skb_set_owner_w, struct sk_buff *skb, struct sock *sk) { return do_charge((u64)skb); }
KFUNC_PROBE(sock_wfree, struct sk_buff *skb) { return do_wfree((u64)skb); }
"""
ATTACH_KPROBE = r"""
int on_charge(struct pt_regs *ctx) { return do_charge(PT_REGS_PARM1(ctx)); }
int on_wfree(struct pt_regs *ctx) { return do_wfree(PT_REGS_PARM1(ctx)); }
"""


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[Any]:
    """Catch what clang/bcc print on fd 2 (not sys.stderr), to put it into our error."""
    with tempfile.TemporaryFile("w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)


class BpfProbe:
    backend = "bpf"
    receiver_timestamps = False
    method = "exact: kprobe or fentry on skb_set_owner_w (charge) and sock_wfree (release), per skb, via bcc"

    def __init__(self, reason: str) -> None:
        self.reason = reason
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
        self.method = f"exact: {self.attach} on skb_set_owner_w (charge) and sock_wfree (release), per skb, via bcc"
        with _stderr_to_file() as log:
            try:
                bpf = BPF(text=PROGRAM + (ATTACH_FENTRY if fentry else ATTACH_KPROBE))  # fentry attaches itself
                self._kfuncs = list(bpf.kfunc_entry_fds)
                for name in self._kfuncs:  # ... so detach until a run measures
                    bpf.detach_kfunc(name)
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
        bpf = self._bpf
        if self.attach == "fentry":
            for name in self._kfuncs:
                (bpf.attach_kfunc if on else bpf.detach_kfunc)(name)
        elif on:
            bpf.attach_kprobe(event="skb_set_owner_w", fn_name="on_charge")
            bpf.attach_kprobe(event="sock_wfree", fn_name="on_wfree")
        else:
            bpf.detach_kprobe(event="skb_set_owner_w", fn_name="on_charge")
            bpf.detach_kprobe(event="sock_wfree", fn_name="on_wfree")
        self._attached = on

    def prepare(self, sysctls: Sysctls) -> None:
        self._compile()  # compile outside the measured interval

    def begin(self, sock_fd: int, tgid: int) -> None:
        """Arm for one run of ``tgid`` (as numbered in this process's pid namespace) and attach."""
        bpf = self._compile()
        for name in ("hist", "stats", "charged"):
            bpf[name].clear()
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

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> dict[str, Any]:
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
        count = sum(contexts.values())
        return {
            "backend": self.backend,
            "method": self.method,
            "count": count,
            "charges": stats[len(CONTEXTS) * 2],
            "p50_us": percentile_us(total, 0.50),
            "p90_us": percentile_us(total, 0.90),
            "p99_us": percentile_us(total, 0.99),
            "max_us": round(max_ns / 1000, 2) if count else None,
            "contexts": contexts,
            "histogram": {"edges_us": HIST_EDGES_US, "counts": rebin(total)},
            "histograms": {n: {"edges_us": HIST_EDGES_US, "counts": rebin(c)} for n, c in per_ctx.items() if sum(c)},
            "context_p99_us": {n: percentile_us(c, 0.99) for n, c in per_ctx.items() if sum(c)},
        }

    def close(self) -> None:
        if self._bpf is not None:
            self._attached = False  # cleanup() detaches what is attached
            self._bpf.cleanup()
            self._bpf = None

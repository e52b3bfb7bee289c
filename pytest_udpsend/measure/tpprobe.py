"""The tracepoint sock_wfree probe: where kprobes and fentry are not allowed (hardened kernels,
microVM guests; this project's 6.18 CI host: no kprobes, fentry refused with EPERM), from raw
tracepoints alone.

Loader: bcc, with a header-free program (``tploader.py``, shared with sendtrace and record).  bcc
only looks for kernel headers to give its own helpers a few basic types and macros; the program
itself uses no kernel struct.  So bcc is pointed (``BCC_KERNEL_SOURCE``, set only around the
compile) at a stub "kernel tree" of tiny files (``tploader.STUB_HEADERS``: integer types, a
version macro, PAGE_SIZE), never at another kernel's headers, whose struct layouts differ.  The
few skb fields read (``sk``, ``destructor``, ``head``, ``network_header``, ``protocol``) are at
byte offsets taken from this kernel's own BTF (``/sys/kernel/btf/vmlinux``, parsed by
``tploader.btf_offsets``), and ``sock_wfree``'s address comes from kallsyms.  The programs are
loaded as typed tracepoints (``tp_btf``, ``tploader.TypedPrograms``: the skb is a pointer the
verifier knows, each field a plain load) where the kernel takes them, else as raw tracepoints that
read the fields with ``bpf_probe_read_kernel`` (about 25 ns a call on the 6.18 host, five calls a
datagram: ``ci/bench_tpprobe.py``); the method line says which.  Both attach without tracefs (not
mounted on the host) and hand the program the tracepoint's C arguments (``args[0]`` is the skb for
every event used, on 6.1 and 6.18 alike).  Why not the others: bpftrace is not installed on the host and 0.17 cannot
express raw tracepoints; libbpf CO-RE needs a clang BPF compiler, which Debian's bcc carries
inside libbcc but the host has not as a program.  bcc is already what the bpf backend uses
(Debian python3-bpfcc, in the CI setup and the lane guests).

What it measures, per datagram of the sender's process (tgid, as its pid namespace numbers it):

* **charge side**: ``net:net_dev_queue`` in the sender's task, for skbs whose destructor is
  ``sock_wfree`` (charged to a socket).  A fragment other than the first (IPv4 fragment offset;
  IPv6 a fragment header right after the fixed header, as ``ip6_fragment`` builds it for UDP, with
  a non-zero offset) is skipped, so a fragmented datagram counts once, at its first fragment (as
  with the bpf backend).  That check reads the IP header with a helper, so it runs only where the
  run's largest datagram may exceed the path's MTU (``may_fragment``).  Here the program learns the sender's sockets and sending threads: the
  first of each in the run state, others in small hashes; no per-datagram map insert.
* **release side**, the first of: ``net:netif_receive_skb`` (veth: the receiver's
  ``ip_rcv_core()`` orphans the skb right after, in the same call chain), ``net:napi_gro_receive_entry``
  (GRO: a merged datagram's charge moves to the aggregate there; one event per datagram),
  ``skb:consume_skb`` / ``skb:kfree_skb`` (NIC TX completion, drops: both fire before
  ``skb_release_all()`` runs the destructor; ``consume_skb``, which fires for every skb the host
  frees, is attached only where a charged skb can end there: ``attached_events``).  Each requires the skb's destructor still
  ``sock_wfree`` and its ``sk`` one of the sender's sockets.  An skb counted at its GRO entry and
  not merged there (the aggregate head, GRO_NORMAL) is remembered by address until its own
  release event, which then counts only as a call.  ``calls`` counts the skbs that reach one of
  the three release events with ``sock_wfree`` still set (the ``sock_wfree`` calls: one per GRO
  aggregate).  One program per event: the kernel skips a program that would run nested in itself
  on a CPU (counted: ``wfree["missed_events"]``), and a softirq's ``netif_receive_skb`` may
  interrupt a task's ``consume_skb``.  Open: under RPS (sender CPU 0, backlog on CPU 1) some runs
  count up to 1.63 % fewer releases than sent, and the shortfall is the kernel not running the program:
  an atomic count at ``on_rx``'s first instruction equals the released count, while every datagram
  was charged (``charges`` == sent), processed by the backlog (``softnet_stat``, no drops) and received
  before ``end``, and ``recursion_misses`` stayed 0 (a reader that does count misses: 101 of 101 forced
  nestings); the program's own ``run_cnt`` and a second program on the same tracepoint agree
  with its count, while ``net:netif_rx`` saw every datagram (``ci/diag_rps_shortfall.py``).  Without
  RPS 0 of 6 runs fell short, with it 21 of 43, the worst 1.26 % (2026-12-04; docs/explanation); with
  the typed programs 8 of 15, the worst 1.63 %: not a matter of how the fields are read.
* **context**: the task current at the release event: ``inline`` a thread that queued the
  sender's datagrams in this run (the bpf backend: the thread that queued this one; the same for
  a single sending thread), else as the bpf backend classifies it by name.
* **latency, sampled**: one datagram in ``TIME_EVERY`` (16), chosen at random per CPU (an LCG:
  no aliasing with a periodic send pattern), is timed: its skb address and queue time go into a
  hash, looked up at release only while a timed datagram is in flight.  ``wfree["timed"]`` is the
  sample's size, the method line says both.  The interval runs from ``net:net_dev_queue`` to the
  release event (``wfree["interval"]``).  It includes qdisc waits, the veth crossing and
  the backlog/NAPI wait; it misses the time from the charge (``skb_set_owner_w`` in
  ``ip_make_skb``/``__ip_append_data``) to ``__dev_queue_xmit`` (the IP and neighbour output
  path, a few microseconds) and the few instructions between the release tracepoint and
  ``sock_wfree``.  So it is lower than the bpf backend's charge -> sock_wfree figures: compare
  counts and contexts across backends, not latencies.  (The send syscall's entry as a second,
  upper end was tried: the ``sys_enter`` tracepoint puts every syscall of every task on the
  traced slow path, too costly for a backend.)
* **stacks**: one release in ``STACK_EVERY`` (1024) per context and CPU, the first included, takes
  its kernel stack at the release tracepoint (``bpf_get_stackid``); ``end`` symbolizes the most
  frequent from /proc/kallsyms into ``wfree["stacks"]``, as the bpf backend does (its
  ``top_stacks``).  On plain veth: ``__netif_receive_skb_core <- ... <- process_backlog <- ...``.

Counting and histograms happen in the kernel (per-CPU arrays); only these summaries are read, at
``end``.  Attached only between ``begin`` and ``end`` of a run that measures.  The cost to the
sender, and where it is: ``ci/bench_tpprobe.py``.

Where it cannot see the release: netem with a delay, jitter or rate orphans each skb at enqueue
(``skb_orphan_partial()``, no tracepoint): the result says so instead of giving figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.measure import bpfc, tploader
from pytest_udpsend.measure.bpfprobe import CONTEXTS, NBUCKETS, top_stacks
from pytest_udpsend.measure.histogram import HIST_EDGES_US, percentile_us, rebin
from pytest_udpsend.measure.shapes import Backend, ReleaseContext, ReleasedAt, Wfree
from pytest_udpsend.measure.tploader import BTF_PATH, btf_offsets
from pytest_udpsend.measure.wfree import not_measured

if TYPE_CHECKING:
    from pytest_udpsend.host.topology import TopologySpec

SKB_FIELDS = ("sk", "destructor", "head", "network_header", "protocol")
NETEM_ORPHANS = ("delay", "jitter", "rate")  # netem_enqueue(): skb_orphan_partial() when any is set
# slots of the C's stats array after the per-context pairs (count, max_ns)
S_CHARGES, S_CALLS, S_GRO, S_LOST, S_AT_RX, S_AT_CONSUME, S_AT_KFREE = (len(CONTEXTS) * 2 + i for i in range(7))
NSTATS = S_AT_KFREE + 1  # the C's NSTATS
CHARGE_EVENT = ("net_dev_queue", "on_queue")
RELEASE_EVENTS = (
    ("netif_receive_skb", "on_rx"),
    ("consume_skb", "on_consume"),
    ("kfree_skb", "on_kfree"),
    ("napi_gro_receive_entry", "on_gro_entry"),
    ("napi_gro_receive_exit", "on_gro_exit"),
)
EVENTS = (CHARGE_EVENT, *RELEASE_EVENTS)
CONSUME_EVENT = RELEASE_EVENTS[1]
# One datagram in TIME_EVERY is timed (chosen at random per CPU): at 400k datagrams/s that is 25k
# timed datagrams a second, enough for a p99; untimed ones cost no map insert (ci/bench_tpprobe.py).
TIME_EVERY = 16
# One release in STACK_EVERY per context and CPU (the first included) takes its kernel stack: an unwind
# costs about 2 us here (1 in 128 added 16 ns per datagram), so far sparser than the bpf backend's 1 in 8;
# at 400k datagrams/s that is still 400 stacks a second.
STACK_EVERY = 1024
STAGES = {
    "attached": 0,
    "filter": 1,
    "full": 9,
}  # how much of the program runs (ci/bench_tpprobe.py: where the cost is)

INTERVAL = {
    "from": "net:net_dev_queue (the sender's __dev_queue_xmit, before any qdisc)",
    "to": "the release event (net:netif_receive_skb, net:napi_gro_receive_entry, skb:consume_skb, skb:kfree_skb)",
    "includes": "qdisc waits, the link crossing, backlog and NAPI waits, TX completion",
    "misses": "charge (skb_set_owner_w) -> __dev_queue_xmit: the IP and neighbour output path, a few us; "
    "release event -> sock_wfree: a few instructions",
}


TRACEPOINT_NAMES = {
    "netif_receive_skb": "net:netif_receive_skb",
    "napi_gro_receive_entry": "net:napi_gro_receive_entry",
    "consume_skb": "skb:consume_skb",
    "kfree_skb": "skb:kfree_skb",
}


def method_text(time_every: int, timed: int, typed: bool, events: Sequence[tuple[str, str]] = EVENTS) -> str:
    """What the tracepoint backend measured: counts and contexts of every datagram, latency of a sample."""
    sample = (
        "every datagram is timed" if time_every == 1 else f"1 datagram in {time_every} is timed (at random, per CPU)"
    )
    attached = {event for event, _ in events}
    released = ", ".join(name for event, name in TRACEPOINT_NAMES.items() if event in attached)
    unattached = (
        ""
        if "consume_skb" in attached
        else " (skb:consume_skb not attached: on this path no charged skb is freed through it)"
    )
    return (
        f"exact counts and contexts from {'typed (tp_btf)' if typed else 'raw'} tracepoints (bcc, header-free, skb "
        f"offsets from kernel BTF, fields read {'with plain loads' if typed else 'with bpf_probe_read_kernel'}): a datagram "
        f"is queued at net:net_dev_queue and released at the first of {released}{unattached} with skb->destructor "
        "still sock_wfree and skb->sk a socket of the sender; inline is a release in a thread that queued the "
        f"sender's datagrams; latency (percentiles, histograms, max) is sampled: {sample}, {timed} timed in this run, "
        "from net_dev_queue to that release event (see interval)"
    )


PROGRAM = (
    r"""
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define NCTX 4
#define SUB 3
#define NB (64 << SUB)
#define ETH_P_IP_BE 0x0008    /* htons(0x0800) read as a little-endian u16 */
#define ETH_P_IPV6_BE 0xDD86  /* htons(0x86DD) */
#define NEXTHDR_FRAGMENT 44

/* Run state, one array slot (one inlined lookup gives all of it).  Written by user space at begin
   (tgid, dev, ino, frag_check: may the run's datagrams be fragmented; the rest 0) and learned by the program: the sender's tgid in the initial pid
   namespace, its sockets and sending threads (the first of each here, the others in a hash with a
   count), whether a fragment or a GRO entry of ours was seen, and the timed skbs in flight. */
struct conf { u64 tgid; u64 dev; u64 ino; u64 frag_check; u64 root; u64 sk0; u64 nsocks; u64 tid0; u64 ntids;
              u64 frag_seen; u64 gro_seen; u64 inflight; };
BPF_ARRAY(cfg, struct conf, 1);
BPF_HASH(socks, u64, u64, 256);
BPF_HASH(tids, u64, u64, 1024);
/* the timed datagrams only (one in TIME_EVERY): charge time, by skb address */
struct charge { u64 ts; };
BPF_HASH(charged, u64, struct charge, 65536);
/* skbs counted at their GRO entry and not merged there: their own release event comes later */
BPF_HASH(gro_counted, u64, u64, 16384);
BPF_PERCPU_ARRAY(hist, u64, NCTX * NB);  /* net_dev_queue -> release of the timed datagrams, per context */
/* per ctx: datagrams released, max_ns (timed ones); then charges, sock_wfree calls, released at GRO entry, stacks
   lost, released at netif_receive_skb, consume_skb, kfree_skb */
#define S_CHARGES (NCTX * 2)
#define S_CALLS (NCTX * 2 + 1)
#define S_GRO (NCTX * 2 + 2)
#define S_LOST (NCTX * 2 + 3)
#define S_AT_RX (NCTX * 2 + 4)
#define S_AT_CONSUME (NCTX * 2 + 5)
#define S_AT_KFREE (NCTX * 2 + 6)
#define NSTATS (NCTX * 2 + 7)
/* Per CPU, in one slot: a program looks its counters up once (before 6.10 each lookup of a per-CPU array is
   a helper call; the stack sampler's and the timed datagrams' histogram are lookups of their own).  The counters above, the sampler's state (an LCG), the skb at GRO entry until its exit event. */
struct pcpu { u64 stats[NSTATS]; u64 rng; u64 gro_pending; };
BPF_PERCPU_ARRAY(pcpu, struct pcpu, 1);
#if STACK_EVERY
"""
    + bpfc.STACK_MAPS
    + r"""#endif

"""
    + bpfc.LOG2_BUCKET
    + r"""
static __always_inline struct pcpu *mine(void)
{
    u32 zero = 0;
    return pcpu.lookup(&zero);
}

static __always_inline void bump(u32 slot)  /* where no pcpu is at hand (count_stack's S_LOST) */
{
    struct pcpu *p = mine();
    if (p && slot < NSTATS)
        p->stats[slot]++;
}

static __always_inline u64 read_u64(u64 addr)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u16 read_u16(u64 addr)
{
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline struct conf *conf(void)
{
    u32 zero = 0;
    return cfg.lookup(&zero);
}

/* the sender's own task?  Learns its initial-namespace tgid the first time (then no pid namespace lookup) */
static __always_inline int is_sender(struct conf *f, u64 id)
{
    if (f->root)
        return (id >> 32) == f->root;
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(f->dev, f->ino, &ns, sizeof(ns)) || ns.tgid != f->tgid)
        return 0;
    f->root = id >> 32;
    return 1;
}

/* The skb's fields.  Typed (tp_btf): the skb is a pointer the verifier knows as struct sk_buff, so a
   field is a plain load, checked against the kernel's BTF.  Raw: bpf_probe_read_kernel, so the charge
   reads all it needs in one call (a read's fixed cost outweighs its bytes, and the sender's skb is in
   its cache): sk .. head, 176 bytes on 6.18. */
struct skbf { u64 sk; u64 destructor; u64 head; u16 protocol; u16 network_header; };
#ifdef TYPED
#define SKB_U64(skb, off) (*(volatile u64 *)((skb) + (off)))
#define SKB_U16(skb, off) (*(volatile u16 *)((skb) + (off)))
static __always_inline void skb_fields(u64 skb, struct skbf *s)
{
    s->sk = SKB_U64(skb, OFF_SK);
    s->destructor = SKB_U64(skb, OFF_DESTRUCTOR);
    s->head = SKB_U64(skb, OFF_HEAD);
    s->protocol = SKB_U16(skb, OFF_PROTOCOL);
    s->network_header = SKB_U16(skb, OFF_NETWORK_HEADER);
}
#else
#define SKB_U64(skb, off) read_u64((skb) + (off))
struct skb_all { u8 b[SKB_SPAN]; };
#define AT64(w, off) (*(u64 *)&(w).b[(off) - SKB_BASE])
#define AT16(w, off) (*(u16 *)&(w).b[(off) - SKB_BASE])
static __always_inline void skb_fields(u64 skb, struct skbf *s)
{
    struct skb_all w;
    bpf_probe_read_kernel(&w, sizeof(w), (void *)(skb + SKB_BASE));
    s->sk = AT64(w, OFF_SK);
    s->destructor = AT64(w, OFF_DESTRUCTOR);
    s->head = AT64(w, OFF_HEAD);
    s->protocol = AT16(w, OFF_PROTOCOL);
    s->network_header = AT16(w, OFF_NETWORK_HEADER);
}
#endif

/* A fragment other than the first (IPv4 offset, or an IPv6 fragment header right after the fixed
   header with a non-zero offset): its datagram is counted at its first fragment.  Notes that a
   fragment was seen, so the release side checks only then. */
static __always_inline int later_fragment(struct skbf *w, struct conf *f)
{
    u16 proto = w->protocol;
    if (proto != ETH_P_IP_BE && proto != ETH_P_IPV6_BE)
        return 0;
    u64 nh = w->head + w->network_header;
    u64 ip = read_u64(nh);  /* the packet's bytes: a helper read in both modes.  IPv4: frag_off in bytes 6-7; IPv6: nexthdr in byte 6 */
    u16 frag;
    if (proto == ETH_P_IP_BE) {
        frag = (u16)(ip >> 48);
        frag = (frag & 0xff) << 8 | frag >> 8;
        if (!(frag & 0x3fff))
            return 0;  /* neither more fragments nor an offset: not fragmented */
        frag &= 0x1fff;
    } else {
        if (((ip >> 48) & 0xff) != NEXTHDR_FRAGMENT)
            return 0;
        frag = read_u16(nh + 40 + 2);
        frag = ((frag & 0xff) << 8 | frag >> 8) & 0xfff8;
    }
    if (!f->frag_seen)
        f->frag_seen = 1;
    return frag != 0;
}

/* a socket / thread of the sender seen for the first time: remembered (the first also in the conf) */
static __always_inline void learn_sock(struct conf *f, u64 sk)
{
    u64 one = 1;
    if (socks.lookup(&sk) || socks.insert(&sk, &one))
        return;
    __sync_fetch_and_add(&f->nsocks, 1);
    if (!f->sk0)
        f->sk0 = sk;
}

static __always_inline void learn_tid(struct conf *f, u64 tid)
{
    u64 one = 1;
    if (tids.lookup(&tid) || tids.insert(&tid, &one))
        return;
    __sync_fetch_and_add(&f->ntids, 1);
    if (!f->tid0)
        f->tid0 = tid;
}

/* one in TIME_EVERY, at random (an LCG per CPU: no aliasing with a periodic send pattern) */
static __always_inline int sampled(struct pcpu *p)
{
#if TIME_EVERY > 1
    if (!p->rng)
        p->rng = bpf_get_prandom_u32() | 1;  /* each CPU and run its own sequence */
    p->rng = p->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (p->rng >> 40) % TIME_EVERY == 0;
#else
    return 1;
#endif
}

/* net:net_dev_queue(struct sk_buff *skb): in the sending task, before any qdisc */
int on_queue(struct bpf_raw_tracepoint_args *ctx)
{
#if STAGE == 0
    return 0;
#endif
    struct conf *f = conf();
    if (!f || !f->tgid)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (!is_sender(f, id))
        return 0;
    u64 skb = ctx->args[0];
    struct skbf w;
    skb_fields(skb, &w);
    if (w.destructor != SOCK_WFREE)
        return 0;  /* not charged to a socket */
#if STAGE == 1
    return 0;
#endif
    if (f->frag_check && later_fragment(&w, f))  /* the IP header: a helper read, only where fragments may be */
        return 0;
    u64 sk = w.sk;
    if (sk != f->sk0)
        learn_sock(f, sk);
    if ((u32)id != f->tid0)
        learn_tid(f, (u32)id);
    struct pcpu *p = mine();
    if (!p)
        return 0;
    p->stats[S_CHARGES]++;
    if (!sampled(p))
        return 0;
    struct charge c = {};
    c.ts = bpf_ktime_get_ns();
    struct charge *old = charged.lookup(&skb);
    if (old)
        *old = c;  /* an entry left by an skb at this address that we never saw released */
    else if (charged.insert(&skb, &c) == 0)
        __sync_fetch_and_add(&f->inflight, 1);
    return 0;
}

"""
    + bpfc.COUNT_STACK
    + r"""
/* one datagram released: its context (the current task against the sender's threads), and its
   latency if it was timed */
static __always_inline void release(void *ctx, struct conf *f, struct pcpu *p, u64 skb)
{
    u64 tid = (u32)bpf_get_current_pid_tgid();
    u32 cx = 0;
    if (tid != f->tid0 && (f->ntids < 2 || !tids.lookup(&tid))) {  /* only then is the task's name needed */
        char comm[16] = {};
        bpf_get_current_comm(&comm, sizeof(comm));
        cx = 1;
        if (comm[0] == 'k' && comm[1] == 's' && comm[2] == 'o' && comm[3] == 'f' && comm[4] == 't' &&
            comm[5] == 'i' && comm[6] == 'r' && comm[7] == 'q')
            cx = 2;
        else if (comm[0] == 'n' && comm[1] == 'a' && comm[2] == 'p' && comm[3] == 'i' && comm[4] == '/')
            cx = 3;
    }
    p->stats[cx * 2]++;
    if (f->inflight) {  /* some timed datagram is in flight: is it this one? */
        struct charge *c = charged.lookup(&skb);
        u64 ts = c ? c->ts : 0;
        if (c && charged.delete(&skb) == 0) {  /* the entry is ours to retire: inflight stays exact */
            u64 d = bpf_ktime_get_ns() - ts;
            __sync_fetch_and_add(&f->inflight, -1);
            u32 hidx = cx * NB + udps_bucket(d);
            u64 *h = hist.lookup(&hidx);
            if (h)
                (*h)++;
            if (d > p->stats[cx * 2 + 1])
                p->stats[cx * 2 + 1] = d;
        }
    }
    count_stack(ctx, cx);
}

/* the sender's skb, still charged (destructor sock_wfree, one of the sender's sockets), not a later fragment? */
static __always_inline int ours(struct conf *f, u64 skb)
{
    if (SKB_U64(skb, OFF_DESTRUCTOR) != SOCK_WFREE)
        return 0;  /* most skbs: one 8-byte read (a wider one costs 65 ns more on a receiver's CPU: a cold line) */
    u64 sk = SKB_U64(skb, OFF_SK);
    if (sk != f->sk0 && (f->nsocks < 2 || !socks.lookup(&sk)))
        return 0;
    if (!f->frag_seen)
        return 1;
    struct skbf w;
    skb_fields(skb, &w);
    return !later_fragment(&w, f);
}

/* net:netif_receive_skb, skb:consume_skb, skb:kfree_skb: args[0] is the skb; sock_wfree follows */
static __always_inline int do_release(struct bpf_raw_tracepoint_args *ctx, u32 at)
{
#if STAGE == 0
    return 0;
#endif
    struct conf *f = conf();
    if (!f || !f->sk0)
        return 0;  /* nothing of the sender's charged yet */
    u64 skb = ctx->args[0];
#if STAGE == 1
    return SKB_U64(skb, OFF_DESTRUCTOR) == 0;
#endif
    if (!ours(f, skb))
        return 0;
    struct pcpu *p = mine();
    if (!p)
        return 0;
    p->stats[S_CALLS]++;
    if (f->gro_seen) {  /* counted already at its GRO entry? */
        if (p->gro_pending == skb) {  /* released inside napi_gro_receive (GRO_NORMAL batch, consumed) */
            p->gro_pending = 0;
            return 0;
        }
        if (gro_counted.delete(&skb) == 0)
            return 0;
    }
    if (at < NSTATS)
        p->stats[at]++;
    release(ctx, f, p, skb);
    return 0;
}

/* One program per event: a tracing program does not run nested in itself on a CPU (the kernel skips
   it and counts a miss), and a softirq's netif_receive_skb may interrupt a task's consume_skb. */
int on_rx(struct bpf_raw_tracepoint_args *ctx) { return do_release(ctx, S_AT_RX); }
int on_consume(struct bpf_raw_tracepoint_args *ctx) { return do_release(ctx, S_AT_CONSUME); }
int on_kfree(struct bpf_raw_tracepoint_args *ctx) { return do_release(ctx, S_AT_KFREE); }

/* net:napi_gro_receive_entry(const struct sk_buff *skb): once per skb entering GRO */
int on_gro_entry(struct bpf_raw_tracepoint_args *ctx)
{
#if STAGE == 0
    return 0;
#endif
    struct pcpu *p = mine();
    if (!p)
        return 0;
    p->gro_pending = 0;
    struct conf *f = conf();
    if (!f || !f->sk0)
        return 0;
    u64 skb = ctx->args[0];
#if STAGE == 1
    return SKB_U64(skb, OFF_DESTRUCTOR) == 0;
#endif
    if (!ours(f, skb))
        return 0;
    if (!f->gro_seen)
        f->gro_seen = 1;
    release(ctx, f, p, skb);
    p->stats[S_GRO]++;
    p->gro_pending = skb;
    return 0;
}

/* net:napi_gro_receive_exit(int ret): merged (GRO_MERGED 0, GRO_MERGED_FREE 1), the charge went to the
   aggregate; otherwise the skb's own release event is still to come, and must not count it again */
int on_gro_exit(struct bpf_raw_tracepoint_args *ctx)
{
    struct pcpu *p = mine();
    if (!p || !p->gro_pending)
        return 0;
    u64 skb = p->gro_pending;
    p->gro_pending = 0;
    int ret = (int)ctx->args[0];
    if (ret != 0 && ret != 1) {
        u64 one = 1;
        gro_counted.update(&skb, &one);
    }
    return 0;
}
"""
)


def tracepoint_unavailable() -> str | None:
    """None if the tracepoint backend may work here (bcc, kernel BTF, root), else why not and the fix."""
    try:
        import bcc
    except ImportError:
        return "bcc is not importable: apt-get install python3-bpfcc and use a venv made with --system-site-packages"
    if not hasattr(bcc, "BPF"):
        return "the 'bcc' module found is not the BPF Compiler Collection (the PyPI 'bcc' is unrelated): pip uninstall bcc; apt-get install python3-bpfcc"
    if not BTF_PATH.exists():
        return (
            f"this kernel ({os.uname().release}) has no BTF at {BTF_PATH} (CONFIG_DEBUG_INFO_BTF unset), so the skb's "
            "fields cannot be located: use --udpsend-backend timestamp, or a kernel with BTF via --udpsend-kernel"
        )
    if os.geteuid() != 0:
        return "loading eBPF programs needs root: run the tests as root"
    return None


BPF_OBJ_GET_INFO_BY_FD = 15


def recursion_misses(fds: Sequence[int], offset: int) -> int | None:
    """Events the kernel skipped for these programs (one ran nested in itself on a CPU):
    ``bpf_prog_info.recursion_misses`` at ``offset`` (from BTF), summed; None if unreadable."""
    total = 0
    for fd in fds:
        info = ctypes.create_string_buffer(offset + 8)
        attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, offset + 8, ctypes.addressof(info)), 16)
        try:
            tploader.bpf_call(BPF_OBJ_GET_INFO_BY_FD, attr)
        except OSError:
            return None
        if struct.unpack_from("<I", attr.raw, 4)[0] < offset + 8:  # an older kernel's shorter bpf_prog_info
            return None
        total += struct.unpack_from("<Q", info.raw, offset)[0]
    return total


def read_spans(offsets: Mapping[str, int]) -> list[str]:
    """cflags for the charge's one read of the skb: the bytes from the first to the last field it
    needs; ValueError if they lie too far apart."""
    size = {"sk": 8, "destructor": 8, "head": 8, "protocol": 2, "network_header": 2}
    base = min(offsets[f] for f in SKB_FIELDS)
    length = max(offsets[f] + size[f] for f in SKB_FIELDS) - base
    if length > 256:
        raise ValueError(f"sk_buff's {', '.join(SKB_FIELDS)} span {length} bytes, more than the program reads at once")
    return [f"-DSKB_BASE={base}", f"-DSKB_SPAN={length}"]


def netem_orphans(path: TopologySpec | None) -> str | None:
    """None where a tracepoint sees the release, else the sentence why not (netem that orphans at enqueue)."""
    qdisc = None if path is None else path.qdisc
    if qdisc is None or qdisc.kind != "netem":
        return None
    early = [key for key in NETEM_ORPHANS if qdisc.params.get(key)]
    if not early:
        return None
    return (
        f"sock_wfree not measurable from tracepoints under '{qdisc.text}': netem with {'/'.join(early)} orphans each "
        "skb at enqueue (skb_orphan_partial() in netem_enqueue()), where no tracepoint fires; use --udpsend-backend bpf "
        "(the kernel lane has it) for this path"
    )


def per_cpu_stats(table: Any) -> list[int]:
    """The counters of every CPU's ``struct pcpu``, added up (a context's max_ns: the largest)."""
    cpus = table[table.Key(0)]
    return [
        max(c.stats[i] for c in cpus) if i % 2 and i < len(CONTEXTS) * 2 else sum(c.stats[i] for c in cpus)
        for i in range(NSTATS)
    ]


def released_at(stats: Sequence[int], events: Sequence[tuple[str, str]]) -> ReleasedAt:
    """Datagrams counted released at each attached event (GRO entry: always attached)."""
    attached = {event for event, _ in events}
    at: ReleasedAt = {"gro_entry": stats[S_GRO]}
    if "netif_receive_skb" in attached:
        at["netif_receive_skb"] = stats[S_AT_RX]
    if "consume_skb" in attached:
        at["consume_skb"] = stats[S_AT_CONSUME]
    if "kfree_skb" in attached:
        at["kfree_skb"] = stats[S_AT_KFREE]
    return at


IP_UDP_HEADERS = 40 + 8  # the larger of IPv4's and IPv6's fixed header, and UDP's


def may_fragment(path: TopologySpec | None, largest: int | None) -> bool:
    """May the run's datagrams (UDP payloads of at most ``largest`` bytes) be fragmented on ``path``?  Only
    then does the charge program read each skb's IP header (a helper call: about a quarter of its time on
    the 6.18 host) to count a fragmented datagram once.  Not known (either None): yes.  A wrong no shows as
    more datagrams released than sent (the cross-check)."""
    return path is None or largest is None or largest + IP_UDP_HEADERS > path.mtu


def _release_before(release: str, major: int, minor: int) -> bool:
    """Is the kernel ``release`` ("6.1.0-56-amd64") older than ``major.minor``?  Unparsable: yes."""
    parts = release.split(".", 2)
    try:
        return (int(parts[0]), int("".join(itertools.takewhile(str.isdigit, parts[1])))) < (major, minor)
    except (IndexError, ValueError):
        return True


def attached_events(path: TopologySpec | None, release: str | None = None) -> tuple[tuple[str, str], ...]:
    """The events a run on ``path`` attaches.  ``skb:consume_skb`` fires for every skb the host frees, on
    plain veth once per datagram (the receiver's free, long after ``ip_rcv_core()`` released the charge), at
    about 2 % of the sender's pps on the 6.18 host (ci/bench_tpprobe.py).  So it is attached only where a
    charged skb can be freed through it: a NIC's TX completion; netem (a cloned skb it corrupts, when it
    also duplicates, is copied and the charged original consumed); veth's NAPI ring (gro, threaded_napi)
    before 6.3, where a full ring's drop (``dev_kfree_skb_any()``) was reported as a consume unless the
    kernel has the fix backported (Debian's 6.1.0-56 has: its drops came at kfree_skb in the lane); a path
    not known.  On veth otherwise the charge ends at the receiver's ``netif_receive_skb``, GRO entry, or a drop
    (``kfree_skb``), all attached; a release the detached event would have seen shows as fewer datagrams
    released than sent (the cross-check)."""
    if path is None or path.is_nic or (path.qdisc is not None and path.qdisc.kind == "netem"):
        return EVENTS
    if (path.gro or path.threaded_napi) and _release_before(release or os.uname().release, 6, 3):
        return EVENTS
    return tuple(event for event in EVENTS if event != CONSUME_EVENT)


class TracepointProbe:
    backend: Backend = "tracepoint"
    receiver_timestamps = False
    method = method_text(TIME_EVERY, 0, typed=True)  # until build() knows which form loaded

    def __init__(
        self, reason: str, time_every: int = TIME_EVERY, stack_every: int = STACK_EVERY, stage: str = "full"
    ) -> None:
        self.reason = reason
        # Other than the defaults only in ci/bench_tpprobe.py, to find where the cost is: time_every 1 times
        # every datagram, stack_every 0 takes no stacks, stage "attached"/"filter" stops the programs early,
        # and ``only`` attaches those events alone.
        self.time_every = time_every
        self.stack_every = stack_every
        self.stage = STAGES[stage]
        self.only: tuple[tuple[str, str], ...] | None = None
        self.events: tuple[tuple[str, str], ...] = EVENTS  # attached by begin(): set per run by prepare()
        self.frag_check = True  # may a datagram be fragmented (then the charge reads its IP header): per run
        self.offsets: dict[str, int] = {}
        self.unavailable: str | None = None
        self._bpf: Any = None
        self._error: PrivilegeError | None = None  # a failed build, kept: never retried
        self._attached = False
        self._fds: list[int] = []
        self._typed: tploader.TypedPrograms | None = None  # None: raw tracepoints through bcc
        self.typed_refused: str | None = None  # why the typed programs did not load, if they did not
        self._misses_at_begin: int | None = None
        self._misses_offset: int | None = None  # of recursion_misses in bpf_prog_info (kernel BTF)

    def build(self) -> None:
        """Locate the skb fields, compile and load once per session; PrivilegeError (the same one every time) if it cannot."""
        if self._error is not None:
            raise self._error
        if self._bpf is not None:
            return
        release = os.uname().release
        try:
            self._bpf = self._load()
        except PrivilegeError as exc:
            self._error = exc
            raise
        except Exception as exc:
            self._error = PrivilegeError(f"the tracepoint probe could not be loaded on {release}: {exc}")
            raise self._error from None

    def _load(self) -> Any:
        from bcc import BPF

        release = os.uname().release
        try:
            self.offsets = btf_offsets("sk_buff", SKB_FIELDS)
            with contextlib.suppress(KeyError):  # before 5.12: not counted
                self._misses_offset = btf_offsets("bpf_prog_info", ("recursion_misses",))["recursion_misses"]
        except (OSError, ValueError, KeyError) as exc:
            raise PrivilegeError(
                f"the skb's fields could not be located in {BTF_PATH} on {release} ({exc}); "
                "use --udpsend-backend timestamp"
            ) from None
        wfree = BPF.ksymname(b"sock_wfree")
        if wfree in (-1, 0, None):
            raise PrivilegeError(
                "sock_wfree's address is hidden in /proc/kallsyms (kernel.kptr_restrict): run as root with "
                "kernel.kptr_restrict at 0 or 1, or use --udpsend-backend timestamp"
            )
        cflags = [f"-DOFF_{name.upper()}={off}" for name, off in self.offsets.items()] + [
            f"-DSOCK_WFREE={wfree}ULL",
            f"-DTIME_EVERY={self.time_every}",
            f"-DSTACK_EVERY={self.stack_every}",
            f"-DSTAGE={self.stage}",
        ]
        self.typed_refused = None
        try:
            return self._load_typed(cflags)
        except tploader.LoadError as exc:  # the same compiler as the raw form's: a mistake of ours, not the kernel's
            raise PrivilegeError(
                f"the tracepoint probe could not be built on {release} ({exc}): {exc.detail}"
            ) from None
        except KeyError as exc:  # a kernel without the tracepoints' BTF types (before 5.5)
            self.typed_refused = str(exc.args[0])
        except OSError as exc:  # the kernel or its verifier said no: raw tracepoints read the same fields
            self.typed_refused = str(exc)
        try:  # loaded now, attached per run
            bpf = tploader.load(PROGRAM, [*cflags, *read_spans(self.offsets)], [fn for _, fn in EVENTS])
        except tploader.LoadError as exc:
            raise PrivilegeError(
                f"the tracepoint probe could not be built on {release} ({exc}): {exc.detail}"
            ) from None
        self._fds = [bpf.load_func(fn.encode(), BPF.RAW_TRACEPOINT).fd for _, fn in EVENTS]  # bcc's cache: the same fds
        self.method = method_text(self.time_every, 0, typed=False)
        return bpf

    def _load_typed(self, cflags: list[str]) -> Any:
        """The program as typed tracepoints (skb fields read with plain loads); KeyError or OSError where the
        kernel cannot take them."""
        ids = tploader.tracepoint_type_ids([event for event, _ in EVENTS])  # before a compile of seconds
        bpf = tploader.load(PROGRAM, [*cflags, "-DTYPED=1"])  # compiled, its maps made; nothing loaded
        try:
            self._typed = tploader.TypedPrograms(bpf, EVENTS, ids)
        except BaseException:
            bpf.cleanup()
            raise
        self._fds = list(self._typed.fds.values())
        self.method = method_text(self.time_every, 0, typed=True)
        return bpf

    def _set_attached(self, on: bool) -> None:
        if on == self._attached:
            return
        bpf = self._bpf
        if on:
            try:
                for event, fn in self.events:
                    if self._typed is not None:
                        self._typed.attach(event)
                    else:
                        bpf.attach_raw_tracepoint(tp=event.encode(), fn_name=fn.encode())
            except Exception:
                self._detach_all()
                raise
        else:
            self._detach_all()
        self._attached = on

    def _detach_all(self) -> None:
        if self._typed is not None:
            for event, _ in EVENTS:
                self._typed.detach(event)
            return
        bpf = self._bpf
        for event, _ in EVENTS:
            if event.encode() in bpf.raw_tracepoint_fds:
                bpf.detach_raw_tracepoint(tp=event.encode())

    def prepare(self, sysctls: Sysctls, path: TopologySpec | None = None, largest: int | None = None) -> None:
        self.build()  # outside the measured interval
        self.unavailable = netem_orphans(path)
        self.events = self.only if self.only is not None else attached_events(path)
        self.frag_check = may_fragment(path, largest)

    def begin(self, sock_fd: int, tgid: int) -> None:
        """Arm for one run of ``tgid`` (as numbered in this process's pid namespace) and attach."""
        self.build()
        bpf = self._bpf
        tables = ("hist", "pcpu", "charged", "gro_counted", "socks", "tids")
        for table in tables + (("stack_counts", "stack_seen") if self.stack_every else ()):
            bpf[table.encode()].clear()
        if self.stack_every:  # bcc's StackTrace.clear() does nothing: delete the ids one by one
            stacks = bpf[b"stacks"]
            for key in list(stacks.keys()):
                del stacks[key]
        pidns = os.stat("/proc/self/ns/pid")
        cfg = bpf[b"cfg"]
        conf = cfg.Leaf()  # all zero: nothing learned yet
        conf.dev, conf.ino, conf.tgid, conf.frag_check = pidns.st_dev, pidns.st_ino, tgid, int(self.frag_check)
        cfg[cfg.Key(0)] = conf
        self._misses_at_begin = self._misses()
        try:
            self._set_attached(True)
        except Exception as exc:
            cfg[cfg.Key(0)] = cfg.Leaf()
            raise PrivilegeError(f"the tracepoint probe could not be attached on {os.uname().release}: {exc}") from None

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> Wfree:
        self.build()
        bpf = self._bpf
        cfg = bpf[b"cfg"]
        cfg[cfg.Key(0)] = cfg.Leaf()  # disarmed: no tgid, no socket
        self._set_attached(False)
        misses = self._misses()
        missed = None if misses is None or self._misses_at_begin is None else misses - self._misses_at_begin
        if self.unavailable is not None:
            return not_measured(self.backend, self.unavailable)
        hist = [sum(v) for v in bpf[b"hist"].values()]  # per-CPU slots: add them up
        stats = per_cpu_stats(bpf[b"pcpu"])
        per_ctx = {name: hist[i * NBUCKETS : (i + 1) * NBUCKETS] for i, name in enumerate(CONTEXTS)}
        total = [sum(col) for col in zip(*per_ctx.values())]
        contexts = {name: stats[i * 2] for i, name in enumerate(CONTEXTS)}
        count = sum(contexts.values())
        max_ns = max(stats[i * 2 + 1] for i in range(len(CONTEXTS)))
        timed = sum(total)
        stacks = self._stacks(bpf, contexts, stats[S_LOST]) if self.stack_every else {}
        return {
            "backend": self.backend,
            "method": method_text(self.time_every, timed, self._typed is not None, self.events),
            "count": count,
            "calls": stats[S_CALLS],
            "released_at": released_at(stats, self.events),
            "charges": stats[S_CHARGES],
            "p50_us": percentile_us(total, 0.50),
            "p90_us": percentile_us(total, 0.90),
            "p99_us": percentile_us(total, 0.99),
            "max_us": round(max_ns / 1000, 2) if timed else None,
            "timed": timed,
            "time_every": self.time_every,
            "missed_events": missed,
            "interval": INTERVAL,
            "contexts": contexts,
            "histogram": {"edges_us": HIST_EDGES_US, "counts": rebin(total)},
            "histograms": {n: {"edges_us": HIST_EDGES_US, "counts": rebin(c)} for n, c in per_ctx.items() if sum(c)},
            "context_p99_us": {n: percentile_us(c, 0.99) for n, c in per_ctx.items() if sum(c)},
            **stacks,
        }

    def _misses(self) -> int | None:
        return None if self._misses_offset is None else recursion_misses(self._fds, self._misses_offset)

    def _stacks(self, bpf: Any, contexts: Mapping[ReleaseContext, int], lost: int) -> Wfree:
        """The most frequent release stacks per context, symbolized from /proc/kallsyms once, at the end
        (the bpf backend's shape: ``stacks``, ``stacks_lost``, ``stacks_sampled``, ``stack_every``)."""
        from bcc import BPF

        counts = {(CONTEXTS[k.cx], int(k.id)): sum(v) for k, v in bpf[b"stack_counts"].items() if k.cx < len(CONTEXTS)}
        table = bpf[b"stacks"]

        def frames_of(stack_id: int) -> list[str]:
            try:  # not bcc's walk(): it assumes 127 frames
                ips = table[table.Key(stack_id)].ip
            except KeyError:
                return []
            return [BPF.ksym(addr).decode(errors="replace") for addr in itertools.takewhile(bool, ips)]

        return {
            "stacks": top_stacks(counts, frames_of, contexts),
            "stacks_lost": lost,
            "stacks_sampled": sum(counts.values()) + lost,
            "stack_every": self.stack_every,
        }

    def close(self) -> None:
        if self._typed is not None:
            self._typed.close()  # links and programs: bcc does not know them
            self._typed = None
        if self._bpf is not None:
            self._attached = False  # cleanup() detaches what is attached
            self._bpf.cleanup()
            self._bpf = None

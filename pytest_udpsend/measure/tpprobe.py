"""The tracepoint sock_wfree probe: where kprobes and fentry are not allowed (hardened kernels,
microVM guests; this project's 6.18 CI host: no kprobes, fentry refused with EPERM), from raw
tracepoints alone.

Loader: bcc, with a header-free program.  bcc only looks for kernel headers to give its own
helpers a few basic types and macros; the program itself uses no kernel struct.  So bcc is
pointed (``BCC_KERNEL_SOURCE``, set only around the compile) at a stub "kernel tree" of eight
tiny files written here (``STUB_HEADERS``: integer types, a version macro, PAGE_SIZE), never at
another kernel's headers, whose struct layouts differ.  The few skb fields read (``sk``,
``destructor``, ``head``, ``network_header``, ``protocol``) are read with
``bpf_probe_read_kernel`` at byte offsets taken from this kernel's own BTF
(``/sys/kernel/btf/vmlinux``, parsed here: ``btf_offsets``), and ``sock_wfree``'s address comes
from kallsyms.  Raw tracepoints attach by name without tracefs (not mounted on the host) and
hand the program the tracepoint's C arguments (``args[0]`` is the skb for every event used, on
6.1 and 6.18 alike).  Why not the others: bpftrace is not installed on the host and 0.17 cannot
express raw tracepoints; libbpf CO-RE needs a clang BPF compiler, which Debian's bcc carries
inside libbcc but the host has not as a program.  bcc is already what the bpf backend uses
(Debian python3-bpfcc, in the CI setup and the lane guests).

What it measures, per datagram of the sender's process (tgid, as its pid namespace numbers it):

* **charge side**: ``net:net_dev_queue`` in the sender's task, for skbs whose destructor is
  ``sock_wfree`` (charged to a socket); an IPv4 fragment other than the first is skipped, so a
  fragmented datagram counts once (its first fragment's release, as with the bpf backend).
* **release side**, the first of: ``net:netif_receive_skb`` (veth: the receiver's
  ``ip_rcv_core()`` orphans the skb right after, in the same call chain), ``net:napi_gro_receive_entry``
  (GRO: a merged datagram's charge moves to the aggregate there; one event per datagram),
  ``skb:consume_skb`` / ``skb:kfree_skb`` (NIC TX completion, drops: both fire before
  ``skb_release_all()`` runs the destructor).  Each requires the skb's destructor still
  ``sock_wfree`` and its ``sk`` the one it was queued with.  ``calls`` counts the skbs that reach
  one of these with ``sock_wfree`` still set (the ``sock_wfree`` calls: one per GRO aggregate).
* **context**: the task current at the release event, as the bpf backend classifies it.
* **latency**: the interval from ``net:net_dev_queue`` to the release event, per datagram
  (``wfree["interval"]`` says so in the result).  It includes qdisc waits, the veth crossing and
  the backlog/NAPI wait; it misses the time from the charge (``skb_set_owner_w`` in
  ``ip_make_skb``/``__ip_append_data``) to ``__dev_queue_xmit`` (the IP and neighbour output
  path, a few microseconds) and the few instructions between the release tracepoint and
  ``sock_wfree``.  So it is lower than the bpf backend's charge -> sock_wfree figures: compare
  counts and contexts across backends, not latencies.  (The send syscall's entry as a second,
  upper end was tried: the ``sys_enter`` tracepoint puts every syscall of every task on the
  traced slow path, too costly for a backend.)

Counting and histograms happen in the kernel (per-CPU arrays, no atomics); only these summaries
are read, at ``end``.  Attached only between ``begin`` and ``end`` of a run that measures.

Where it cannot see the release: netem with a delay, jitter or rate orphans each skb at enqueue
(``skb_orphan_partial()``, no tracepoint): the result says so instead of giving figures.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.measure.bpfprobe import CONTEXTS, NBUCKETS
from pytest_udpsend.measure.histogram import HIST_EDGES_US, percentile_us, rebin
from pytest_udpsend.measure.wfree import not_measured

if TYPE_CHECKING:
    from pytest_udpsend.host.topology import TopologySpec

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
SKB_FIELDS = ("sk", "destructor", "head", "network_header", "protocol")
NETEM_ORPHANS = ("delay", "jitter", "rate")  # netem_enqueue(): skb_orphan_partial() when any is set
# slots of the C's stats array after the per-context pairs (count, max_ns)
S_CHARGES, S_CALLS, S_GRO = (len(CONTEXTS) * 2 + i for i in range(3))
CHARGE_EVENT = ("net_dev_queue", "on_queue")
RELEASE_EVENTS = (("netif_receive_skb", "on_release"), ("consume_skb", "on_release"), ("kfree_skb", "on_release"),
                  ("napi_gro_receive_entry", "on_gro_entry"), ("napi_gro_receive_exit", "on_gro_exit"))  # fmt: skip
EVENTS = (CHARGE_EVENT, *RELEASE_EVENTS)

METHOD = ("exact counts and contexts from raw tracepoints (bcc, header-free, skb offsets from kernel BTF): a datagram "
          "is queued at net:net_dev_queue and released at the first of net:netif_receive_skb, "
          "net:napi_gro_receive_entry, skb:consume_skb, skb:kfree_skb with skb->destructor still sock_wfree; latency "
          "is the interval from net_dev_queue to that release event (see interval)")  # fmt: skip

INTERVAL = {"from": "net:net_dev_queue (the sender's __dev_queue_xmit, before any qdisc)",
            "to": "the release event (net:netif_receive_skb, net:napi_gro_receive_entry, skb:consume_skb, skb:kfree_skb)",
            "includes": "qdisc waits, the link crossing, backlog and NAPI waits, TX completion",
            "misses": "charge (skb_set_owner_w) -> __dev_queue_xmit: the IP and neighbour output path, a few us; "
                      "release event -> sock_wfree: a few instructions"}  # fmt: skip

# The stub "kernel tree" bcc compiles against: what its own helpers include, and nothing of a kernel's structs.
STUB_HEADERS = {
    "include/linux/kconfig.h": "#define CONFIG_BPF_SYSCALL 1\n",
    "include/linux/types.h": """#ifndef _UDPSEND_STUB_TYPES_H
#define _UDPSEND_STUB_TYPES_H
typedef unsigned char __u8; typedef signed char __s8; typedef unsigned short __u16; typedef short __s16;
typedef unsigned int __u32; typedef int __s32; typedef unsigned long long __u64; typedef long long __s64;
typedef __u8 u8; typedef __s8 s8; typedef __u16 u16; typedef __s16 s16;
typedef __u32 u32; typedef __s32 s32; typedef __u64 u64; typedef __s64 s64;
typedef __u16 __be16; typedef __u32 __be32; typedef __u64 __be64; typedef __u16 __le16; typedef __u32 __le32;
typedef __u64 __le64; typedef __u16 __sum16; typedef __u32 __wsum;
typedef __u64 __attribute__((aligned(8))) __aligned_u64;
typedef _Bool bool;
typedef unsigned long uintptr_t; typedef long intptr_t; typedef unsigned long size_t; typedef long ssize_t;
#define true 1
#define false 0
#endif
""",
    "include/linux/version.h": "#define LINUX_VERSION_CODE 0\n#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + (c))\n",
    "include/linux/log2.h": "",
    "include/linux/bpf_common.h": "/* bcc's bpf.h includes it; its BPF_* instruction macros are not used here */\n",
    "include/uapi/linux/bpf.h": "/* the BPF uapi comes from bcc itself (/virtual/include/bcc/bpf.h) */\n",
    "include/uapi/linux/if_packet.h": "",
    "include/uapi/linux/if_ether.h": "",
    "arch/x86/include/asm/page.h": "#define PAGE_SIZE 4096\n",
}

PROGRAM = r"""
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define NCTX 4
#define SUB 3
#define NB (64 << SUB)
#define ETH_P_IP_BE 0x0008  /* htons(0x0800) read as a little-endian u16 */

struct charge { u64 ts; u64 sk; u32 tid; u32 released; };
BPF_TABLE(CHARGED_MAP, u64, struct charge, charged, 262144);
/* sender's tgid (0 = disarmed), dev and inode of its pid namespace, then its tgid in the initial
   namespace, learned at its first queued skb (then no pid namespace lookup per skb) */
BPF_ARRAY(cfg, u64, 4);
BPF_PERCPU_ARRAY(hist, u64, NCTX * NB);  /* net_dev_queue -> release, per context */
#define S_CHARGES (NCTX * 2)
#define S_CALLS (NCTX * 2 + 1)
#define S_GRO (NCTX * 2 + 2)
BPF_PERCPU_ARRAY(stats, u64, NCTX * 2 + 3);
BPF_PERCPU_ARRAY(gro_pending, u64, 1);

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
    u32 b = ((l - SUB + 1) << SUB) + (u32)((v >> (l - SUB)) & ((1 << SUB) - 1));
    return b < NB ? b : NB - 1;
}

static __always_inline void bump(u32 slot)
{
    u64 *n = stats.lookup(&slot);
    if (n)
        (*n)++;
}

static __always_inline void keep_max(u32 slot, u64 v)
{
    u64 *m = stats.lookup(&slot);
    if (m && v > *m)
        *m = v;
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

/* the sender's own task?  Learns its initial-namespace tgid the first time */
static __always_inline int is_sender(u64 id)
{
    u32 k_tgid = 0, k_dev = 1, k_ino = 2, k_root = 3;
    u64 *want = cfg.lookup(&k_tgid), *root = cfg.lookup(&k_root);
    if (!want || !root || *want == 0)
        return 0;
    if (*root)
        return (id >> 32) == *root;
    u64 *dev = cfg.lookup(&k_dev), *ino = cfg.lookup(&k_ino);
    if (!dev || !ino)
        return 0;
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(*dev, *ino, &ns, sizeof(ns)) || ns.tgid != *want)
        return 0;
    *root = id >> 32;
    return 1;
}

/* raw tracepoint net:net_dev_queue(struct sk_buff *skb): in the sending task, before any qdisc */
int on_queue(struct bpf_raw_tracepoint_args *ctx)
{
    u64 skb = ctx->args[0];
    u64 id = bpf_get_current_pid_tgid();
    if (!is_sender(id))
        return 0;
    if (read_u64(skb + OFF_DESTRUCTOR) != SOCK_WFREE)
        return 0;  /* not charged to a socket */
    if (read_u16(skb + OFF_PROTOCOL) == ETH_P_IP_BE) {  /* a later IPv4 fragment: its datagram counts once */
        u16 frag = read_u16(read_u64(skb + OFF_HEAD) + read_u16(skb + OFF_NETWORK_HEADER) + 6);
        if (((frag & 0xff) << 8 | frag >> 8) & 0x1fff)
            return 0;
    }
    struct charge c = {};
    c.ts = bpf_ktime_get_ns();
    c.tid = (u32)id;
    c.sk = read_u64(skb + OFF_SK);
    charged.update(&skb, &c);
    bump(S_CHARGES);
    return 0;
}

/* one datagram released: its latency and context (the task current now against the queuing thread) */
static __always_inline void release(struct charge *c)
{
    u64 d = bpf_ktime_get_ns() - c->ts;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 cx = 0;
    if (tid != c->tid) {
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
    keep_max(cx * 2 + 1, d);
}

/* our skb, still charged (destructor sock_wfree, the sk it was queued with)? */
static __always_inline struct charge *ours(u64 skb)
{
    if (read_u64(skb + OFF_DESTRUCTOR) != SOCK_WFREE)
        return 0;
    struct charge *c = charged.lookup(&skb);
    if (!c || read_u64(skb + OFF_SK) != c->sk)
        return 0;
    return c;
}

/* net:netif_receive_skb, skb:consume_skb, skb:kfree_skb: args[0] is the skb; sock_wfree follows */
int on_release(struct bpf_raw_tracepoint_args *ctx)
{
    u64 skb = ctx->args[0];
    struct charge *c = ours(skb);
    if (!c)
        return 0;
    bump(S_CALLS);
    if (!c->released)
        release(c);
    charged.delete(&skb);
    return 0;
}

/* net:napi_gro_receive_entry(const struct sk_buff *skb): once per skb entering GRO */
int on_gro_entry(struct bpf_raw_tracepoint_args *ctx)
{
    u64 skb = ctx->args[0];
    u32 zero = 0;
    u64 *pending = gro_pending.lookup(&zero);
    if (!pending)
        return 0;
    *pending = 0;
    struct charge *c = ours(skb);
    if (!c)
        return 0;
    if (!c->released) {
        release(c);
        c->released = 1;
        bump(S_GRO);
    }
    *pending = skb;
    return 0;
}

/* net:napi_gro_receive_exit(int ret): GRO_MERGED (0) / GRO_MERGED_FREE (1): the charge went to the aggregate */
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


def btf_offsets(struct_name: str, fields: Sequence[str], path: Path = BTF_PATH) -> dict[str, int]:
    """Byte offsets of ``fields`` in ``struct_name``, from the kernel's BTF (members of anonymous
    structs and unions included); KeyError names what is missing, OSError/ValueError an unreadable file."""
    data = path.read_bytes()
    magic, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise ValueError(f"{path} is not BTF")
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    extra = {1: 4, 3: 12, 14: 4, 17: 4}  # fixed bytes after struct btf_type, per kind
    per_member = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # bytes per vlen entry, per kind
    positions = [0]  # type id -> position of its struct btf_type (id 0 is void)
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        positions.append(pos)
        info = struct.unpack_from("<I", data, pos + 4)[0]
        pos += 12 + extra.get(info >> 24 & 0x1F, 0) + per_member.get(info >> 24 & 0x1F, 0) * (info & 0xFFFF)

    def name(off: int) -> str:
        return strings[off : strings.index(b"\0", off)].decode()

    def head(type_id: int) -> tuple[int, int, int, int]:  # name_off, kind, vlen, kind_flag
        name_off, info = struct.unpack_from("<II", data, positions[type_id])
        return name_off, info >> 24 & 0x1F, info & 0xFFFF, info >> 31

    def resolve(type_id: int) -> int:  # through typedef, volatile, const, restrict, type tags
        while head(type_id)[1] in (8, 9, 10, 11, 18):
            type_id = struct.unpack_from("<I", data, positions[type_id] + 8)[0]
        return type_id

    def walk(type_id: int, base: int, found: dict[str, int]) -> None:
        _, _, vlen, kind_flag = head(type_id)
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", data, positions[type_id] + 12 + 12 * i)
            bits = base + (m_off & 0xFFFFFF if kind_flag else m_off)
            if m_name:
                found.setdefault(name(m_name), bits // 8)
            elif head(resolve(m_type))[1] in (4, 5):  # an anonymous struct or union: its members are ours
                walk(resolve(m_type), bits, found)

    target = next(
        (i for i in range(1, len(positions)) if head(i)[1] == 4 and head(i)[0] and name(head(i)[0]) == struct_name),
        None,
    )
    if target is None:
        raise KeyError(f"struct {struct_name}")
    found: dict[str, int] = {}
    walk(target, 0, found)
    missing = [f for f in fields if f not in found]
    if missing:
        raise KeyError(f"struct {struct_name} has no {', '.join(missing)}")
    return {f: found[f] for f in fields}


def tracepoint_unavailable() -> str | None:
    """None if the tracepoint backend may work here (bcc, kernel BTF, root), else why not and the fix."""
    try:
        import bcc
    except ImportError:
        return "bcc is not importable: apt-get install python3-bpfcc and use a venv made with --system-site-packages"
    if not hasattr(bcc, "BPF"):
        return "the 'bcc' module found is not the BPF Compiler Collection (the PyPI 'bcc' is unrelated): pip uninstall bcc; apt-get install python3-bpfcc"
    if not BTF_PATH.exists():
        return (f"this kernel ({os.uname().release}) has no BTF at {BTF_PATH} (CONFIG_DEBUG_INFO_BTF unset), so the skb's "
                "fields cannot be located: use --udpsend-backend timestamp, or a kernel with BTF via --udpsend-kernel")  # fmt: skip
    if os.geteuid() != 0:
        return "loading eBPF programs needs root: run the tests as root"
    return None


@contextlib.contextmanager
def _stub_kernel_tree() -> Iterator[str]:
    """A directory bcc takes for kernel headers (BCC_KERNEL_SOURCE, set only inside the block)."""
    with tempfile.TemporaryDirectory(prefix="udpsend-bcc-stub-") as root:
        for rel, text in STUB_HEADERS.items():
            target = Path(root, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        saved = os.environ.get("BCC_KERNEL_SOURCE")
        os.environ["BCC_KERNEL_SOURCE"] = root
        try:
            yield root
        finally:
            if saved is None:
                os.environ.pop("BCC_KERNEL_SOURCE", None)
            else:
                os.environ["BCC_KERNEL_SOURCE"] = saved


def netem_orphans(path: TopologySpec | None) -> str | None:
    """None where a tracepoint sees the release, else the sentence why not (netem that orphans at enqueue)."""
    qdisc = None if path is None else path.qdisc
    if qdisc is None or qdisc.kind != "netem":
        return None
    early = [key for key in NETEM_ORPHANS if qdisc.params.get(key)]
    if not early:
        return None
    return (f"sock_wfree not measurable from tracepoints under '{qdisc.text}': netem with {'/'.join(early)} orphans each "
            "skb at enqueue (skb_orphan_partial() in netem_enqueue()), where no tracepoint fires; use --udpsend-backend bpf "
            "(the kernel lane has it) for this path")  # fmt: skip


class TracepointProbe:
    backend = "tracepoint"
    receiver_timestamps = False
    method = METHOD

    def __init__(self, reason: str, charged_map: str = "hash") -> None:
        self.reason = reason
        self.charged_map = charged_map  # the per-skb map's type ("lru_hash" to compare the cost: ci/bench_tpprobe.py)
        self.offsets: dict[str, int] = {}
        self.unavailable: str | None = None
        self._bpf: Any = None
        self._error: PrivilegeError | None = None  # a failed build, kept: never retried
        self._attached = False

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

        from pytest_udpsend.measure.bpfprobe import _stderr_to_file

        release = os.uname().release
        try:
            self.offsets = btf_offsets("sk_buff", SKB_FIELDS)
        except (OSError, ValueError, KeyError) as exc:
            raise PrivilegeError(f"the skb's fields could not be located in {BTF_PATH} on {release} ({exc}); "
                                 "use --udpsend-backend timestamp") from None  # fmt: skip
        wfree = BPF.ksymname(b"sock_wfree")
        if wfree in (-1, 0, None):
            raise PrivilegeError("sock_wfree's address is hidden in /proc/kallsyms (kernel.kptr_restrict): run as root with "
                                 "kernel.kptr_restrict at 0 or 1, or use --udpsend-backend timestamp")  # fmt: skip
        cflags = [f"-DOFF_{name.upper()}={off}" for name, off in self.offsets.items()] + [
            f"-DSOCK_WFREE={wfree}ULL",
            f'-DCHARGED_MAP="{self.charged_map}"',
        ]
        with _stub_kernel_tree(), _stderr_to_file() as log:
            try:
                bpf = BPF(text=PROGRAM.encode(), cflags=cflags)
                for _, fn in EVENTS:  # load (and verify) now; attached only while a run measures
                    bpf.load_func(fn.encode(), BPF.RAW_TRACEPOINT)
            except Exception as exc:
                log.seek(0)
                errors = [line for line in log.read().splitlines() if "error" in line][:3]
                raise PrivilegeError(f"the tracepoint probe could not be built on {release} ({exc}): "
                                     + ("; ".join(errors) or "no compiler output")) from None  # fmt: skip
        return bpf

    def _set_attached(self, on: bool) -> None:
        if on == self._attached:
            return
        bpf = self._bpf
        if on:
            try:
                for event, fn in EVENTS:
                    bpf.attach_raw_tracepoint(tp=event.encode(), fn_name=fn.encode())
            except Exception:
                self._detach_all()
                raise
        else:
            self._detach_all()
        self._attached = on

    def _detach_all(self) -> None:
        bpf = self._bpf
        for event, _ in EVENTS:
            if event.encode() in bpf.raw_tracepoint_fds:
                bpf.detach_raw_tracepoint(tp=event.encode())

    def prepare(self, sysctls: Sysctls, path: TopologySpec | None = None) -> None:
        self.build()  # outside the measured interval
        self.unavailable = netem_orphans(path)

    def begin(self, sock_fd: int, tgid: int) -> None:
        """Arm for one run of ``tgid`` (as numbered in this process's pid namespace) and attach."""
        self.build()
        bpf = self._bpf
        for table in (b"hist", b"stats", b"charged", b"gro_pending"):
            bpf[table].clear()
        pidns = os.stat("/proc/self/ns/pid")
        cfg = bpf[b"cfg"]
        cfg[cfg.Key(3)] = cfg.Leaf(0)
        cfg[cfg.Key(1)] = cfg.Leaf(pidns.st_dev)
        cfg[cfg.Key(2)] = cfg.Leaf(pidns.st_ino)
        cfg[cfg.Key(0)] = cfg.Leaf(tgid)
        try:
            self._set_attached(True)
        except Exception as exc:
            cfg[cfg.Key(0)] = cfg.Leaf(0)
            raise PrivilegeError(f"the tracepoint probe could not be attached on {os.uname().release}: {exc}") from None

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> dict[str, Any]:
        self.build()
        bpf = self._bpf
        cfg = bpf[b"cfg"]
        cfg[cfg.Key(0)] = cfg.Leaf(0)
        self._set_attached(False)
        if self.unavailable is not None:
            return not_measured(self.backend, self.unavailable)
        hist = [sum(v) for v in bpf[b"hist"].values()]  # per-CPU slots: add them up
        per_cpu = list(bpf[b"stats"].values())
        stats = [max(v) if i % 2 and i < len(CONTEXTS) * 2 else sum(v) for i, v in enumerate(per_cpu)]
        per_ctx = {name: hist[i * NBUCKETS : (i + 1) * NBUCKETS] for i, name in enumerate(CONTEXTS)}
        total = [sum(col) for col in zip(*per_ctx.values())]
        contexts = {name: stats[i * 2] for i, name in enumerate(CONTEXTS)}
        count = sum(contexts.values())
        max_ns = max(stats[i * 2 + 1] for i in range(len(CONTEXTS)))
        at_gro = stats[S_GRO]
        return {
            "backend": self.backend,
            "method": self.method,
            "count": count,
            "calls": stats[S_CALLS],
            "released_at": {"gro_entry": at_gro, "other": count - at_gro},
            "charges": stats[S_CHARGES],
            "p50_us": percentile_us(total, 0.50),
            "p90_us": percentile_us(total, 0.90),
            "p99_us": percentile_us(total, 0.99),
            "max_us": round(max_ns / 1000, 2) if count else None,
            "interval": INTERVAL,
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

"""``udpsend record``: a live process's UDP sends as a payload-free shape that ``replay=`` reads.

What is traced (bcc, header-free: the loader in ``tploader.py``, its stub kernel tree and ``btf_offsets``):

* raw tracepoint ``sys_enter`` (every syscall of every task, filtered first by the process's tgid,
  so all its threads): for ``write``, ``writev``, ``sendto``, ``sendmsg``, ``sendmmsg`` the call's
  arguments are kept per thread, read from ``struct pt_regs`` (di, si, dx, r10, r8, r9 at offsets
  from the kernel's BTF).  A send's size is taken from them, at ``sys_enter`` for the one-message
  calls (``len``; the sum of the iovec lengths; a ``UDP_SEGMENT`` cmsg; the ``msg_name``
  address), and for ``sendmmsg`` from its message *i* when the kernel sends message *i*, from the
  same call's unchanged arguments.  So a send that fails keeps its size: the kernel's return value
  (-11) carries none.
* raw tracepoint ``sock:sock_send_length`` (Linux 6.3+; fires once per message sent through a
  socket, with the socket and the result): it confirms that the call's message went to a UDP socket
  (``sk_type`` SOCK_DGRAM, ``sk_protocol`` 17, from BTF offsets: a ``write`` to a file, a pipe or a
  TCP socket is not recorded), gives the result (bytes or -errno) of each message, including each
  of ``sendmmsg``'s, and the connected peer and the bound source when the call names no address.
  Chosen over resolving descriptors in ``/proc/PID/fd`` against ``/proc/net/udp`` from user space,
  which races with ``close()`` and with a process that exits before its last events are read.
  So the kernel needs it: older kernels are refused in one sentence.

Each message is one event in a BPF ring buffer (read here through its mmap, no callback per
event), with the monotonic time its send started (the ``sys_enter``, or for ``sendmmsg``'s later
messages the end of the previous one).  Sizes: a successful send's size is its result; a failed
one's from the arguments.  A GSO send (``UDP_SEGMENT`` cmsg, or the socket's ``UDP_SEGMENT``
option) is written as its segments, all at the send's time.

The file is pcapng (``ShapeWriter``), nanosecond timestamps: one Ethernet/IP/UDP record per
datagram, headers only (as ``tcpdump -s`` writes: the record's original length and the IP and UDP
length fields say the size, no payload byte is kept; about 76 bytes a datagram whatever its size,
a twentieth of a zero-filled 1400-byte one), to the real destination when known, else a documentation
address (192.0.2.1 -> 198.51.100.1, 2001:db8::1 -> 2001:db8::2).  A datagram larger than a 1500-byte
link carries is written as the IP fragments such a link would show, so ``replay=`` reassembles it
to its size (its super-packet rule never splits it).  A failed send is written like the others, so
``replay=`` replays it (the shape is what the application wanted to send), and carries a pcapng
comment ``udpsend: send failed: EAGAIN (errno 11)``: in the file itself, so no sidecar can be lost
or paired with the wrong file.

Not seen: ``MSG_MORE`` / ``UDP_CORK`` (each call is recorded as its own datagram), io_uring sends
(no send syscall: counted as ``unattributed``), ``sendmmsg`` messages past the 64th of a call and
iovecs past the 16th (counted as ``truncated``; a successful message's size is then still exact),
a ``sendmmsg`` message after one that failed (the kernel does not attempt it; the application's
next call sends it, and that is recorded).

Overhead: attaching ``sys_enter`` puts every syscall of every task on the traced slow path while
the recording runs (ci/bench_record.py measures a full-speed sender with and without it).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pytest_udpsend.errors import ConfigError, PrivilegeError
from pytest_udpsend.host import outfile
from pytest_udpsend.measure import bpfc, tploader

SEND_SYSCALLS = {1: "write", 20: "writev", 44: "sendto", 46: "sendmsg", 307: "sendmmsg"}  # x86_64 numbers
RECORD_SOCK_FIELDS = (
    "skc_family",
    "skc_daddr",
    "skc_rcv_saddr",
    "skc_dport",
    "skc_num",
    "skc_v6_daddr",
    "skc_v6_rcv_saddr",
)
RING_PAGES = 4096  # 16 MiB: about 0.6 s of a 400,000 sends/s process between two reads
EVENT = struct.Struct("<QiIIIHHHH16s16s")  # struct rec_event
EVENT_REST = struct.Struct("<iIIIHHHH16s16s")  # all but its time: what the written records depend on
CACHE_MAX = 65536  # distinct events (flow, size, result) whose records are kept built
ETH_MTU = 1500
DOC_V4 = ("192.0.2.1", "198.51.100.1")
DOC_V6 = ("2001:db8::1", "2001:db8::2")
FAILED_COMMENT = "udpsend: send failed: "

RECORD_PROGRAM = (
    r"""
#define NR_WRITE 1
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_SENDMMSG 307
#define REC_MAX_IOV 16
#define REC_MAX_MMSG 64
#define REC_MAX_CMSG 4
#define REC_SOL_UDP 17
#define REC_UDP_SEGMENT 103
#define REC_AF_INET 2
#define REC_AF_INET6 10

/* one message of a send call, as its arguments describe it */
struct rec_msg { u32 size; u32 gso; u16 family; u16 dport; u32 truncated; u8 daddr[16]; };
/* a thread's send call in progress: set at sys_enter, used at each sock_send_length */
struct rec_pending { u64 ts; u64 args[6]; u32 nr; u32 index; struct rec_msg msg; };
struct rec_event { u64 ts; s32 ret; u32 size; u32 gso; u32 nr; u16 family; u16 dport; u16 sport; u16 skfamily;
                   u8 daddr[16]; u8 saddr[16]; };

BPF_HASH(rec_pending_by_tid, u32, struct rec_pending, 16384);
/* tgid wanted (in the recorder's pid namespace), that namespace's dev and inode, the tgid in the
   initial namespace (learned at the first syscall of the process, then compared alone) */
BPF_ARRAY(rec_cfg, u64, 4);
BPF_PERCPU_ARRAY(rec_stats, u64, 3);  /* lost events, unattributed socket sends, truncated messages */
BPF_RINGBUF_OUTPUT(rec_events, RING_PAGES);

static inline __attribute__((always_inline)) void rec_bump(u32 slot)
{
    u64 *n = rec_stats.lookup(&slot);
    if (n)
        (*n)++;
}

static inline __attribute__((always_inline)) int rec_is_target(u64 id)
{
    u32 k_want = 0, k_dev = 1, k_ino = 2, k_root = 3;
    u64 *root = rec_cfg.lookup(&k_root);
    if (!root)
        return 0;
    if (*root)
        return (id >> 32) == *root;
    u64 *want = rec_cfg.lookup(&k_want), *dev = rec_cfg.lookup(&k_dev), *ino = rec_cfg.lookup(&k_ino);
    if (!want || !dev || !ino || *want == 0)
        return 0;
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(*dev, *ino, &ns, sizeof(ns)) || ns.tgid != *want)
        return 0;
    *root = id >> 32;
    return 1;
}

static inline __attribute__((always_inline)) u64 rec_user_u64(u64 addr)
{
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

/* iovec lengths, a UDP_SEGMENT cmsg and msg_name of the struct msghdr at addr */
/* the destination a send call named (msg_name / sendto's address): family, port, then the IPv4
   address at 4 or the IPv6 one at 8 */
static inline __attribute__((always_inline)) void rec_sockaddr(struct rec_msg *m, u64 addr, u32 len)
{
    if (!addr || len < 8)
        return;
    u8 sa[24] = {};
    bpf_probe_read_user(sa, len >= 24 ? 24 : 16, (void *)addr);
    m->family = sa[0] | sa[1] << 8;
    m->dport = sa[2] | sa[3] << 8;
    if (m->family == REC_AF_INET)
        __builtin_memcpy(m->daddr, sa + 4, 4);
    else if (m->family == REC_AF_INET6)
        __builtin_memcpy(m->daddr, sa + 8, 16);
}

static inline __attribute__((always_inline)) void rec_parse_msghdr(u64 addr, struct rec_msg *m)
{
    u64 hdr[7] = {};  /* name, namelen, iov, iovlen, control, controllen, flags */
    if (bpf_probe_read_user(hdr, sizeof(hdr), (void *)addr))
        return;
    u64 iov = hdr[2], iovlen = hdr[3], size = 0;
    for (int i = 0; i < REC_MAX_IOV; i++) {
        if (i >= iovlen)
            break;
        size += rec_user_u64(iov + 16 * i + 8);
    }
    if (iovlen > REC_MAX_IOV)
        m->truncated = 1;
    m->size = (u32)size;
    u64 pos = hdr[4], end = hdr[4] + hdr[5];
    for (int i = 0; i < REC_MAX_CMSG; i++) {
        u64 cm[2] = {};  /* cmsg_len; cmsg_level | cmsg_type << 32 */
        if (!pos || pos + 16 > end || bpf_probe_read_user(cm, sizeof(cm), (void *)pos))
            break;
        if ((u32)cm[1] == REC_SOL_UDP && (u32)(cm[1] >> 32) == REC_UDP_SEGMENT) {
            u16 gso = 0;
            bpf_probe_read_user(&gso, sizeof(gso), (void *)(pos + 16));
            m->gso = gso;
            break;
        }
        u64 step = (cm[0] + 7) & ~7ULL;
        if (step < 16)
            break;
        pos += step;
    }
    rec_sockaddr(m, hdr[0], (u32)hdr[1]);
}

/* message `index` of the pending call */
static inline __attribute__((always_inline)) void rec_parse(struct rec_pending *p, u32 index, struct rec_msg *m)
{
    if (p->nr == NR_WRITE) {
        m->size = (u32)p->args[2];
    } else if (p->nr == NR_SENDTO) {
        m->size = (u32)p->args[2];
        rec_sockaddr(m, p->args[4], (u32)p->args[5]);
    } else if (p->nr == NR_WRITEV) {
        u64 size = 0;
        for (int i = 0; i < REC_MAX_IOV; i++) {
            if (i >= p->args[2])
                break;
            size += rec_user_u64(p->args[1] + 16 * i + 8);
        }
        m->size = (u32)size;
        m->truncated = p->args[2] > REC_MAX_IOV;
    } else if (p->nr == NR_SENDMSG) {
        rec_parse_msghdr(p->args[1], m);
    } else if (index < REC_MAX_MMSG) {  /* sendmmsg: struct mmsghdr is 64 bytes, its msghdr first */
        rec_parse_msghdr(p->args[1] + 64 * (u64)index, m);
    } else {
        m->truncated = 1;
    }
}

"""
    + bpfc.SYSCALL_ARGS
    + r"""
int rec_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!rec_is_target(id))
        return 0;
    u32 tid = (u32)id;
    long nr = (long)ctx->args[1];
    if (nr != NR_WRITE && nr != NR_WRITEV && nr != NR_SENDTO && nr != NR_SENDMSG && nr != NR_SENDMMSG) {
        rec_pending_by_tid.delete(&tid);  /* no stale call for a socket send this syscall makes */
        return 0;
    }
    struct rec_pending p = {};
    u64 regs = ctx->args[0];
    p.ts = bpf_ktime_get_ns();
    p.nr = (u32)nr;
    udps_syscall_args(regs, p.args);
    if (p.nr != NR_SENDMMSG)
        rec_parse(&p, 0, &p.msg);  /* the size from the arguments, at the call */
    rec_pending_by_tid.update(&tid, &p);
    return 0;
}

/* sock:sock_send_length(struct sock *sk, int ret, int flags): one message through a socket, done */
int rec_send_length(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct rec_pending *p = rec_pending_by_tid.lookup(&tid);
    if (!p) {
        if (rec_is_target(id))
            rec_bump(1);  /* a socket send of the process without a send syscall (io_uring) */
        return 0;
    }
    u64 sk = ctx->args[0];
    u16 type = 0, proto = 0;
    bpf_probe_read_kernel(&type, sizeof(type), (void *)(sk + OFF_SK_TYPE));
    bpf_probe_read_kernel(&proto, sizeof(proto), (void *)(sk + OFF_SK_PROTOCOL));
    u32 index = p->index;
    u64 started = p->ts;
    p->index = index + 1;
    p->ts = bpf_ktime_get_ns();  /* sendmmsg: the next message's send starts now */
    if (type != 2 || proto != 17)  /* SOCK_DGRAM, IPPROTO_UDP */
        return 0;
    struct rec_event *e = rec_events.ringbuf_reserve(sizeof(struct rec_event));
    if (!e) {
        rec_bump(0);
        return 0;
    }
    struct rec_msg m = {};
    if (p->nr == NR_SENDMMSG)
        rec_parse(p, index, &m);
    else
        m = p->msg;
    if (m.truncated)
        rec_bump(2);
    e->ts = started;
    e->ret = (int)ctx->args[1];
    e->size = m.size;
    e->gso = m.gso;
    if (!e->gso)
        bpf_probe_read_kernel(&e->gso, 2, (void *)(sk + OFF_GSO_SIZE));  /* the socket's UDP_SEGMENT */
    e->nr = p->nr;
    e->sport = 0;
    bpf_probe_read_kernel(&e->sport, 2, (void *)(sk + OFF_SKC_NUM));
    u16 skfamily = 0;
    bpf_probe_read_kernel(&skfamily, 2, (void *)(sk + OFF_SKC_FAMILY));
    __builtin_memset(e->daddr, 0, 32);  /* daddr, saddr */
    if (skfamily == REC_AF_INET6)
        bpf_probe_read_kernel(e->saddr, 16, (void *)(sk + OFF_SKC_V6_RCV_SADDR));
    else
        bpf_probe_read_kernel(e->saddr, 4, (void *)(sk + OFF_SKC_RCV_SADDR));
    if (m.family) {  /* the call named its destination */
        e->family = m.family;
        e->dport = m.dport;
        __builtin_memcpy(e->daddr, m.daddr, 16);
    } else {  /* the connected peer */
        e->family = skfamily;
        e->dport = 0;
        bpf_probe_read_kernel(&e->dport, 2, (void *)(sk + OFF_SKC_DPORT));
        if (skfamily == REC_AF_INET6)
            bpf_probe_read_kernel(e->daddr, 16, (void *)(sk + OFF_SKC_V6_DADDR));
        else
            bpf_probe_read_kernel(e->daddr, 4, (void *)(sk + OFF_SKC_DADDR));
    }
    e->skfamily = skfamily;
    rec_events.ringbuf_submit(e, 0);
    return 0;
}
"""
)


@dataclass(frozen=True)
class Send:
    """One message of a send call: when it started (CLOCK_MONOTONIC ns), its result, its size from the arguments."""

    ts_ns: int
    ret: int
    size: int
    gso: int
    syscall: str
    family: int  # of the destination (AF_INET / AF_INET6; 0: unknown)
    dst: str | None
    dport: int
    src: str | None
    sport: int

    @property
    def failed(self) -> bool:
        return self.ret < 0

    def datagrams(self) -> list[int]:
        """UDP payload sizes on the wire: one, or a GSO send's segments."""
        size = self.ret if self.ret >= 0 else self.size  # a success's result is exact; a failure has only the arguments
        if self.gso and size > self.gso:
            whole, rest = divmod(size, self.gso)
            return [self.gso] * whole + ([rest] if rest else [])
        return [size]


@dataclass
class Recording:
    """What a recording saw, for the summary line and the tests."""

    pid: int
    path: str
    sends: int = 0
    datagrams: int = 0
    failed: Counter[int] = field(default_factory=Counter)  # errno -> sends
    lost: int = 0
    unattributed: int = 0
    truncated: int = 0
    first_ns: int | None = None  # CLOCK_MONOTONIC
    last_ns: int | None = None
    exited: bool = False

    @property
    def span_ns(self) -> int:
        return 0 if self.first_ns is None or self.last_ns is None else self.last_ns - self.first_ns

    def summary(self) -> str:
        failed = ", ".join(f"{errno.errorcode.get(e, str(e))} x {n}" for e, n in sorted(self.failed.items()))
        text = (
            f"recorded {self.sends} UDP send(s) of pid {self.pid} ({self.datagrams} datagram(s), "
            f"{sum(self.failed.values())} failed{': ' + failed if failed else ''}) over "
            f"{self.span_ns / 1e9:.3f} s -> {self.path}"
        )
        if self.exited:
            text += "; the process exited"
        if self.unattributed:
            text += f"; {self.unattributed} socket send(s) without a send syscall (io_uring?) not recorded"
        if self.truncated:
            text += f"; {self.truncated} message(s) past 64 per sendmmsg or 16 iovecs: failed ones' sizes may be short"
        if self.lost:
            text += (
                f"; LOST {self.lost} event(s): the ring buffer was full (the process sends faster than "
                "this recorder reads): the shape is incomplete"
            )
        return text


# ----------------------------------------------------------------------------------------- refusals


def check_pid(pid: int) -> None:
    """ConfigError in one sentence when ``pid`` is no running process (or a thread, not a process)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text() if pid > 0 else ""
    except OSError:
        status = ""
    tgid = next((line.split()[1] for line in status.splitlines() if line.startswith("Tgid:")), None)
    if tgid is None:
        raise ConfigError(f"--pid {pid}: no such process; give the pid of a running process (e.g. from pgrep NAME)")
    if int(tgid) != pid:
        raise ConfigError(
            f"--pid {pid} is a thread of process {tgid}: give --pid {tgid} (all its threads are recorded)"
        )


def unavailable() -> str | None:
    """None if this host can record, else the sentence why not and what to do."""
    if os.geteuid() != 0:
        return "udpsend record loads an eBPF program, which needs root: run it with sudo"
    if os.uname().machine != "x86_64":
        return f"udpsend record reads x86_64 syscall arguments and this host is {os.uname().machine}: record on an x86_64 host"
    try:
        import bcc
    except ImportError:
        return "tracing cannot be loaded: bcc is not importable: apt-get install python3-bpfcc and use a venv made with --system-site-packages"
    if not hasattr(bcc, "BPF"):
        return "tracing cannot be loaded: the 'bcc' module found is not the BPF Compiler Collection: pip uninstall bcc; apt-get install python3-bpfcc"
    if not tploader.BTF_PATH.exists():
        return (
            f"tracing cannot be loaded: this kernel ({os.uname().release}) has no BTF at {tploader.BTF_PATH} "
            "(CONFIG_DEBUG_INFO_BTF unset): record on a kernel built with BTF"
        )
    return None


# ---------------------------------------------------------------------------------------- the probe


class Recorder:
    """The loaded program, attached for one process; ``sends()`` yields what the ring buffer holds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._bpf: Any = None
        self._ring: mmap.mmap | None = None
        self._cons: mmap.mmap | None = None
        self._mask = 0

    def _cflags(self) -> list[str]:
        release = os.uname().release
        try:
            regs = tploader.syscall_cflags()
            sock = tploader.btf_offsets("sock", ("__sk_common", "sk_type", "sk_protocol"))
            common = tploader.btf_offsets("sock_common", RECORD_SOCK_FIELDS)
            udp = tploader.btf_offsets("udp_sock", ("gso_size",))
        except (OSError, ValueError, KeyError) as exc:
            raise PrivilegeError(
                f"tracing cannot be loaded: the kernel structs could not be located in its BTF on "
                f"{release} ({exc}): record on a kernel built with BTF"
            ) from None
        if sock["__sk_common"] != 0:
            raise PrivilegeError(
                f"tracing cannot be loaded: struct sock on {release} does not start with its sock_common: "
                "record on another kernel"
            )
        out = {"sk_type": sock["sk_type"], "sk_protocol": sock["sk_protocol"], "gso_size": udp["gso_size"]} | common
        return regs + [f"-DOFF_{name.upper()}={off}" for name, off in out.items()]

    def load(self) -> None:
        """Compile, load and attach; PrivilegeError in one sentence (what failed, what to do) if it cannot."""
        release = os.uname().release
        cflags = [*self._cflags(), f"-DRING_PAGES={RING_PAGES}"]
        try:
            self._bpf = tploader.load(RECORD_PROGRAM, cflags, ("rec_sys_enter", "rec_send_length"))
        except tploader.LoadError as exc:
            raise PrivilegeError(
                f"tracing cannot be loaded on {release} ({exc}: {exc.detail}): "
                "check that bcc (python3-bpfcc) matches this kernel"
            ) from None
        self._arm()
        try:
            self._bpf.attach_raw_tracepoint(tp=b"sock_send_length", fn_name=b"rec_send_length")
        except Exception:
            self.close()
            raise PrivilegeError(
                f"tracing cannot be loaded: this kernel ({release}) has no sock:sock_send_length "
                "tracepoint, which says which sends reached a UDP socket and their result (Linux 6.3+): "
                "record on a 6.3 or newer kernel"
            ) from None
        try:
            self._bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"rec_sys_enter")
        except Exception as exc:
            self.close()
            raise PrivilegeError(
                f"tracing cannot be loaded: the raw tracepoint sys_enter cannot be attached on {release} "
                f"({exc}): check that BPF raw tracepoints are allowed (kernel lockdown, seccomp)"
            ) from None
        self._map_ring()

    def _arm(self) -> None:
        cfg = self._bpf[b"rec_cfg"]
        pidns = os.stat("/proc/self/ns/pid")
        cfg[cfg.Key(3)] = cfg.Leaf(0)
        cfg[cfg.Key(1)] = cfg.Leaf(pidns.st_dev)
        cfg[cfg.Key(2)] = cfg.Leaf(pidns.st_ino)
        cfg[cfg.Key(0)] = cfg.Leaf(self.pid)

    def _map_ring(self) -> None:
        """The ring buffer as libbpf maps it: the consumer page (ours to write), then the producer page
        and the data twice (a record that wraps reads as one piece)."""
        fd = self._bpf[b"rec_events"].map_fd
        page = mmap.PAGESIZE
        size = RING_PAGES * page
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._ring = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._mask = size - 1

    def events(self) -> Iterator[tuple[int, bytes]]:
        """The events written since the last call, oldest first, as (time, the other 56 bytes: ``EVENT_REST``);
        the consumer position moves past them."""
        ring, cons_map = self._ring, self._cons
        if ring is None or cons_map is None:
            return
        page, mask, unpack = mmap.PAGESIZE, self._mask, struct.unpack_from
        cons = unpack("<Q", cons_map, 0)[0]
        prod = unpack("<Q", ring, 0)[0]
        while cons < prod:
            at = page + (cons & mask)
            length = unpack("<I", ring, at)[0]
            if length & (1 << 31):  # still being written
                break
            if not length & (1 << 30):  # not discarded
                yield unpack("<Q", ring, at + 8)[0], ring[at + 16 : at + 8 + EVENT.size]
            cons += ((length & ~(3 << 30)) + 8 + 7) & ~7
            struct.pack_into("<Q", cons_map, 0, cons)

    def stats(self) -> tuple[int, int, int]:
        per_cpu = list(self._bpf[b"rec_stats"].values())
        lost, unattributed, truncated = (sum(v) for v in per_cpu)
        return lost, unattributed, truncated

    def close(self) -> None:
        for m in (self._ring, self._cons):
            if m is not None:
                with contextlib.suppress(BufferError, ValueError):
                    m.close()
        self._ring = self._cons = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def _address(family: int, raw: bytes) -> str | None:
    """A destination or source address; None where unknown (0.0.0.0, ::); v4-mapped IPv6 as IPv4."""
    if family == socket.AF_INET:
        return None if raw[:4] == bytes(4) else socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        if raw[:16] == bytes(16):
            return None
        if raw[:12] == bytes(10) + b"\xff\xff":
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return None


def _send(fields: tuple[Any, ...]) -> Send:
    ts, ret, size, gso, nr, family, dport, sport, skfamily, daddr, saddr = fields
    return Send(
        ts,
        ret,
        size,
        gso,
        SEND_SYSCALLS.get(nr, str(nr)),
        family,
        _address(family, daddr),
        socket.ntohs(dport),
        _address(skfamily, saddr),
        sport,
    )


# --------------------------------------------------------------------------------------- the file


def _block(kind: int, body: bytes, options: bytes = b"") -> bytes:
    total = 12 + len(body) + len(options)
    return struct.pack("<II", kind, total) + body + options + struct.pack("<I", total)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def pcapng_header() -> bytes:
    """Section header and one Ethernet interface with nanosecond timestamps (if_tsresol 9)."""
    shb = _block(
        0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1), _option(4, b"pytest-udpsend record") + _option(0, b"")
    )
    idb = _block(1, struct.pack("<HHI", 1, 0, 0), _option(2, b"udpsend-record") + _option(9, b"\x09") + _option(0, b""))
    return shb + idb


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _ipv4(src: str, dst: str, ident: int, length: int, frag: int) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, length, ident & 0xFFFF, frag, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:]


def frames(size: int, src: str, dst: str, sport: int, dport: int, ident: int) -> list[tuple[bytes, int]]:
    """One datagram as a 1500-byte Ethernet link shows it: (headers, frame length) per record; a
    datagram that does not fit is IP fragments (IPv4, or IPv6 with a fragment header)."""
    v6 = ":" in dst
    udp = struct.pack("!HHHH", sport, dport, size + 8, 0)
    eth = bytes(12) + (b"\x86\xdd" if v6 else b"\x08\x00")
    total = 8 + size  # UDP header and payload: what is split
    if v6:
        s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        if 40 + total <= ETH_MTU:
            return [(eth + struct.pack("!IHBB", 6 << 28, total, 17, 64) + s6 + d6 + udp, 14 + 40 + total)]
        chunk = (ETH_MTU - 48) & ~7
        out = []
        for offset in range(0, total, chunk):
            part = min(chunk, total - offset)
            m_flag = int(offset + part < total)
            fh = struct.pack("!BBHI", 17, 0, offset | m_flag, ident & 0xFFFFFFFF)
            head = eth + struct.pack("!IHBB", 6 << 28, 8 + part, 44, 64) + s6 + d6 + fh
            out.append((head + (udp if offset == 0 else b""), 14 + 48 + part))
        return out
    if 20 + total <= ETH_MTU:
        return [(eth + _ipv4(src, dst, 0, 20 + total, 0x4000) + udp, 14 + 20 + total)]  # DF, id 0: as Linux sends it
    chunk = (ETH_MTU - 20) & ~7
    out = []
    for offset in range(0, total, chunk):
        part = min(chunk, total - offset)
        more = 0x2000 if offset + part < total else 0
        head = eth + _ipv4(src, dst, ident, 20 + part, more | offset // 8)
        out.append((head + (udp if offset == 0 else b""), 14 + 20 + part))
    return out


class ShapeWriter:
    """Writes each send's datagrams as they arrive (replay= sorts by time itself).  The records of an
    event seen before (same flow, size and result) are reused, only the time changes: about 1 us per
    datagram, so the reader keeps up with a full-speed sender."""

    def __init__(self, out: BinaryIO, wall_offset_ns: int) -> None:
        self.out = out
        self.offset = wall_offset_ns  # CLOCK_REALTIME - CLOCK_MONOTONIC: timestamps a reader can show
        self.ident = 0
        self._built: dict[bytes, tuple[list[tuple[bytes, bytes]], int, int]] = {}
        out.write(pcapng_header())

    def write(self, ts_ns: int, rest: bytes) -> tuple[int, int]:
        """One event (its time and ``EVENT_REST`` bytes): (datagrams written, errno or 0)."""
        built = self._built.get(rest)
        if built is None:
            built = self._build(_send((ts_ns, *EVENT_REST.unpack(rest))))
            if len(built[0]) == built[1]:  # unfragmented: the records do not change (IP id 0, as Linux sends with DF)
                if len(self._built) >= CACHE_MAX:
                    self._built.clear()
                self._built[rest] = built
        at = ts_ns + self.offset
        stamp = struct.pack("<II", at >> 32, at & 0xFFFFFFFF)
        self.out.write(b"".join(pre + stamp + post for pre, post in built[0]))
        return built[1], built[2]

    def _build(self, send: Send) -> tuple[list[tuple[bytes, bytes]], int, int]:
        """Each record as the bytes before and after its timestamp."""
        v6 = send.family == socket.AF_INET6 and send.dst is not None and ":" in send.dst
        doc = DOC_V6 if v6 else DOC_V4
        dst = send.dst if send.dst is not None and (":" in send.dst) == v6 else doc[1]
        src = send.src if send.src is not None and (":" in send.src) == v6 else doc[0]
        comment = b""
        if send.failed:
            name = errno.errorcode.get(-send.ret, "errno")
            comment = _option(1, f"{FAILED_COMMENT}{name} (errno {-send.ret})".encode()) + _option(0, b"")
        sizes = send.datagrams()
        pieces = []
        for size in sizes:
            self.ident += 1
            for head, length in frames(size, src, dst, send.sport, send.dport or 9, self.ident):
                block = _block(
                    6, struct.pack("<IIIII", 0, 0, 0, len(head), length) + head + bytes(-len(head) % 4), comment
                )
                pieces.append((block[:12], block[20:]))
        return pieces, len(sizes), -send.ret if send.failed else 0


# ----------------------------------------------------------------------------------------- the loop


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def record(
    pid: int, path: str, duration: float | None = None, ready: Callable[[], None] | None = None, poll_s: float = 0.05
) -> Recording:
    """Record ``pid``'s UDP sends into ``path`` until ``duration`` seconds pass, the process exits,
    or SIGINT/SIGTERM; ``ready`` is called once the probe is attached."""
    check_pid(pid)
    reason = unavailable()
    if reason is not None:
        raise PrivilegeError(reason)
    outfile.check_target(path, "-o")
    rec = Recording(pid, path)
    recorder = Recorder(pid)
    pidfd = _pidfd(pid)
    try:
        recorder.load()
        wall = time.time_ns() - time.monotonic_ns()
        with outfile.atomic_open(path) as out:
            writer = ShapeWriter(out, wall)
            if ready is not None:
                ready()
            deadline = None if duration is None else time.monotonic() + duration
            stop = False
            while not stop:
                try:
                    stop = _wait(pid, pidfd, deadline, poll_s, rec)
                    _drain(recorder, writer, rec)
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the command turns it into one): end, keep the file
                    stop = True
            _drain(recorder, writer, rec)  # what the ring still holds
            rec.lost, rec.unattributed, rec.truncated = recorder.stats()
    finally:
        recorder.close()
        if pidfd is not None:
            os.close(pidfd)
    return rec


def _drain(recorder: Recorder, writer: ShapeWriter, rec: Recording) -> None:
    for ts, rest in recorder.events():
        rec.sends += 1
        datagrams, failed = writer.write(ts, rest)
        rec.datagrams += datagrams
        if failed:
            rec.failed[failed] += 1
        rec.first_ns = ts if rec.first_ns is None or ts < rec.first_ns else rec.first_ns
        rec.last_ns = ts if rec.last_ns is None or ts > rec.last_ns else rec.last_ns


def _wait(pid: int, pidfd: int | None, deadline: float | None, poll_s: float, rec: Recording) -> bool:
    """Wait one poll interval; True when the recording ends (the duration passed, the process exited)."""
    left = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
    if left <= 0:
        return True
    if pidfd is not None:
        rec.exited = bool(select.select([pidfd], [], [], left)[0])
    else:
        time.sleep(left)
        rec.exited = not Path(f"/proc/{pid}").is_dir()
    return rec.exited

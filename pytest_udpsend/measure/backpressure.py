"""How a sender behaves when its send buffer is full: its failed sends by errno, and its busy-wait.

``SendResult.errno``: the sender's failed send calls by errno name (``{"EAGAIN": n, "EIO": n}``).
The plugin's C loop counts each failed call by its errno itself (``_engine.c``; a sendmmsg batch
that stopped part-way counts under EAGAIN, as everywhere in the plugin: the kernel returns the
count, not the error).  A ``sender_process`` program's send calls are traced in the kernel for the
run (``measure/sendtrace.py``: sock:sock_send_length, or sys_exit where the kernel lacks it), filtered
to its processes.  Where that cannot load (not root, no kernel BTF, no bcc) only the netns's SNMP
counters are seen, and ``UdpSndbufErrors`` counts EAGAIN and ENOBUFS alike (also the ENOBUFS that a
socket without IP_RECVERR never sees), so ``errno`` is None there and ``errno_method`` says why.

``SendResult.busy_wait``: the fraction of one CPU the sender used while its send buffer was full,
None if it never was.  Both sides are sampled together: the buffer's occupancy against its size
(``sk_wmem_alloc >= sk_sndbuf``, the test ``sock_alloc_send_pskb()`` makes before it fails a send)
and the sender's use of its CPU.  Each interval that starts at a sample finding the buffer full counts:

    busy_wait = CPU time / (CPU time + time asleep), summed over those intervals

Time runnable but waiting for a CPU is left out on purpose: the sender's behaviour is asked about,
not the host's load.  A busy loop that shares its CPU with another task still spins whenever it runs
(its CPU time over the whole interval would halve), and a poller woken by POLLOUT that waits for its
CPU is not spinning.  So it is the fraction of one CPU the sender used while the buffer was full,
where the host left it that CPU.  A sender that retries at once on EAGAIN never sleeps (1.0); one
that waits in poll/epoll for POLLOUT sleeps through most of it (near 0; UDP's POLLOUT comes when the
buffer is half empty, so a poller behind a fast drain wakes often and its sends show).  Samples are
at most a few ms apart, so a full spell shorter than that may be missed or stretched, and the sends
made between two samples count with them: a time average, not a per-call account.
``busy_wait_detail`` keeps the parts (``full_s``, ``cpu_s``, ``asleep_s``).

* the plugin's loop: in C, at a SIOCOUTQ sample at most every 100 us, against the socket's
  SO_SNDBUF; the loop thread reads its own CPU clock and run delay (``/proc/thread-self/schedstat``),
  both exact since it reads them while it runs, and time asleep = interval - CPU - run delay.
  Several sender threads: summed.
* a program: every ``SAMPLE_S`` by a thread of ours (SCHED_FIFO: the scenario's CPU hogs would
  otherwise leave it a few instants a second), ``sk_wmem_alloc`` and ``sk_sndbuf`` of every UDP
  socket of the sender netns from sock_diag (``INET_DIAG_SKMEMINFO``; full when any one is); CPU time
  from the program's own cgroup (``cpu.stat`` ``usage_usec``, all its processes, brought up to date
  by reading each thread's CPU clock first) or without one from its first process's CPU clock; and
  whether it was asleep: no thread of it in state R (``/proc/<tid>/stat``) at the sample.  Its run
  delay cannot be used from outside: ``schedstat`` adds a wait only once it ends, so a sample taken
  while the program waits for its CPU would count that wait as sleep.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from pytest_udpsend.measure.shapes import BusyWaitDetail

ERRNO_SLOTS = 256  # as in _engine.c: errnos at or above it are counted together
LOOP_ERRNO_METHOD = (
    "counted by the send loop: each failed send call by its errno (a sendmmsg batch that stopped "
    "part-way counts under EAGAIN: the kernel returns the count, not the error)"
)
PROGRAM_ERRNO_REASON = (
    "not measured: without tracing the program's send calls only the sender netns's UdpSndbufErrors is seen, and it "
    "counts EAGAIN and ENOBUFS alike (also ENOBUFS a socket without IP_RECVERR never sees), so no errno can be told "
    "apart; the program's failed sends are in 'eagain' as that upper bound"
)
LOOP_BUSY_METHOD = (
    "CPU time / (CPU time + time asleep) of the loop thread (its CPU clock and schedstat run delay) "
    "over the intervals after each SIOCOUTQ sample (at most every 100 us) that found "
    "sk_wmem_alloc >= SO_SNDBUF"
)
CGROUP_BUSY_METHOD = (
    "CPU time / (CPU time + time asleep) of the program (its cgroup's cpu.stat; asleep: no thread "
    "of it in state R at the sample) over the intervals after each sock_diag sample that found a "
    "UDP socket of the sender netns with sk_wmem_alloc >= sk_sndbuf"
)
PROC_BUSY_METHOD = (
    "CPU time / (CPU time + time asleep) of the program's first process (its CPU clock; asleep: no "
    "thread of it in state R at the sample) over the intervals after each sock_diag sample that found "
    "a UDP socket of the sender netns with sk_wmem_alloc >= sk_sndbuf"
)


def errno_names(counts: Mapping[int, int]) -> dict[str, int]:
    """The engine's ``{errno: n}`` by name: ``{"EAGAIN": n, ...}``; a number without a name as "errno N"."""
    names: dict[str, int] = {}
    for number, n in sorted(counts.items()):
        name = "other" if number == ERRNO_SLOTS else errno_mod.errorcode.get(number, f"errno {number}")
        names[name] = names.get(name, 0) + n
    return names


Sample = tuple[int, bool, int, bool]  # (time ns, buffer full, sender CPU ns so far, sender asleep)


def full_time(samples: Sequence[Sample]) -> tuple[int, int, int]:
    """(length of the intervals that start at a full sample, the sender's CPU time in them, the part of
    them that started with the sender asleep), all in ns."""
    full_ns = cpu_ns = asleep_ns = 0
    for (t0, full, c0, asleep), (t1, _, c1, _) in zip(samples, samples[1:]):
        if full and t1 > t0:
            full_ns += t1 - t0
            cpu_ns += max(c1 - c0, 0)
            asleep_ns += t1 - t0 if asleep else 0
    return full_ns, cpu_ns, asleep_ns


def fraction(full_ns: int, cpu_ns: int, asleep_ns: int) -> float | None:
    """busy_wait from the sums; None if the buffer was never found full (1.0 if the sender only waited for a CPU)."""
    if not full_ns:
        return None
    return round(cpu_ns / (cpu_ns + asleep_ns), 4) if cpu_ns + asleep_ns else 1.0


def busy_wait(samples: Sequence[Sample]) -> float | None:
    return fraction(*full_time(samples))


def loop_busy_wait(full_ns: int, cpu_ns: int, wait_ns: int) -> tuple[float | None, BusyWaitDetail]:
    """The C loop's sums (its run delay is exact: it reads it while it runs): busy_wait and its detail."""
    asleep_ns = max(full_ns - cpu_ns - wait_ns, 0)
    found = detail(full_ns, cpu_ns, asleep_ns, LOOP_BUSY_METHOD)
    found["waiting_s"] = round(wait_ns / 1e9, 4)
    return fraction(full_ns, cpu_ns, asleep_ns), found


def detail(full_ns: int, cpu_ns: int, asleep_ns: int, method: str) -> BusyWaitDetail:
    """What busy_wait was computed from, for the result."""
    return {
        "full_s": round(full_ns / 1e9, 4),
        "cpu_s": round(cpu_ns / 1e9, 4),
        "asleep_s": round(asleep_ns / 1e9, 4),
        "method": method,
    }


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): a dump of every UDP socket with its memory info
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST_DUMP = 0x1 | 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_WMEM_ALLOC, SK_MEMINFO_SNDBUF = 2, 3
INET_DIAG_MSG_LEN = 72


class SockDiag:
    """sk_wmem_alloc and sk_sndbuf of every UDP socket in the namespace it was made in (make it there)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.families = [f for f in (socket.AF_INET, socket.AF_INET6) if f != socket.AF_INET6 or socket.has_ipv6]
        self.seq = 0

    def read(self) -> list[tuple[int, int]]:
        """(wmem_alloc, sndbuf) per socket; OSError if the kernel has no UDP sock_diag."""
        found: list[tuple[int, int]] = []
        for family in self.families:
            self.seq += 1
            req = struct.pack("=BBBBI48x", family, socket.IPPROTO_UDP, 1 << (INET_DIAG_SKMEMINFO - 1), 0, 0xFFFFFFFF)
            self.sock.send(
                struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, self.seq, 0) + req
            )
            found += self._replies()
        return found

    def _replies(self) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:  # ENOENT: this kernel has no UDP sock_diag (CONFIG_INET_UDP_DIAG)
                    (code,) = struct.unpack_from("=i", data, off + 16)
                    raise OSError(-code, os.strerror(-code))
                if kind == SOCK_DIAG_BY_FAMILY:
                    found += self._meminfo(data, off + 16 + INET_DIAG_MSG_LEN, off + length)
                off += (length + 3) & ~3
                if length < 16:
                    return found

    @staticmethod
    def _meminfo(data: bytes, at: int, end: int) -> list[tuple[int, int]]:
        while at + 4 <= end:
            alen, atype = struct.unpack_from("=HH", data, at)
            if atype == INET_DIAG_SKMEMINFO and alen >= 4 + 4 * (SK_MEMINFO_SNDBUF + 1):
                mem = struct.unpack_from(f"={SK_MEMINFO_SNDBUF + 1}I", data, at + 4)
                return [(mem[SK_MEMINFO_WMEM_ALLOC], mem[SK_MEMINFO_SNDBUF])]
            if alen < 4:
                break
            at += (alen + 3) & ~3
        return []

    def close(self) -> None:
        self.sock.close()


Clock = Callable[[], "tuple[int, bool] | None"]  # (CPU ns so far, asleep now); None when not readable


def _asleep(tids: Iterable[int]) -> bool:
    """No thread in state R (running or waiting for a CPU): they all sleep (a thread that just ended is not R)."""
    for tid in tids:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{tid}/stat").read_text().rpartition(")")[2].split()[0] == "R":
                return False
    return True


def _cpu_clock(pid: int, thread: bool) -> int | None:
    """The CPU clock of another process or thread (clock_getcpuclockid(3) / pthread_getcpuclockid(3)'s ids:
    CPUCLOCK_SCHED, per thread with bit 2): exact up to now, and reading it also brings the running task's
    accounting (schedstat, its cgroup's usage) up to date, which otherwise lags up to a scheduler tick."""
    with contextlib.suppress(OSError):
        return time.clock_gettime_ns(((~pid) << 3) | (6 if thread else 2))
    return None


def cgroup_cpu(path: Path) -> Clock:
    """CPU time of all processes of a v2 cgroup (``cpu.stat``, there without the cpu controller; it keeps
    what exited processes used), and whether all its threads sleep (``cgroup.threads``)."""

    def read() -> tuple[int, bool] | None:
        try:
            tids = [int(tid) for tid in (path / "cgroup.threads").read_text().split()]
            for tid in tids:  # accounting up to now first
                _cpu_clock(tid, thread=True)
            stat = dict(line.split(" ", 1) for line in (path / "cpu.stat").read_text().splitlines())
        except (OSError, ValueError):
            return None
        return int(stat["usage_usec"]) * 1000, _asleep(tids)

    return read


def proc_cpu(pid: int) -> Clock:
    """CPU time (its process CPU clock) of one process, and whether all its threads sleep; None once it is gone."""

    def read() -> tuple[int, bool] | None:
        cpu = _cpu_clock(pid, thread=False)
        try:
            tids = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            return None
        return None if cpu is None else (cpu, _asleep(tids))

    return read

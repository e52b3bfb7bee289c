"""sock_wfree timing probes: the interface, backend choice, and the timestamp estimate.

A probe measures, per TX datagram of the run's own socket, the time from being
charged to the socket (``skb_set_owner_w``) to ``sock_wfree`` releasing it.

* ``bpf`` (exact): kprobes on both functions via bcc; see ``bpfprobe.py``.
* ``timestamp`` (estimate): the receiver's ``SO_TIMESTAMPNS`` minus the send time
  written into the payload.  With ``net.core.netdev_tstamp_prequeue=0`` (global:
  set and restored through the sysctl machinery) the kernel stamps the skb in
  ``__netif_receive_skb_core``, just before ``ip_rcv_core()`` orphans it and runs
  ``sock_wfree``.  Limits: the charge happens a little after the send time is
  read (the estimate is high by the syscall entry, well under a microsecond);
  datagrams the receiver never reads (RcvbufErrors, drops) give no sample; it
  cannot tell *where* sock_wfree ran (contexts stay empty); on a qdisc'd link it
  stamps at reception, so time spent queued in the qdisc is included, as it is
  for sock_wfree itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.measure.histogram import latency_stats


class WfreeProbe(Protocol):
    """What the sender needs from a probe; one instance per session."""

    backend: str  # "bpf" or "timestamp"
    reason: str  # why this backend was chosen
    method: str  # one line: how the figure is obtained
    receiver_timestamps: bool  # does the receiver need SO_TIMESTAMPNS and payload stamps?

    def prepare(self, sysctls: Sysctls) -> None: ...

    def begin(self, sock_fd: int, tgid: int) -> None: ...

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> dict[str, Any]: ...

    def close(self) -> None: ...


class TimestampProbe:
    backend = "timestamp"
    receiver_timestamps = True
    method = (
        "estimate: receiver SO_TIMESTAMPNS taken in __netif_receive_skb_core "
        "(net.core.netdev_tstamp_prequeue=0) minus the send time in the payload"
    )

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def prepare(self, sysctls: Sysctls) -> None:
        sysctls.set("net.core.netdev_tstamp_prequeue", 0)

    def begin(self, sock_fd: int, tgid: int) -> None:
        pass

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> dict[str, Any]:
        stats = latency_stats(rx_latencies_ns)
        stats.update(
            backend=self.backend,
            method=self.method,
            contexts={},
            lost_samples=lost_samples,
            coverage=round(stats["count"] / sent, 4) if sent else 0.0,
        )
        return stats

    def close(self) -> None:
        pass


def kernel_headers_dir(release: str | None = None) -> Path | None:
    release = release or os.uname().release
    for cand in (Path(f"/lib/modules/{release}/build"), Path(f"/usr/src/linux-headers-{release}")):
        if (cand / "include").exists():
            return cand
    return None


def bpf_unavailable() -> str | None:
    """None if eBPF kprobe tracing with bcc can work here, else why not and the fix."""
    release = os.uname().release
    if not Path("/sys/bus/event_source/devices/kprobe").exists() and not Path("/sys/kernel/tracing/kprobe_events").exists():
        if not Path("/proc/sys/debug/kprobes-optimization").exists():
            return (
                f"this kernel ({release}) has no kprobes (CONFIG_KPROBES unset), so eBPF tracing cannot work: "
                "use --udpsend-backend timestamp, or run the tests under a kernel with kprobes via --udpsend-kernel"
            )
        return (
            f"this kernel ({release}) has kprobes but no kprobe events (no kprobe PMU, tracefs not mounted): "
            "mount tracefs at /sys/kernel/tracing or use --udpsend-backend timestamp"
        )
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable: apt-get install python3-bpfcc and use a venv made with --system-site-packages"
    if not hasattr(bcc, "BPF"):
        return "the 'bcc' module found is not the BPF Compiler Collection (the PyPI 'bcc' is unrelated): pip uninstall bcc; apt-get install python3-bpfcc"
    if kernel_headers_dir(release) is None and not Path("/sys/kernel/kheaders.tar.xz").exists():
        return f"no kernel headers for {release}: apt-get install linux-headers-{release} (or provide /lib/modules/{release}/build)"
    return None


def choose(requested: str) -> tuple[str, str]:
    """(backend, why) for ``--udpsend-backend``, without building anything; PrivilegeError if bpf cannot work."""
    if requested == "timestamp":
        return "timestamp", "chosen with --udpsend-backend timestamp"
    problem = bpf_unavailable()
    if problem is None:
        return "bpf", "kprobes, bcc and kernel headers are available" if requested == "auto" else "chosen with --udpsend-backend bpf"
    if requested == "bpf":
        raise PrivilegeError(f"--udpsend-backend bpf: {problem}.")
    return "timestamp", f"eBPF unavailable: {problem}"


def select(requested: str) -> WfreeProbe:
    """The probe for ``--udpsend-backend``, built now (once per session: the caller keeps it).

    A bpf probe that fails to compile is a PrivilegeError under ``bpf``; under ``auto``
    the timestamp estimate is used instead, and its reason says why.
    """
    backend, why = choose(requested)
    if backend == "bpf":
        from pytest_udpsend.measure.bpfprobe import BpfProbe

        probe = BpfProbe(why)
        try:
            probe.build()
        except PrivilegeError as exc:
            if requested == "bpf":
                raise PrivilegeError(f"--udpsend-backend bpf: {exc}") from None
            return TimestampProbe(f"eBPF looked available but {exc}; fell back to the timestamp estimate")
        return probe
    return TimestampProbe(why)

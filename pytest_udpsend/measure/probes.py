"""sock_wfree timing probes: the interface, backend choice, and the timestamp estimate.

A probe measures, per TX datagram of the run's own socket, the time from being
charged to the socket (``skb_set_owner_w``) to ``sock_wfree`` releasing it.

* ``bpf`` (exact): kprobes on both functions via bcc; see ``bpfprobe.py``.
* ``tracepoint`` (exact counts and contexts, latency as an interval): raw tracepoints where
  kprobes and fentry are not allowed; see ``tpprobe.py``.
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

  Its premise, that the receiver's ``ip_rcv_core()`` releases the charge, fails where
  something orphans the skb earlier; there the receive stamp measures transit, not the
  release, so the estimate gives no number and says why (``wfree["unavailable"]``),
  decided from the topology before the run (``timestamp_premise``), never from the figures:
  netem with a delay, jitter or rate (``skb_orphan_partial()`` in ``netem_enqueue()``: the
  charge goes at enqueue; 6.1 lane, ``netem delay 5ms``: sock_wfree p50 25.6 us) and NIC
  links (the driver's TX completion frees the skb on the sender's side, or ``start_xmit``
  orphans it: virtio_net without napi_tx).  Checked and not early on this plugin's paths:
  veth across namespaces (``skb_scrub_packet()`` keeps the socket since 5.0), tbf, htb,
  sfq, fq_codel, prio, the fifos and netem without delay/jitter/rate (they hold or drop the
  charged skb), GRO on veth since 5.13 (``skb_prepare_for_gro()``; the aggregate, stamped
  and orphaned in the receiver's ``__netif_receive_skb_core`` / ``ip_rcv_core``, carries
  every merged datagram's charge, and its segments inherit its stamp).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.measure.histogram import latency_stats
from pytest_udpsend.measure.shapes import Backend, Wfree
from pytest_udpsend.measure.wfree import not_measured

if TYPE_CHECKING:
    from pytest_udpsend.host.topology import TopologySpec

NETEM_ORPHANS = (
    "delay",
    "jitter",
    "rate",
)  # netem_enqueue(): if (q->latency || q->jitter || q->rate) skb_orphan_partial()


class WfreeProbe(Protocol):
    """What the sender needs from a probe; one instance per session."""

    backend: Backend
    reason: str  # why this backend was chosen
    method: str  # one line: how the figure is obtained
    receiver_timestamps: bool  # does the receiver need SO_TIMESTAMPNS and payload stamps?

    def prepare(self, sysctls: Sysctls, path: TopologySpec | None = None, largest: int | None = None) -> None:
        """Per run, before it: ``path`` its topology, ``largest`` its largest UDP payload (None: not known)."""

    def begin(self, sock_fd: int, tgid: int) -> None: ...

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> Wfree: ...

    def close(self) -> None: ...


def timestamp_premise(path: TopologySpec | None) -> str | None:
    """None where the receive stamp times the release (the receiver's ip_rcv_core orphans the skb),
    else one sentence: what releases the charge earlier on this path, and the fix.  ``path`` None:
    not known (a caller that gives no topology), taken as plain veth."""
    if path is None:
        return None
    fix = "use --udpsend-backend bpf (the kernel lane has it) for the release timing"
    if path.is_nic:
        return (
            f"sock_wfree timing not measurable with the timestamp estimate on a {path.link} NIC link: the charge is "
            "released at TX completion on the sender's port (the driver frees the skb), never in the receiver's "
            f"ip_rcv_core, so the receive stamp would measure the transit instead; {fix}"
        )
    qdisc = path.qdisc
    if qdisc is not None and qdisc.kind == "netem":
        early = [key for key in NETEM_ORPHANS if qdisc.params.get(key)]
        if early:
            return (
                f"sock_wfree timing not measurable with the timestamp estimate under '{qdisc.text}': netem with "
                f"{'/'.join(early)} orphans each skb at enqueue (skb_orphan_partial() in netem_enqueue()), so "
                f"sock_wfree runs before the delay and the receive stamp would measure the transit instead; {fix}"
            )
    return None


class TimestampProbe:
    backend: Backend = "timestamp"
    receiver_timestamps = True
    method = (
        "estimate: receiver SO_TIMESTAMPNS taken in __netif_receive_skb_core "
        "(net.core.netdev_tstamp_prequeue=0) minus the send time in the payload"
    )

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.unavailable: str | None = None  # this run's path defeats the estimate: why (see timestamp_premise)

    def prepare(self, sysctls: Sysctls, path: TopologySpec | None = None, largest: int | None = None) -> None:
        """Per run: where the premise fails, neither the receiver's stamps nor the global sysctl are asked for."""
        self.unavailable = timestamp_premise(path)
        self.receiver_timestamps = self.unavailable is None
        if self.receiver_timestamps:
            sysctls.set("net.core.netdev_tstamp_prequeue", 0)

    def begin(self, sock_fd: int, tgid: int) -> None:
        pass

    def end(self, rx_latencies_ns: Sequence[int], lost_samples: int, sent: int) -> Wfree:
        if self.unavailable is not None:
            return not_measured(self.backend, self.unavailable)
        stats = latency_stats(rx_latencies_ns)
        return {
            "count": stats["count"],
            "p50_us": stats["p50_us"],
            "p90_us": stats["p90_us"],
            "p99_us": stats["p99_us"],
            "max_us": stats["max_us"],
            "histogram": stats["histogram"],
            "backend": self.backend,
            "method": self.method,
            "contexts": {},
            "lost_samples": lost_samples,
            "coverage": round(stats["count"] / sent, 4) if sent else 0.0,
        }

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
    if os.geteuid() != 0:  # also: tracefs is often mode 700, so a non-root look into it fails
        return "loading eBPF programs needs root: run the tests as root"
    if (
        not Path("/sys/bus/event_source/devices/kprobe").exists()
        and not Path("/sys/kernel/tracing/kprobe_events").exists()
    ):
        if not Path("/proc/sys/debug/kprobes-optimization").exists():
            return (
                f"this kernel ({release}) has no kprobes (CONFIG_KPROBES unset), so the bpf backend's kprobes cannot "
                "attach (tracepoint eBPF may still work: see udpsend doctor): use --udpsend-backend timestamp, or run "
                "the tests under a kernel with kprobes via --udpsend-kernel"
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
        return (
            f"no kernel headers for {release} (/lib/modules/{release}/build): install the headers package of this "
            f"kernel where one exists (udpsend doctor says whether apt has linux-headers-{release}), or use the "
            "kernel lane (--udpsend-kernel) with a Debian kernel"
        )
    return None


def choose(requested: str) -> tuple[Backend, str]:
    """(backend, why) for ``--udpsend-backend``, without building anything; PrivilegeError if the
    backend asked for by name cannot work.  ``auto``: bpf where kprobes work, else tracepoint, else
    the timestamp estimate."""
    if requested == "timestamp":
        return "timestamp", "chosen with --udpsend-backend timestamp"
    from pytest_udpsend.measure.tpprobe import tracepoint_unavailable

    if requested == "tracepoint":
        problem = tracepoint_unavailable()
        if problem is not None:
            raise PrivilegeError(f"--udpsend-backend tracepoint: {problem}.")
        return "tracepoint", "chosen with --udpsend-backend tracepoint"
    problem = bpf_unavailable()
    if problem is None:
        return (
            "bpf",
            "kprobes, bcc and kernel headers are available"
            if requested == "auto"
            else "chosen with --udpsend-backend bpf",
        )
    if requested == "bpf":
        raise PrivilegeError(f"--udpsend-backend bpf: {problem}.")
    tp_problem = tracepoint_unavailable()
    if tp_problem is None:
        return (
            "tracepoint",
            f"the bpf backend cannot work ({problem}); tracepoint eBPF, bcc and kernel BTF are available",
        )
    return "timestamp", f"eBPF unavailable: {problem}; tracepoints: {tp_problem}"


def _tracepoint_or_timestamp(requested: str, why: str) -> WfreeProbe:
    """The tracepoint probe, built now; under ``auto`` the timestamp estimate where it fails to load."""
    from pytest_udpsend.measure.tpprobe import TracepointProbe

    probe = TracepointProbe(why)
    try:
        probe.build()
    except PrivilegeError as exc:
        if requested == "tracepoint":
            raise PrivilegeError(f"--udpsend-backend tracepoint: {exc}") from None
        return TimestampProbe(f"{why}, but {exc}; fell back to the timestamp estimate")
    return probe


def select(requested: str) -> WfreeProbe:
    """The probe for ``--udpsend-backend``, built now (once per session: the caller keeps it).

    A probe that fails to build is a PrivilegeError when asked for by name; under ``auto``
    the next one is tried (bpf, tracepoint, timestamp), and its reason says why.
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
            from pytest_udpsend.measure.tpprobe import tracepoint_unavailable

            if tracepoint_unavailable() is None:
                return _tracepoint_or_timestamp(requested, f"eBPF kprobes looked available but {exc}")
            return TimestampProbe(f"eBPF looked available but {exc}; fell back to the timestamp estimate")
        return probe
    if backend == "tracepoint":
        return _tracepoint_or_timestamp(requested, why)
    return TimestampProbe(why)

"""``udpsend doctor``: what this host can do, one line per capability with the fix."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host import privileges
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import probes

Check = tuple[str, bool, str]  # (capability, ok, detail or fix)


def _root() -> Check:
    problem = privileges.missing()
    return ("root / CAP_NET_ADMIN + CAP_SYS_ADMIN", problem is None, problem or f"euid {os.geteuid()}, capabilities present")


def _topology() -> list[Check]:
    """Build a real pair with a tbf qdisc, then remove it: namespaces, veth and tc in one go."""
    from pytest_udpsend.host import topology

    undo = UndoStack()
    out: list[Check] = []
    try:
        spec = topology.make_spec(qdisc="tbf rate 100mbit burst 32kb latency 10ms", rps_cpus=[0])
        topology.build(spec, undo, topology.SubnetAllocator(7), "doctor")
        out += [("network namespaces", True, "created and removed two"), ("veth", True, "created a pair"),
                ("tc qdiscs (tbf)", True, "installed tbf on a veth"), ("RPS masks", True, "set rps_cpus on a veth")]  # fmt: skip
    except Exception as exc:  # report, do not crash: that is the point of a doctor
        out.append(("namespaces / veth / tc / RPS", False, f"{exc}: run as root on a kernel with CONFIG_NET_NS, CONFIG_VETH, CONFIG_NET_SCH_TBF"))
    finally:
        undo.flush()
    return out


def _sysctls() -> list[Check]:
    from pytest_udpsend.host.journal import Journal
    from pytest_udpsend.host.sysctl import OWN_NETNS, SysctlHost, outside_initial_netns

    host = SysctlHost(Journal())
    out: list[Check] = []
    for name in ("net.core.netdev_budget", "net.core.netdev_budget_usecs", "net.core.netdev_max_backlog",
                 "net.core.wmem_max", "net.core.netdev_tstamp_prequeue", "net.ipv4.udp_mem"):  # fmt: skip
        path = Path("/proc/sys", *name.split("."))
        if not path.exists():
            out.append((f"sysctl {name}", False, f"not here: {OWN_NETNS}" if outside_initial_netns() else "absent on this kernel"))
            continue
        try:
            scope = host.scope(name)
        except PrivilegeError as exc:  # a container's own network namespace
            out.append((f"sysctl {name}", False, str(exc)))
            continue
        writable = os.access(path, os.W_OK)
        where = "global: initial namespace only (journaled when changed)" if scope == "global" else "per namespace"
        out.append((f"sysctl {name}", writable, where if writable else f"{where}; not writable: run as root"))
    return out


def _tracing() -> list[Check]:
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    kprobes = Path("/sys/bus/event_source/devices/kprobe").exists() or Path("/proc/sys/debug/kprobes-optimization").exists()
    ftrace = Path("/sys/kernel/tracing/available_filter_functions").exists() or Path("/sys/kernel/debug/tracing").exists()
    problem = probes.bpf_unavailable()
    headers = probes.kernel_headers_dir()
    try:
        import bcc

        bcc_ok, bcc_detail = hasattr(bcc, "BPF"), getattr(bcc, "__file__", "?")
    except ImportError:
        bcc_ok, bcc_detail = False, "apt-get install python3-bpfcc; make the venv with --system-site-packages"
    return [
        ("kprobes", kprobes, "present" if kprobes else "CONFIG_KPROBES unset: eBPF tracing impossible; use the kernel lane"),
        ("ftrace / tracefs", ftrace, "present" if ftrace else "no tracefs: mount it at /sys/kernel/tracing (or kernel lacks ftrace)"),
        ("BTF (/sys/kernel/btf/vmlinux)", btf, "present" if btf else "CONFIG_DEBUG_INFO_BTF unset (the bcc probe does not need it)"),
        ("bcc (python3-bpfcc)", bcc_ok, bcc_detail),
        ("kernel headers", headers is not None,
         str(headers) if headers else f"apt-get install linux-headers-{os.uname().release}"),
        ("sock_wfree backend", True, "bpf (exact)" if problem is None else f"timestamp (estimate): {problem}"),
    ]  # fmt: skip


def _lane() -> list[Check]:
    from pytest_udpsend.host.state import state_path

    kvm_dev = os.access("/dev/kvm", os.R_OK | os.W_OK)
    verdict_file = state_path(f"kvm-verdict-{os.uname().release}")  # only read: a doctor creates nothing
    verdict = verdict_file.read_text().strip() if verdict_file.exists() else None
    if not kvm_dev:
        kvm = ("KVM for the kernel lane", False, "no usable /dev/kvm: the lane uses TCG (slow but works)")
    elif verdict == "no":
        kvm = ("KVM for the kernel lane", False, "a KVM guest hung here (nested virtualisation?): the lane uses TCG")
    else:
        kvm = ("KVM for the kernel lane", True, "/dev/kvm usable" + ("" if verdict else " (a first lane run confirms it boots)"))
    vng = shutil.which("vng") or shutil.which("vng", path=str(Path(sys.executable).parent))
    qemu = shutil.which("qemu-system-x86_64")
    return [
        kvm,
        ("virtme-ng", bool(vng), vng or "pip install virtme-ng (ci/prepare-kernel.sh does)"),
        ("qemu-system-x86_64", bool(qemu), qemu or "apt-get install qemu-system-x86 (ci/prepare-kernel.sh does)"),
    ]


def _cgroups() -> Check:
    from pytest_udpsend.host.cgroup import controller_roots

    mounts = controller_roots()
    if mounts:
        kind, where = next(iter(mounts.items()))
        return ("cgroup cpu controller (cpu_max)", True, f"{kind} at {where}")
    return ("cgroup cpu controller (cpu_max)", False, "no cgroup hierarchy with the cpu controller: cpu_max unavailable")


def collect() -> list[Check]:
    checks: list[Check] = [_root()]
    sections: list[Callable[[], list[Check]]] = [_topology, _sysctls] if checks[0][1] else []
    for section in sections:
        checks += section()
    checks += _tracing() + _lane() + [_cgroups()]
    return checks


def run_checks() -> int:
    """Print the table; exit 0 when namespaces work (the core), 1 otherwise."""
    checks = collect()
    width = max(len(c[0]) for c in checks)
    print(f"udpsend doctor: kernel {os.uname().release}, {os.cpu_count()} CPUs")
    for name, ok, detail in checks:
        print(f"  {'ok ' if ok else 'NO '} {name:<{width}}  {detail}")
    core = {"root / CAP_NET_ADMIN + CAP_SYS_ADMIN", "network namespaces", "veth"}
    return 0 if all(ok for name, ok, _ in checks if name in core) and any(c[0] == "veth" for c in checks) else 1




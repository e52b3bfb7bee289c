"""``udpsend doctor``: what this host can do, one line per capability with the fix."""

from __future__ import annotations

import ctypes
import errno
import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.frontend.options import BACKEND
from pytest_udpsend.host import privileges
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import probes, tploader

Check = tuple[str, bool | None, str]  # (capability, ok / None: there but not usable as is, detail and fix)


def _root() -> Check:
    problem = privileges.missing()
    return (
        "root / CAP_NET_ADMIN + CAP_SYS_ADMIN",
        problem is None,
        problem or f"euid {os.geteuid()}, capabilities present",
    )


def _topology() -> list[Check]:
    """Build a real pair with a tbf qdisc, then remove it: namespaces, veth and tc in one go."""
    from pytest_udpsend.host import topology

    undo = UndoStack()
    out: list[Check] = []
    try:
        spec = topology.make_spec(qdisc="tbf rate 100mbit burst 32kb latency 10ms", rps_cpus=[0])
        topology.build(spec, undo, topology.SubnetAllocator(7), "doctor")
        out += [
            ("network namespaces", True, "created and removed two"),
            ("veth", True, "created a pair"),
            ("tc qdiscs (tbf)", True, "installed tbf on a veth"),
            ("RPS masks", True, "set rps_cpus on a veth"),
        ]
    except Exception as exc:  # report, do not crash: that is the point of a doctor
        out.append(
            (
                "namespaces / veth / tc / RPS",
                False,
                f"{exc}: run as root on a kernel with CONFIG_NET_NS, CONFIG_VETH, CONFIG_NET_SCH_TBF",
            )
        )
    finally:
        undo.flush()
    return out


def _sysctls() -> list[Check]:
    from pytest_udpsend.host.journal import Journal
    from pytest_udpsend.host.sysctl import OWN_NETNS, SysctlHost, outside_initial_netns

    host = SysctlHost(Journal())
    out: list[Check] = []
    for name in (
        "net.core.netdev_budget",
        "net.core.netdev_budget_usecs",
        "net.core.netdev_max_backlog",
        "net.core.wmem_max",
        "net.core.netdev_tstamp_prequeue",
        "net.ipv4.udp_mem",
    ):
        path = Path("/proc/sys", *name.split("."))
        if not path.exists():
            out.append(
                (
                    f"sysctl {name}",
                    False,
                    f"not here: {OWN_NETNS}" if outside_initial_netns() else "absent on this kernel",
                )
            )
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


# --- tracing: what this kernel allows, mechanism by mechanism (issue 26) -------------------------

KHEADERS = Path("/sys/kernel/kheaders.tar.xz")  # CONFIG_IKHEADERS: bcc reads headers from here
BTF = Path("/sys/kernel/btf/vmlinux")
LANE = "the kernel lane (--udpsend-kernel) runs the exact probe under a Debian kernel (ci/prepare-kernel.sh)"
MOUNT_TRACEFS = "mount -t tracefs nodev /sys/kernel/tracing"
_SYSCALLS = {"x86_64": (321, 298), "aarch64": (280, 241)}  # (bpf, perf_event_open) per architecture
_BPF_PROG_LOAD = 5
_TRACEPOINT, _RAW_TRACEPOINT, _TRACING = 5, 17, 26  # enum bpf_prog_type
_TRACE_RAW_TP, _TRACE_FENTRY = 23, 24  # enum bpf_attach_type
_RETURN_0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit


def apt_has(package: str) -> bool:
    """True when apt would install ``package`` here: only then is ``apt-get install`` a fix."""
    apt = shutil.which("apt-cache")
    if apt is None:
        return False
    try:
        out = subprocess.run([apt, "policy", package], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Candidate:" in out and "Candidate: (none)" not in out


def _install(package: str, otherwise: str) -> str:
    return f"apt-get install {package}" if apt_has(package) else otherwise


def kernel_config() -> tuple[str | None, dict[str, str]]:
    """(where it was read, {CONFIG_X: value}) from /boot/config-$(uname -r) or /proc/config.gz; (None, {}) if neither."""
    boot, proc = Path(f"/boot/config-{os.uname().release}"), Path("/proc/config.gz")
    try:
        if boot.exists():
            text, where = boot.read_text(errors="replace"), str(boot)
        elif proc.exists():
            text, where = gzip.decompress(proc.read_bytes()).decode(errors="replace"), str(proc)
        else:
            return None, {}
    except OSError:
        return None, {}
    config = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)
    return where, config


def mounted_filesystems() -> dict[str, str]:
    """{fstype: first mount point} from /proc/self/mounts."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.setdefault(fields[2], fields[1])
    return out


def kernel_filesystems() -> set[str]:
    """The filesystem types this kernel can mount (/proc/filesystems)."""
    return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}


def _btf_ids(names: tuple[str, ...]) -> dict[str, int]:
    """Type ids of ``names`` in the kernel's BTF (a FUNC for fentry, a btf_trace_* TYPEDEF for tp_btf)."""
    try:
        return tploader.btf_type_ids(names, BTF)
    except (OSError, ValueError, struct.error):
        return {}


def _syscall(index: int, *args: object) -> int:
    """The syscall's result, or -errno; -ENOSYS on an architecture whose numbers we do not know."""
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return -errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.syscall(numbers[index], *args))
    return result if result >= 0 else -ctypes.get_errno()


def _bpf_load(prog_type: int, attach_type: int = 0, btf_id: int = 0) -> int:
    """Load ``r0 = 0; exit`` of this type and close it at once: 0, or the errno of the refusal. Nothing is attached."""
    insns = ctypes.create_string_buffer(_RETURN_0)
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, prog_type, 2, ctypes.addressof(insns), ctypes.addressof(license_))
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = _syscall(0, ctypes.c_int(_BPF_PROG_LOAD), buf, ctypes.c_uint(len(attr)))
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


def _perf_open(kind: int, config: int) -> int:
    """Open a disabled perf event of this kind on this process and close it at once: 0, or the errno."""
    attr = bytearray(112)  # PERF_ATTR_SIZE_VER5
    struct.pack_into("<IIQ", attr, 0, kind, len(attr), config)
    struct.pack_into("<Q", attr, 40, 1)  # flags: disabled
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = _syscall(1, buf, ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(8))  # FD_CLOEXEC
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


def _err(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"


def _lockdown(config: dict[str, str]) -> tuple[str | None, str]:
    """(mode, where it was read): securityfs when mounted, else the build's forced mode."""
    path = Path("/sys/kernel/security/lockdown")
    if path.exists():
        text = path.read_text()
        mode = text[text.index("[") + 1 : text.index("]")] if "[" in text else text.strip()
        return mode, str(path)
    for mode in ("confidentiality", "integrity", "none"):
        if config.get(f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{mode.upper()}") == "y":
            return mode, f"forced by CONFIG_LOCK_DOWN_KERNEL_FORCE_{mode.upper()}"
    if config and config.get("CONFIG_SECURITY_LOCKDOWN_LSM") != "y":
        return "none", "CONFIG_SECURITY_LOCKDOWN_LSM unset"
    return None, "securityfs not mounted"


def _listable(path: Path) -> bool:
    """A folder this user may look into: tracefs is often mode 700, and a non-root doctor still reports."""
    try:
        return path.is_dir() and os.access(path, os.R_OK | os.X_OK)
    except PermissionError:
        return False


def tracing() -> list[Check]:
    """One line per tracing mechanism: whether this kernel allows it, what that means here, and a fix that can work."""
    release = os.uname().release
    where, config = kernel_config()

    def built(option: str) -> bool:  # without a readable config, assume built and let the attempts tell
        return config.get(option) == "y" if config else True

    source = where or "no kernel config readable"
    root = privileges.missing() is None
    mounts, known = mounted_filesystems(), kernel_filesystems()
    tracefs = mounts.get("tracefs") or next(
        (m for t, m in mounts.items() if t == "debugfs" and _listable(Path(m, "tracing/events"))), None
    )
    tracefs_events = Path(tracefs, "events") if tracefs and _listable(Path(tracefs, "events")) else None
    ids = _btf_ids(("sock_wfree", "btf_trace_netif_receive_skb")) if BTF.exists() else {}
    mode, mode_from = _lockdown(config)
    locked = f", lockdown {mode}" if mode not in (None, "none") else ""
    out: list[Check] = []

    # lockdown: only ever raised at run time, so the fix is another kernel (or another boot)
    if mode is None:
        out.append(
            (
                "kernel lockdown",
                None,
                "unknown (securityfs not mounted, no kernel config): read it after "
                "`mount -t securityfs securityfs /sys/kernel/security`",
            )
        )
    elif mode == "none":
        out.append(("kernel lockdown", True, f"none ({mode_from}): nothing refused on its account"))
    else:
        fix = (
            "no fix on this kernel (the build forces it)"
            if "forced" in mode_from
            else "boot without lockdown= to lift it"
        )
        out.append(
            (
                "kernel lockdown",
                False,
                f"{mode} ({mode_from}): the kernel may refuse fentry/fexit and the function tracer; {fix}; {LANE}",
            )
        )

    # kprobes: what the bpf backend (bcc) attaches to sock_wfree
    if config:
        has_kprobes = built("CONFIG_KPROBES")
    else:
        has_kprobes = (
            Path("/sys/bus/event_source/devices/kprobe").exists()
            or Path("/proc/sys/debug/kprobes-optimization").exists()
        )
    if has_kprobes:
        out.append(("kprobes", True, f"present ({source}): the bpf backend can attach to sock_wfree"))
    else:
        out.append(
            (
                "kprobes",
                False,
                f"CONFIG_KPROBES unset ({source}): the bpf backend cannot attach here; no fix on this kernel; {LANE}",
            )
        )

    # fentry/fexit: needs BTF and the ftrace trampoline; lockdown may refuse it at load
    if "sock_wfree" not in ids:
        out.append(("fentry/fexit", False, "needs kernel BTF with sock_wfree (see kernel BTF); " + LANE))
    elif not root:
        out.append(("fentry/fexit", None, "not tried: loading a program needs root"))
    else:
        code = _bpf_load(_TRACING, _TRACE_FENTRY, ids["sock_wfree"])
        out.append(
            ("fentry/fexit", True, "a fentry program on sock_wfree loads: exact timing without kprobes is possible")
            if code == 0
            else (
                "fentry/fexit",
                False,
                f"refused at load ({_err(code)}{locked}): sock_wfree cannot be hooked by function "
                f"entry here; no fix on this kernel; {LANE}",
            )
        )

    # tracepoints through perf: a BPF tracepoint program, attached by an event id read from tracefs
    backend_hint = (
        "--udpsend-backend tracepoint can use them"
        if "tracepoint" in BACKEND.kwargs.get("choices", ())
        else "pytest-udpsend has no tracepoint backend yet (sock_wfree stays an estimate here)"
    )
    load = _bpf_load(_TRACEPOINT) if root else None
    if load is None:
        out.append(("tracepoints via perf", None, "not tried: loading a program needs root"))
    elif load:
        out.append(
            (
                "tracepoints via perf",
                False,
                f"a BPF tracepoint program is refused ({_err(load)}{locked}); no fix on this kernel; {LANE}",
            )
        )
    elif tracefs_events is None:
        out.append(
            (
                "tracepoints via perf",
                None,
                "BPF tracepoint programs load, but attaching one needs the event id from "
                f"tracefs, which is not mounted: {MOUNT_TRACEFS}; {backend_hint}",
            )
        )
    else:
        id_file = tracefs_events / "net/netif_receive_skb/id"
        code = _perf_open(2, int(id_file.read_text())) if id_file.exists() else errno.ENOENT  # PERF_TYPE_TRACEPOINT
        out.append(
            (
                "tracepoints via perf",
                True,
                f"net:netif_receive_skb opens and BPF tracepoint programs load: where "
                f"sock_wfree ran is visible from tracepoints; {backend_hint}",
            )
            if code == 0
            else (
                "tracepoints via perf",
                False,
                f"perf_event_open on net:netif_receive_skb fails ({_err(code)}); no fix on this kernel",
            )
        )

    # raw_tracepoint / tp_btf: no tracefs needed (tp_btf reads arguments typed through BTF)
    if not root:
        out.append(("raw_tracepoint / tp_btf", None, "not tried: loading a program needs root"))
    else:
        raw = _bpf_load(_RAW_TRACEPOINT)
        btf_tp = (
            _bpf_load(_TRACING, _TRACE_RAW_TP, ids["btf_trace_netif_receive_skb"])
            if "btf_trace_netif_receive_skb" in ids
            else errno.ENOENT
        )
        if raw == 0 and btf_tp == 0:
            out.append(
                (
                    "raw_tracepoint / tp_btf",
                    True,
                    "both load, without tracefs: a probe can read the skb at "
                    f"net:netif_receive_skb through BTF; {backend_hint}",
                )
            )
        else:
            parts = [
                f"raw_tracepoint {'loads' if raw == 0 else 'refused (' + _err(raw) + ')'}",
                f"tp_btf {'loads' if btf_tp == 0 else 'refused (' + _err(btf_tp) + ')'}",
            ]
            out.append(
                (
                    "raw_tracepoint / tp_btf",
                    None if raw == 0 or btf_tp == 0 else False,
                    f"{', '.join(parts)}{locked}; no fix on this kernel for what is refused",
                )
            )

    # tracefs: where bcc, bpftrace and perf look tracepoints up by name; detected, never mounted here
    if tracefs_events is not None:
        out.append(("tracefs", True, f"mounted at {tracefs_events.parent}"))
    elif "tracefs" in known:
        out.append(
            (
                "tracefs",
                None,
                f"built in but not mounted: bcc, bpftrace and perf find tracepoints by name there; {MOUNT_TRACEFS}",
            )
        )
    else:
        out.append(
            (
                "tracefs",
                False,
                "not built (CONFIG_TRACING unset): no tracepoints by name, no event filters; no fix on this kernel",
            )
        )

    # event filters: exact per-process send-error counts from outside (perf --filter, tracefs filter files)
    hist = "" if built("CONFIG_HIST_TRIGGERS") else " (no hist triggers: CONFIG_HIST_TRIGGERS unset)"
    if tracefs_events is not None:
        has = (tracefs_events / "sock/sock_send_length/filter").exists()
        out.append(
            (
                "tracefs event filters",
                has,
                ("present" if has else "no sock:sock_send_length filter (kernel before 6.1?)")
                + f": a sender's send errors can be counted exactly from outside{hist}",
            )
        )
    elif "tracefs" in known and built("CONFIG_EVENT_TRACING"):
        out.append(
            (
                "tracefs event filters",
                None,
                f"built in (CONFIG_EVENT_TRACING), usable once tracefs is mounted: {MOUNT_TRACEFS}{hist}",
            )
        )
    else:
        out.append(
            ("tracefs event filters", False, "not built (no tracefs / CONFIG_EVENT_TRACING): no fix on this kernel")
        )

    # kernel BTF: types without headers (tp_btf, fentry, CO-RE)
    if BTF.exists():
        where_wfree = "has sock_wfree" if "sock_wfree" in ids else "no sock_wfree in it"
        out.append(
            (
                "kernel BTF",
                True,
                f"/sys/kernel/btf/vmlinux, {BTF.stat().st_size / 1e6:.1f} MB, {where_wfree}: "
                "probes can read kernel types without headers",
            )
        )
    else:
        out.append(
            (
                "kernel BTF",
                False,
                "CONFIG_DEBUG_INFO_BTF unset: no tp_btf or fentry, probes need kernel headers "
                "(the bcc kprobe probe does anyway); no fix on this kernel",
            )
        )

    # perf_event_open: paranoia matters only to non-root users
    paranoid_path = Path("/proc/sys/kernel/perf_event_paranoid")
    paranoid = paranoid_path.read_text().strip() if paranoid_path.exists() else "absent"
    code = _perf_open(1, 0)  # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK
    if code == 0:
        out.append(
            ("perf_event_open", True, f"works (perf_event_paranoid {paranoid}" + ("; root is exempt)" if root else ")"))
        )
    elif code == errno.ENOSYS or not built("CONFIG_PERF_EVENTS"):
        out.append(
            (
                "perf_event_open",
                False,
                "not available (CONFIG_PERF_EVENTS unset?): no tracepoint probes; no fix on this kernel",
            )
        )
    else:
        out.append(
            (
                "perf_event_open",
                False,
                f"refused ({_err(code)}, perf_event_paranoid {paranoid}): run as root, "
                "or sysctl -w kernel.perf_event_paranoid=1",
            )
        )

    # bcc and headers: only the kprobe backend needs them
    try:
        import bcc

        bcc_ok, bcc_detail = hasattr(bcc, "BPF"), getattr(bcc, "__file__", "?")
    except ImportError:
        bcc_ok, bcc_detail = (
            False,
            _install("python3-bpfcc", "no python3-bpfcc in apt's sources: bcc must come from its own build"),
        )
        if bcc_detail.startswith("apt-get"):
            bcc_detail += "; make the venv with --system-site-packages"
    out.append(("bcc (python3-bpfcc)", bcc_ok, bcc_detail))
    headers = probes.kernel_headers_dir() or (KHEADERS if KHEADERS.exists() else None)
    if headers is not None:
        out.append(("kernel headers", True, str(headers)))
    else:
        package = f"linux-headers-{release}"
        moot = "" if has_kprobes else " (moot here: no kprobes)"
        fallback = (
            f"no package {package} in apt's sources (a custom kernel): the bcc kprobe probe needs them{moot}; "
            f"{LANE}, with its headers"
        )
        out.append(("kernel headers", False, _install(package, fallback)))

    # the backend auto picks, in the words of the lines above
    problem = probes.bpf_unavailable()
    if problem is None:
        out.append(("sock_wfree backend", True, "bpf (exact)"))
    else:
        lacking = [
            what
            for what, ok in (("kprobes", has_kprobes), ("bcc", bcc_ok), ("kernel headers", headers is not None))
            if not ok
        ]
        why = f"the bpf backend needs {', '.join(lacking)} (see above)" if lacking else problem
        backend, _ = probes.choose("auto")
        what = (
            "tracepoint (exact counts and contexts; latency between tracepoints)"
            if backend == "tracepoint"
            else "timestamp (estimate)"
        )
        out.append(("sock_wfree backend", True, f"{what}: {why}"))
    return out


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
        kvm = (
            "KVM for the kernel lane",
            True,
            "/dev/kvm usable" + ("" if verdict else " (a first lane run confirms it boots)"),
        )
    vng = shutil.which("vng") or shutil.which("vng", path=str(Path(sys.executable).parent))
    qemu = shutil.which("qemu-system-x86_64")
    return [
        kvm,
        ("virtme-ng", bool(vng), vng or "pip install virtme-ng (ci/prepare-kernel.sh does)"),
        (
            "qemu-system-x86_64",
            bool(qemu),
            qemu
            or _install("qemu-system-x86", "no qemu-system-x86 in apt's sources: install qemu from your distribution")
            + " (ci/prepare-kernel.sh does)",
        ),
    ]


def _cgroups() -> Check:
    from pytest_udpsend.host.cgroup import controller_roots

    mounts = controller_roots()
    if mounts:
        kind, where = next(iter(mounts.items()))
        return ("cgroup cpu controller (cpu_max)", True, f"{kind} at {where}")
    return (
        "cgroup cpu controller (cpu_max)",
        False,
        "no cgroup hierarchy with the cpu controller: cpu_max unavailable",
    )


def collect() -> list[Check]:
    checks: list[Check] = [_root()]
    sections: list[Callable[[], list[Check]]] = [_topology, _sysctls] if checks[0][1] else []
    for section in sections:
        checks += section()
    checks += tracing() + _lane() + [_cgroups()]
    return checks


MARKS = {True: "ok ", None: "-- ", False: "NO "}


def run_checks() -> int:
    """Print the table; exit 0 when namespaces work (the core), 1 otherwise."""
    checks = collect()
    width = max(len(c[0]) for c in checks)
    print(f"udpsend doctor: kernel {os.uname().release}, {os.cpu_count()} CPUs")
    for name, ok, detail in checks:
        print(f"  {MARKS[ok]} {name:<{width}}  {detail}")
    core = {"root / CAP_NET_ADMIN + CAP_SYS_ADMIN", "network namespaces", "veth"}
    return 0 if all(ok for name, ok, _ in checks if name in core) and any(c[0] == "veth" for c in checks) else 1

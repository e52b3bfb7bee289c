"""The kernel lane's machinery: boot a kernel image in a VM, and the pytest arguments of the run inside it.

``--udpsend-kernel PATH`` boots PATH with virtme-ng (the host filesystem shared
in, read-only, plus one writable exchange directory), runs the same pytest
command there on the same node ids, and reports the guest's outcomes in this
session as ordinary test results whose ids carry the guest kernel release
(``test_x@6.1.0-56-amd64``).  Samples come back too, so --udpsend-json,
--udpsend-baseline and --udpsend-html work across the lane.  ``--udpsend-kernel host``
is the running kernel: the same run in a pytest subprocess, no VM.

Nothing here imports pytest.  The pieces, as xdist splits its controller and its worker (remote.py):
this module boots and waits (qemu, KVM or TCG, preconditions, the guest's arguments);
``lane/wire.py`` is what travels between the two sides (the selection, the reports);
``frontend/kernel_lane.py`` is the host side in the pytest session (the lanes, their reports
rebuilt there); ``frontend/guest.py`` is the guest side, a pytest plugin that needs nothing else
of the lane.  Several kernels in one run and the gate between them are frontend/kernel_gate.py's.

KVM is used when a guest boots with it within a short deadline; here (nested
virtualisation) it hangs, so that verdict is cached under /run and TCG is used,
single-threaded (6.12 oopses under multi-threaded TCG with 2 vCPUs).  A guest
that panics or hangs fails the run with the tail of its console, never a hang of
this session.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_udpsend.host import nics
from pytest_udpsend.host.state import opened_dir, state_path, try_open_owned

LANE_APPEND_ENV = "UDPSEND_LANE_APPEND"  # extra guest kernel arguments, space-separated
LANE_MODULES_ENV = "UDPSEND_LANE_MODULES"  # kernel modules the guest loads before pytest, space-separated
KVM_PROBE_S = 25.0


def is_bzimage(image: Path) -> bool:
    try:
        with open(image, "rb") as fh:
            return fh.read(0x206)[0x202:0x206] == b"HdrS"
    except OSError:
        return False


def kernel_release(image: Path) -> str:
    """The release of a bzImage, from its setup header (falls back to the file name)."""
    try:
        with open(image, "rb") as fh:
            head = fh.read(0x210)
            if len(head) >= 0x210 and head[0x202:0x206] == b"HdrS":
                offset = int.from_bytes(head[0x20E:0x210], "little") + 0x200
                fh.seek(offset)
                return fh.read(256).split(b"\0", 1)[0].split(b" ", 1)[0].decode()
    except OSError:
        pass
    name = image.name
    return name.split("-", 1)[1] if name.startswith("vmlinuz-") else name


def _vng() -> str | None:
    # the venv's bin directory need not be on PATH (.venv/bin/python -m pytest)
    return shutil.which("vng") or shutil.which("vng", path=str(Path(sys.executable).parent))


def modules_dir(image: Path, release: str) -> Path | None:
    """Where virtme-ng looks for the modules of an image unpacked or installed as ROOT/boot/vmlinuz-*."""
    return image.parent.parent / "lib" / "modules" / release if image.parent.name == "boot" else None


def preconditions(image: Path, release: str, backend: str) -> list[str]:
    """What the lane needs before anything runs, as one sentence per missing part (cause and fix)."""
    prepare = f"udpsend prepare-kernel {release} sets it up"
    problems = []
    if not _vng():
        problems.append(f"virtme-ng (vng) is not installed for {sys.executable}: pip install 'virtme-ng>=1.42'")
    if not shutil.which("qemu-system-x86_64"):
        problems.append("qemu-system-x86_64 is not on PATH: apt-get install qemu-system-x86")
    if not (shutil.which("modprobe") or Path("/sbin/modprobe").exists()):
        problems.append("modprobe is missing, so the guest cannot load veth and friends: apt-get install kmod")
    moddir = modules_dir(image, release)
    if moddir is not None and not (moddir / "modules.dep").is_file():
        problems.append(f"the image's modules are not at {moddir} (or depmod never ran there): {prepare}")
    elif backend == "bpf" and moddir is not None and not (moddir / "build" / "Makefile").is_file():
        problems.append(
            f"--udpsend-backend bpf needs the kernel headers linked at {moddir / 'build'} for bcc: "
            f"apt-get install linux-headers-{release} ({prepare})"
        )
    if backend == "bpf" and importlib.util.find_spec("bcc") is None:
        problems.append(
            f"--udpsend-backend bpf needs bcc importable by {sys.executable}: apt-get install "
            "python3-bpfcc and make the venv with --system-site-packages"
        )
    return problems


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"  # vng runs virtme-run
    return env


PANIC_MARKS = (b"Kernel panic - not syncing", b"---[ end trace")


def nic_qemu_args(models: Iterable[str]) -> list[str]:
    """Two NICs of each model on their own qemu hub: wired back to back, no host network."""
    args = []
    for hub, model in enumerate(sorted(set(models) & set(nics.MODELS))):
        for side, mac in enumerate(nics.lane_macs(model)):
            netdev = f"udps{hub}n{side}"
            args += [
                "-netdev",
                f"hubport,id={netdev},hubid={hub}",
                "-device",
                f"{nics.MODELS[model].qemu_device},netdev={netdev},mac={mac}",
            ]
    return args


def _boot(
    image: Path,
    exec_cmd: str,
    rwdir: Path,
    kvm: bool,
    timeout: float,
    console: Path,
    cpus: int = 2,
    qemu_extra: Iterable[str] = (),
) -> tuple[int | None, str]:
    """Boot, run ``exec_cmd``; (its exit status from rwdir/rc or None, what went wrong).

    The console is watched: a panic or oops ends the guest at once instead of
    waiting for the deadline.
    """
    argv = [_vng() or "vng", "--run", str(image), "--cpus", str(cpus), "--memory", "2G", "-v", "--rwdir", str(rwdir)]
    qemu = [*([] if kvm else ["-accel", "tcg,thread=single"]), *qemu_extra]
    if not kvm:
        argv.append("--disable-kvm")
    if qemu:  # vng splits this one string into qemu arguments (none of ours holds a space)
        argv.append("--qemu-opts=" + " ".join(qemu))
    # hosts as they are: extra kernel arguments for the guest, e.g. ipv6.disable=1 (lane tests set it)
    argv += [f"--append={arg}" for arg in os.environ.get(LANE_APPEND_ENV, "").split()]
    argv += ["--exec", exec_cmd]
    deadline = time.monotonic() + timeout
    problem = ""
    with open(console, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    problem = f"did not finish within {timeout:.0f} s"
                    break
                out.flush()
                if any(mark in console.read_bytes()[-65536:] for mark in PANIC_MARKS):
                    problem = "panicked or oopsed"
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rc = rwdir / "rc"
    if rc.exists():
        return int(rc.read_text().strip() or 1), problem
    return None, problem or f"exited (code {proc.returncode}) before the test command finished"


def kvm_works(image: Path) -> tuple[bool, str]:
    """Can a guest boot with KVM here?  Decided once per host boot (cached under /run)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm: using TCG (software emulation)"
    verdict, ignored = _kvm_verdict()
    if verdict is not None:
        return verdict == "yes", ("KVM works" if verdict == "yes" else "KVM hangs here (cached verdict): using TCG")
    with tempfile.TemporaryDirectory(prefix="udpsend-kvm-") as tmp:
        ok = (
            _boot(image, f"echo 0 > {shlex.quote(tmp)}/rc", Path(tmp), True, KVM_PROBE_S, Path(tmp) / "console")[0] == 0
        )
    if not ignored:
        _kvm_verdict("yes" if ok else "no")
    note = (
        "KVM works"
        if ok
        else f"a KVM guest did not finish booting within {KVM_PROBE_S:.0f} s (nested virtualisation?): using TCG"
    )
    return ok, note + ignored


def _kvm_verdict(write: str | None = None) -> tuple[str | None, str]:
    """Read (or ``write``) the cached verdict: (the verdict or None, "" or why the cache was ignored).

    The cache lives in the state directory, so it is a file of ours there or it is neither
    read nor written (state.try_open_owned: never through a link someone planted)."""
    with opened_dir(state_path()) as folder:
        path = folder.path / f"kvm-verdict-{os.uname().release}"
        try:
            fd, problem = try_open_owned(path, os.O_RDWR | (os.O_CREAT if write else 0), dir_fd=folder.fd)
        except FileNotFoundError:
            return None, ""
    if fd is None:
        return (
            None,
            f"; the cached verdict {path} {problem}: ignored, not written (remove it after checking who made it)",
        )
    with os.fdopen(fd, "r+") as fh:
        if write is None:
            verdict = fh.read(16).strip()
            return (verdict if verdict in ("yes", "no") else None), ""
        fh.truncate(0)
        fh.write(write)
    return write, ""


PASSED_ENV = ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")


def guest_args(args: Iterable[str], outdir: Path, plugins: Iterable[str] = ("cacheprovider", "junitxml")) -> list[str]:
    """The guest's pytest arguments: the host's own, unchanged, then overrides.

    pytest picks rootdir and inifile from every argument that names an existing
    path, before plugins load, so the kernel image counts too.  Passing the same
    arguments from the same directory gives the guest the same rootdir, inifile,
    conftests, ``--pyargs`` resolution and node ids; the host's selection then
    travels as a list of node ids (``frontend/guest.py``), which ids with spaces or
    brackets survive.  Overrides come last in ``--opt=value`` form, which pytest
    never takes for a path.  The guest file system is read-only but for ``outdir``.
    """
    # the guest can write only under outdir: no HTML or pcap there (the host writes its own HTML)
    out = [*args, f"--udpsend-json={outdir / 'results.json'}", "--udpsend-html=", "--udpsend-pcap="]
    if "cacheprovider" in plugins:  # the options of a plugin the host blocked (-p no:x) do not exist
        out.append(f"--override-ini=cache_dir={outdir / 'cache'}")
    if "junitxml" in plugins:  # the host writes the junit file from the guest's reports
        out.append("--junitxml=")
    return out


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console output)"


@dataclass
class Launch:
    """How one lane's pytest run went."""

    rc: int | None  # its exit status; None if it never finished
    trouble: str  # what went wrong (a deadline, a panic), or ""
    logs: str  # the tails that explain a test that never reported
    lane_env: dict[str, Any] | None  # the environment's "lane" entry (None: the bare host)


HOST = "host"  # the --udpsend-kernel value for the running kernel


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait for ``proc`` until the deadline; stop it on the deadline or Ctrl-C: SIGTERM first, so
    its undo stacks run (the plugin unwinds on SIGTERM), SIGKILL if it does not end in 30 s."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                return f"did not finish within {timeout:.0f} s"
            time.sleep(0.5)
        return ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

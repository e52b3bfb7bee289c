"""The kernel lane: run the selected tests inside a VM booted with another kernel.

``--udpsend-kernel PATH`` boots PATH with virtme-ng (the host filesystem shared
in, read-only, plus one writable exchange directory), runs the same pytest
command there on the same node ids, and reports the guest's outcomes in this
session as ordinary test results whose ids carry the guest kernel release
(``test_x@6.1.0-56-amd64``).  Samples come back too, so --udpsend-json,
--udpsend-baseline and --udpsend-html work across the lane.

KVM is used when a guest boots with it within a short deadline; here (nested
virtualisation) it hangs, so that verdict is cached under /run and TCG is used,
single-threaded (6.12 oopses under multi-threaded TCG with 2 vCPUs).  A guest
that panics or hangs fails the run with the tail of its console, never a hang of
this session.
"""

from __future__ import annotations

import json
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

import pytest

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host.state import state_dir
from pytest_udpsend.results import compare, store

LANE_REPORT_ENV = "UDPSEND_LANE_REPORT"
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


def _vng() -> str:
    found = shutil.which("vng") or shutil.which("vng", path=str(Path(sys.executable).parent))
    if not found:
        raise PrivilegeError("--udpsend-kernel needs virtme-ng: pip install virtme-ng (and apt-get install qemu-system-x86)")
    if not shutil.which("qemu-system-x86_64"):
        raise PrivilegeError("--udpsend-kernel needs qemu: apt-get install qemu-system-x86")
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"  # vng runs virtme-run
    return env


PANIC_MARKS = (b"Kernel panic - not syncing", b"---[ end trace")


def _boot(image: Path, exec_cmd: str, rwdir: Path, kvm: bool, timeout: float, console: Path,
          cpus: int = 2) -> tuple[int | None, str]:  # fmt: skip
    """Boot, run ``exec_cmd``; (its exit status from rwdir/rc or None, what went wrong).

    The console is watched: a panic or oops ends the guest at once instead of
    waiting for the deadline.
    """
    argv = [_vng(), "--run", str(image), "--cpus", str(cpus), "--memory", "2G", "-v", "--rwdir", str(rwdir)]
    if not kvm:
        argv += ["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]
    argv += ["--exec", exec_cmd]
    deadline = time.monotonic() + timeout
    problem = ""
    with open(console, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=_env(), start_new_session=True)  # fmt: skip
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
    cache = state_dir() / f"kvm-verdict-{os.uname().release}"
    if cache.exists():
        verdict = cache.read_text().strip()
        return verdict == "yes", ("KVM works" if verdict == "yes" else "KVM hangs here (cached verdict): using TCG")
    with tempfile.TemporaryDirectory(prefix="udpsend-kvm-") as tmp:
        ok = _boot(image, f"echo 0 > {tmp}/rc", Path(tmp), True, KVM_PROBE_S, Path(tmp) / "console")[0] == 0
    cache.write_text("yes" if ok else "no")
    return ok, ("KVM works" if ok else f"a KVM guest did not finish booting within {KVM_PROBE_S:.0f} s "
                                       "(nested virtualisation?): using TCG")  # fmt: skip


def inner_args(args: Iterable[str], positional: Iterable[str], nodeids: list[str], outdir: Path) -> list[str]:
    """The guest's pytest arguments: ours minus the lane, xdist, selection and output options,
    with the positional test paths replaced by the selected node ids."""
    drop_with_value = {"--udpsend-kernel", "--udpsend-kernel-timeout", "-n", "--numprocesses", "--dist",
                       "--udpsend-json", "--udpsend-html", "--junitxml", "--junit-xml", "-k", "-m"}  # fmt: skip
    paths = set(positional)
    out: list[str] = []
    rest = iter(args)
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name in drop_with_value:
            if "=" not in arg:
                next(rest, None)
            continue
        if (arg.startswith("-n") and arg[2:] in ("auto", "logical")) or (arg.startswith("-n") and arg[2:].isdigit()):
            continue
        if arg in paths:
            continue
        out.append(arg)
    return [*out, "-p", "no:cacheprovider", "--udpsend-json", str(outdir / "results.json"), *nodeids]


@dataclass
class GuestReport:
    nodeid: str
    when: str
    outcome: str
    longrepr: str
    duration: float
    user_properties: list[Any]


def read_guest_reports(path: Path) -> dict[str, list[GuestReport]]:
    by_test: dict[str, list[GuestReport]] = {}
    if not path.exists():
        return by_test
    for line in path.read_text().splitlines():
        data = json.loads(line)
        by_test.setdefault(data["nodeid"], []).append(GuestReport(**data))
    return by_test


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console output)"


class KernelLane:
    """Runs in the controller's pytest_runtestloop in place of the normal loop."""

    def __init__(self, image: str, timeout: float) -> None:
        self.image = Path(image).resolve()
        if not self.image.is_file():
            raise pytest.UsageError(f"--udpsend-kernel {image}: no such kernel image")
        if not is_bzimage(self.image):
            raise pytest.UsageError(
                f"--udpsend-kernel {image}: not an x86 Linux kernel image (no bzImage header); "
                "pass a vmlinuz, e.g. the one ci/prepare-kernel.sh prints"
            )
        self.release = kernel_release(self.image)
        self.timeout = timeout
        self.note = ""
        self.guest_environment: dict[str, Any] | None = None

    def run(self, session: pytest.Session) -> None:
        items = list(session.items)
        outdir = Path(tempfile.mkdtemp(prefix="udpsend-lane-", dir=str(state_dir("lanes"))))
        try:
            kvm, self.note = kvm_works(self.image)
            config = session.config
            args = inner_args(config.invocation_params.args, config.args, [i.nodeid for i in items], outdir)
            script = outdir / "run.sh"
            script.write_text(
                f"cd {shlex.quote(str(session.config.invocation_params.dir))}\n"
                f"export {LANE_REPORT_ENV}={shlex.quote(str(outdir / 'reports.jsonl'))}\n"
                f"{shlex.quote(sys.executable)} -m pytest {' '.join(shlex.quote(a) for a in args)} "
                f"> {shlex.quote(str(outdir / 'pytest.log'))} 2>&1\n"
                f"echo $? > {shlex.quote(str(outdir / 'rc'))}\n"
            )
            console = outdir / "console.log"
            started = time.monotonic()
            rc, trouble = _boot(self.image, f"sh {shlex.quote(str(script))}", outdir, kvm, self.timeout, console)
            self.note += f"; guest ran {time.monotonic() - started:.0f} s, pytest exit {rc}"
            reports = read_guest_reports(outdir / "reports.jsonl")
            if (outdir / "results.json").exists():
                env = store.load(outdir / "results.json")["environment"]
                env["lane"] = {"host_kernel": os.uname().release, "accel": "kvm" if kvm else "tcg (single-threaded)"}
                self.guest_environment = env
            why_missing = f"the guest ({self.release}) never reported this test" + (
                f": it {trouble}" if trouble else f" (pytest exit {rc})"
            )
            problem = f"{why_missing}; console tail:\n{tail(console)}\n--- guest pytest log tail ---\n{tail(outdir / 'pytest.log')}"
            for item in items:
                found = compare.find(item.nodeid, reports)
                self._report(item, found, problem)
        finally:
            shutil.rmtree(outdir, ignore_errors=True)

    def _report(self, item: pytest.Item, guest: list[GuestReport] | None, problem: str) -> None:
        nodeid = f"{item.nodeid}@{self.release}"
        item.ihook.pytest_runtest_logstart(nodeid=nodeid, location=item.location)
        phases = guest or [GuestReport(item.nodeid, "setup", "failed", problem, 0.0, [])]
        for g in phases:
            report = pytest.TestReport(
                nodeid=nodeid, location=item.location, keywords=dict.fromkeys(item.keywords, 1),
                outcome=g.outcome,  # type: ignore[arg-type]
                longrepr=_longrepr(g, item), when=g.when,  # type: ignore[arg-type]
                sections=[], duration=g.duration, start=0.0, stop=g.duration,
                user_properties=[tuple(p) for p in g.user_properties],
            )  # fmt: skip
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=nodeid, location=item.location)


def _longrepr(g: GuestReport, item: pytest.Item) -> Any:
    if g.outcome == "skipped" and g.longrepr:
        path, lineno, _ = item.location
        return (path, (lineno or 0) + 1, g.longrepr)
    return g.longrepr or None


def write_guest_report(report: pytest.TestReport) -> None:
    """In the guest: append one phase's report for the outer session."""
    path = os.environ.get(LANE_REPORT_ENV)
    if not path:
        return
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr) if report.longrepr else ""
    data = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "longrepr": text,
            "duration": report.duration, "user_properties": [list(p) for p in report.user_properties]}  # fmt: skip
    with open(path, "a") as fh:
        fh.write(json.dumps(data) + "\n")

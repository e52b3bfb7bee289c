"""The kernel lane: run the selected tests inside a VM booted with another kernel.

``--udpsend-kernel PATH`` boots PATH with virtme-ng (the host filesystem shared
in, read-only, plus one writable exchange directory), runs the same pytest
command there on the same node ids, and reports the guest's outcomes in this
session as ordinary test results whose ids carry the guest kernel release
(``test_x@6.1.0-56-amd64``).  Samples come back too, so --udpsend-json,
--udpsend-baseline and --udpsend-html work across the lane.  ``--udpsend-kernel host``
(``HostLane``) is the running kernel: the same run in a pytest subprocess, no VM;
several kernels in one run and the gate between them are frontend/kernel_gate.py's.

KVM is used when a guest boots with it within a short deadline; here (nested
virtualisation) it hangs, so that verdict is cached under /run and TCG is used,
single-threaded (6.12 oopses under multi-threaded TCG with 2 vCPUs).  A guest
that panics or hangs fails the run with the tail of its console, never a hang of
this session.
"""

from __future__ import annotations

import importlib.util
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
from typing import Any, Literal, get_args

import pytest

from pytest_udpsend.host import nics
from pytest_udpsend.host.state import opened_dir, state_dir, state_path, try_open_owned
from pytest_udpsend.results import compare, store

LANE_REPORT_ENV = "UDPSEND_LANE_REPORT"
LANE_SELECTION_ENV = "UDPSEND_LANE_SELECTION"
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
    travels as a list of node ids (``GuestSelection``), which ids with spaces or
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


class GuestSelection:
    """In the guest: keep exactly the items the host collected, and send each phase's report back (a pytest
    plugin object).  The guest side, like xdist's worker side (remote.py): it uses nothing of the Lane."""

    def __init__(self, path: Path) -> None:
        ids, why = read_node_ids(path)
        if why:
            raise pytest.UsageError(
                f"{LANE_SELECTION_ENV}={path}: {why}; the kernel lane sets it for its own pytest run "
                "only: unset it to run pytest here"
            )
        self.wanted = set(ids)
        self.collected = path.with_name("collected.json")
        self.config: pytest.Config | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.config = session.config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.config is not None:
            write_guest_report(report, self.config)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self.collected.write_text(json.dumps([i.nodeid for i in items]))
        keep = [i for i in items if i.nodeid in self.wanted]
        dropped = [i for i in items if i.nodeid not in self.wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


def guest_selection() -> GuestSelection | None:
    """The selection plugin when this session is a kernel-lane guest, else None."""
    path = os.environ.get(LANE_SELECTION_ENV)
    return GuestSelection(Path(path)) if path else None


def read_node_ids(path: Path) -> tuple[list[str], str]:
    """A JSON list of node ids (the host's selection, the guest's collection): (the ids, "") or ([], why not)."""
    try:
        ids = json.loads(path.read_text())
    except FileNotFoundError:
        return [], "names no file"
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot be read ({exc})"
    except (ValueError, RecursionError) as exc:
        return [], f"is not JSON ({exc})"
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return [], "is not a JSON list of node ids"
    return ids, ""


Outcome = Literal["passed", "failed", "skipped"]
When = Literal["setup", "call", "teardown"]


@dataclass
class GuestReport:
    """One phase of a test as the lane's run reported it (or as the host made it up for a test that never came back).

    ``longrepr`` is its text (a skip's reason), which the kernel gates read and extend; ``report`` is the
    whole report as pytest serializes it (``pytest_report_to_serializable``, what xdist ships: traceback,
    captured sections, xfail), None for a phase the host made up."""

    nodeid: str
    when: When
    outcome: Outcome
    longrepr: str
    duration: float
    user_properties: list[Any]
    report: dict[str, Any] | None = None


def read_guest_reports(path: Path) -> tuple[dict[str, list[GuestReport]], str]:
    """The phases the guest reported, by node id, and what was wrong with the file ("" if nothing).

    A guest killed while appending leaves its last line cut short: every whole line is still read."""
    by_test: dict[str, list[GuestReport]] = {}
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return by_test, ""
    bad = 0
    for n, line in enumerate(text.splitlines(), 1):
        report = _guest_report(line)
        if report is None:
            bad = bad or n
            continue
        by_test.setdefault(report.nodeid, []).append(report)
    problem = f"line {bad} of {path} is cut short or not a test report" if bad else ""
    return by_test, problem


def _guest_report(line: str) -> GuestReport | None:
    """One line of reports.jsonl, or None if it is not a whole report as write_guest_report writes it."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    fields: dict[str, type | tuple[type, ...]] = {
        "nodeid": str,
        "when": str,
        "outcome": str,
        "longrepr": str,
        "duration": (int, float),
        "user_properties": list,
    }
    if not isinstance(data, dict) or set(data) - {"report"} != set(fields):
        return None
    if not all(isinstance(data[k], t) for k, t in fields.items()):
        return None
    if data["when"] not in get_args(When) or data["outcome"] not in get_args(Outcome):
        return None
    if not all(isinstance(p, list) and len(p) == 2 for p in data["user_properties"]):  # (name, value), as read back
        return None
    report = data.get("report")
    if report is not None and not _serialized_phase(report, data):
        return None
    return GuestReport(**data)


def _serialized_phase(report: object, line: dict[str, Any]) -> bool:
    """Is ``report`` a TestReport as pytest_report_to_serializable writes it, of the phase its line names?"""
    return (
        isinstance(report, dict)
        and report.get("$report_type") == "TestReport"
        and all(report.get(k) == line[k] for k in ("nodeid", "when", "outcome"))
    )


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


class Lane:
    """One kernel the selected tests run in: the session's items in a separate pytest run,
    reported here as ``test@<suffix>``.  Runs in the controller's pytest_runtestloop in place
    of the normal loop; subclasses launch that run (in a VM, or on this host)."""

    source = ""  # the --udpsend-kernel value that made it
    where = "the guest"  # who runs the tests, for the sentence when a test never came back

    def __init__(self, release: str, timeout: float) -> None:
        self.release = release
        self.suffix = release  # the node id suffix: the release (kernel_gate numbers a kernel given twice)
        self.timeout = timeout
        self.note = ""
        self.guest_environment: dict[str, Any] | None = None
        self.nic_models: set[str] = set()  # NIC links the selected tests ask for (set by the frontend)
        self.overrides: list[str] = []  # pytest options the lane's run takes after the host's (--opt=value)

    def describe(self) -> list[str]:
        raise NotImplementedError

    def notes(self) -> list[tuple[str, str]]:
        """(suffix, what happened) for the terminal summary."""
        return [(self.suffix, self.note)]

    def _launch(self, config: pytest.Config, outdir: Path) -> Launch:
        raise NotImplementedError

    def run(self, session: pytest.Session) -> None:
        for item, phases in self.execute(session):
            self.report(item, phases)

    def execute(self, session: pytest.Session) -> list[tuple[pytest.Item, list[GuestReport]]]:
        """Run the session's items in this kernel; each item with its phases as reported there
        (or one failed set-up phase saying why it never came back)."""
        items = list(session.items)
        outdir = Path(tempfile.mkdtemp(prefix="udpsend-lane-", dir=str(state_dir("lanes"))))
        try:
            (outdir / "selection.json").write_text(json.dumps([i.nodeid for i in items]))
            started = time.monotonic()
            launch = self._launch(session.config, outdir)
            self.note += f"; {'guest' if launch.lane_env else 'pytest'} ran {time.monotonic() - started:.0f} s, pytest exit {launch.rc}"
            reports, cut = read_guest_reports(outdir / "reports.jsonl")
            if (outdir / "results.json").exists():
                env = store.load(outdir / "results.json")["environment"]
                if launch.lane_env is not None:
                    env["lane"] = launch.lane_env
                self.guest_environment = env
            why_missing = f"{self.where} ({self.release}) never reported this test" + (
                f": it {launch.trouble}" if launch.trouble else f" (pytest exit {launch.rc})"
            )
            problem = f"{why_missing}{f'; {cut}' if cut else ''}; {launch.logs}"
            ids, unreadable = read_node_ids(outdir / "collected.json")
            collected = None if unreadable else ids  # None: not known (the guest died first), so not judged
            guest = [(item, list(compare.find(item.nodeid, reports) or [])) for item in items]
            if cut:
                self._mark_cut_short(
                    guest,
                    collected,
                    f"{self.where} ({self.release}) died while reporting this test "
                    f"(pytest exit {launch.rc}{f', it {launch.trouble}' if launch.trouble else ''}): "
                    f"{cut}; {launch.logs}",
                )
            out = []
            for item, phases in guest:
                if not phases and collected is not None and item.nodeid not in collected:
                    phases = [
                        GuestReport(item.nodeid, "setup", "failed", _not_collected(item.nodeid, collected), 0.0, [])
                    ]
                out.append((item, phases or [GuestReport(item.nodeid, "setup", "failed", problem, 0.0, [])]))
            return out
        finally:
            shutil.rmtree(outdir, ignore_errors=True)

    @staticmethod
    def _mark_cut_short(
        guest: list[tuple[pytest.Item, list[GuestReport]]], collected: list[str] | None, why: str
    ) -> None:
        """The first test (of those the guest collected) whose phases stop short of teardown was running when
        the guest died: its missing phase fails with ``why`` (the call if that never came back, else the
        teardown).  If it reported no phase at all, nothing is added: it fails once as never reported."""
        for item, phases in guest:
            if not phases and collected is not None and item.nodeid not in collected:
                continue  # never ran there: not the one that was running
            if not phases:
                return
            whens = {g.when for g in phases}
            if "teardown" not in whens:
                when: When = "teardown" if "call" in whens or phases[-1].outcome != "passed" else "call"
                phases.append(GuestReport(item.nodeid, when, "failed", why, 0.0, []))
                return

    def report(self, item: pytest.Item, phases: list[GuestReport]) -> None:
        """Report one item's phases in this session as ``nodeid@suffix``."""
        nodeid = f"{item.nodeid}@{self.suffix}"
        item.ihook.pytest_runtest_logstart(nodeid=nodeid, location=item.location)
        for g in phases:
            item.ihook.pytest_runtest_logreport(report=host_report(item, nodeid, g))
        item.ihook.pytest_runtest_logfinish(nodeid=nodeid, location=item.location)


class KernelLane(Lane):
    """``--udpsend-kernel IMAGE``: the tests in a VM booted with IMAGE."""

    def __init__(self, image: str, timeout: float, backend: str = "auto") -> None:
        """Check every precondition first: a missing one is a usage error naming it and the fix."""
        self.image = Path(image).resolve()
        if not self.image.is_file():
            raise pytest.UsageError(f"--udpsend-kernel {image}: no such kernel image")
        if not is_bzimage(self.image):
            raise pytest.UsageError(
                f"--udpsend-kernel {image}: not an x86 Linux kernel image (no bzImage header); "
                "pass a vmlinuz, e.g. the one ci/prepare-kernel.sh prints"
            )
        release = kernel_release(self.image)
        problems = preconditions(self.image, release, backend)
        if problems:
            raise pytest.UsageError("\n".join(f"--udpsend-kernel {image}: {p}" for p in problems))
        super().__init__(release, timeout)
        self.source = image

    def describe(self) -> list[str]:
        return [f"tests run in a VM booted with {self.image} ({self.release})"]

    def _launch(self, config: pytest.Config, outdir: Path) -> Launch:
        kvm, self.note = kvm_works(self.image)
        script = outdir / "run.sh"
        script.write_text(self._script(config, outdir))
        console = outdir / "console.log"
        rc, trouble = _boot(
            self.image,
            f"sh {shlex.quote(str(script))}",
            outdir,
            kvm,
            self.timeout,
            console,
            qemu_extra=nic_qemu_args(self.nic_models),
        )
        logs = f"console tail:\n{tail(console)}\n--- guest pytest log tail ---\n{tail(outdir / 'pytest.log')}"
        return Launch(
            rc, trouble, logs, {"host_kernel": os.uname().release, "accel": "kvm" if kvm else "tcg (single-threaded)"}
        )

    def _script(self, config: pytest.Config, outdir: Path) -> str:
        """The guest's shell script: same directory, same arguments, same pytest environment."""
        q = shlex.quote
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env[LANE_REPORT_ENV] = str(outdir / "reports.jsonl")
        env[LANE_SELECTION_ENV] = str(outdir / "selection.json")
        env[nics.LANE_NICS_ENV] = nics.encode_lane_env(self.nic_models)
        modules = [
            *os.environ.get(LANE_MODULES_ENV, "").split(),
            *(nics.MODELS[m].driver for m in sorted(self.nic_models) if m in nics.MODELS),
        ]
        active = [name for name in ("cacheprovider", "junitxml") if config.pluginmanager.has_plugin(name)]
        args = guest_args([*config.invocation_params.args, *self.overrides], outdir, active)
        return (
            "".join(f"modprobe {q(module)}\n" for module in modules)
            + ("udevadm settle -t 10 2>/dev/null || sleep 2\n" if self.nic_models else "")
            + f"cd {q(str(config.invocation_params.dir))}\n"
            + "".join(f"export {name}={q(value)}\n" for name, value in env.items())
            + f"{q(sys.executable)} -m pytest {' '.join(q(a) for a in args)} > {q(str(outdir / 'pytest.log'))} 2>&1\n"
            f"echo $? > {q(str(outdir / 'rc'))}\n"
        )


HOST = "host"  # the --udpsend-kernel value for the running kernel


class HostLane(Lane):
    """``--udpsend-kernel host``: the running kernel, no VM.

    The items run in a pytest subprocess on this host, exactly as a guest runs them
    (same arguments, selection file, reports and result document), so every kernel of
    a multi-kernel run is measured and reported the same way, one session each.
    """

    source = HOST
    where = "the pytest run on this host"

    def __init__(self, timeout: float) -> None:
        super().__init__(os.uname().release, timeout)

    def describe(self) -> list[str]:
        return [f"tests run on this host's kernel ({self.release}), no VM, in a pytest subprocess"]

    def _launch(self, config: pytest.Config, outdir: Path) -> Launch:
        self.note = "the running kernel, no VM"
        active = [name for name in ("cacheprovider", "junitxml") if config.pluginmanager.has_plugin(name)]
        argv = [
            sys.executable,
            "-m",
            "pytest",
            *guest_args([*config.invocation_params.args, *self.overrides], outdir, active),
        ]
        env = {
            **os.environ,
            LANE_REPORT_ENV: str(outdir / "reports.jsonl"),
            LANE_SELECTION_ENV: str(outdir / "selection.json"),
        }
        log = outdir / "pytest.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=config.invocation_params.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            trouble = _wait(proc, self.timeout)
        return Launch(None if trouble else proc.returncode, trouble, f"pytest log tail:\n{tail(log)}", None)


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


def lane_for(value: str, timeout: float, backend: str = "auto") -> Lane:
    """The lane of one --udpsend-kernel value: ``host`` or a kernel image."""
    return HostLane(timeout) if value == HOST else KernelLane(value, timeout, backend)


def host_report(item: pytest.Item, nodeid: str, g: GuestReport) -> pytest.TestReport:
    """``g`` as a report of ``nodeid`` in this session: the guest's own report rebuilt by pytest's
    ``pytest_report_from_serializable`` (traceback, captured sections, xfail survive), with the host's
    outcome and text where the host changed them (a kernel gate failed it); from its text if it has none."""
    config = item.config
    report = None
    if g.report is not None:
        try:
            report = config.hook.pytest_report_from_serializable(config=config, data=g.report)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            AssertionError,
        ):  # not rebuildable here: its text stays
            report = None
    if not isinstance(report, pytest.TestReport):
        report = pytest.TestReport(
            nodeid=nodeid,
            location=item.location,
            keywords={},
            outcome=g.outcome,
            longrepr=None,
            when=g.when,
            sections=[],
            duration=g.duration,
            start=0.0,
            stop=g.duration,
        )
        report.longrepr = _longrepr(g, item)
    elif (report.outcome, longrepr_text(report)) != (g.outcome, g.longrepr):
        report.outcome, report.longrepr = g.outcome, _longrepr(g, item)
        if hasattr(report, "wasxfail"):  # failed by the host: a failure, not an unexpected pass
            del report.wasxfail
    elif isinstance(report.longrepr, list):  # a skip's (path, line, reason), a list after JSON
        report.longrepr = tuple(report.longrepr)
    report.sections = [(name, text) for name, text in report.sections]  # pairs again, as pytest makes them
    report.nodeid, report.location, report.keywords = nodeid, item.location, dict.fromkeys(item.keywords, 1)
    report.user_properties = [tuple(p) for p in g.user_properties]
    return report


def _longrepr(g: GuestReport, item: pytest.Item) -> Any:
    if g.outcome == "skipped" and g.longrepr:
        path, lineno, _ = item.location
        return (path, (lineno or 0) + 1, g.longrepr)
    return g.longrepr or None


def _not_collected(nodeid: str, collected: list[str]) -> str:
    return (
        f"the guest collected {len(collected)} item(s) but not {nodeid}: its collection differed from this "
        "host's (a conftest or plugin that depends on the machine?); run the same pytest command inside "
        "the guest to compare"
    )


def longrepr_text(report: pytest.TestReport) -> str:
    """A report's failure as text; a skip's reason."""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple | list):
        return str(report.longrepr[2])
    return str(report.longrepr) if report.longrepr else ""


def write_guest_report(report: pytest.TestReport, config: pytest.Config) -> None:
    """In the guest: append one phase's report for the outer session, serialized by pytest's own hook
    (``pytest_report_to_serializable``, as xdist's workers send theirs), beside the fields the host reads."""
    path = os.environ.get(LANE_REPORT_ENV)
    if not path:
        return
    data = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": longrepr_text(report),
        "duration": report.duration,
        "user_properties": [list(p) for p in report.user_properties],
    }
    serialized = config.hook.pytest_report_to_serializable(config=config, report=report)
    try:
        line = json.dumps({**data, "report": serialized})
    except (TypeError, ValueError):  # a plugin put something JSON cannot hold on the report: its text still goes
        line = json.dumps(data)
    with open(path, "a") as fh:
        fh.write(line + "\n")

"""The kernel lane's host side: the lanes of this pytest session, and the guest's reports rebuilt in it.

A lane runs the session's items in a separate pytest run (a VM booted with another kernel, or a pytest
subprocess on this host) and reports them here as ``test@<release>``.  Booting is ``lane/vm.py``'s,
the exchange format ``lane/wire.py``'s, the guest side ``frontend/guest.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import pytest

from pytest_udpsend.frontend.guest import longrepr_text
from pytest_udpsend.host import nics
from pytest_udpsend.host.state import state_dir
from pytest_udpsend.lane.vm import (
    HOST,
    LANE_MODULES_ENV,
    PASSED_ENV,
    Launch,
    _boot,
    _wait,
    guest_args,
    is_bzimage,
    kernel_release,
    kvm_works,
    nic_qemu_args,
    preconditions,
    tail,
)
from pytest_udpsend.lane.wire import (
    LANE_REPORT_ENV,
    LANE_SELECTION_ENV,
    GuestReport,
    When,
    read_guest_reports,
    read_node_ids,
)
from pytest_udpsend.results import compare, store


class SessionLane(Protocol):
    """What the session holds under --udpsend-kernel (``UdpsendSession.lane``): one ``Lane``, or
    ``kernel_gate.Kernels`` for several kernels, which stands where a single lane does."""

    nic_models: set[str]  # NIC links the selected tests ask for (set before the run)

    @property
    def guest_environment(self) -> dict[str, Any] | None: ...

    def describe(self) -> list[str]: ...

    def notes(self) -> list[tuple[str, str]]: ...

    def run(self, session: pytest.Session) -> None: ...


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


def _longrepr(g: GuestReport, item: pytest.Item) -> tuple[str, int, str] | str | None:
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

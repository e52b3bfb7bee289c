"""Several kernels in one run, and the gate between them (``--udpsend-kernel`` repeated,
``--udpsend-gate-against KERNEL``).

* **Kernels.** Each ``--udpsend-kernel`` value is a lane (frontend/kernel_lane.py): an image booted in a
  VM, or ``host``, the running kernel in a pytest subprocess.  The lanes run one after
  the other (never two VMs at once), the reference first; each test is reported once per
  kernel as ``test@<release>`` (``test@<release>#2`` for a kernel given again, e.g. an
  A/A check).
* **The gate.** With ``--udpsend-gate-against KERNEL`` each test's samples on every other
  kernel are judged against its own samples on KERNEL by the baseline gate's rule
  (results/compare.py: the same ini knobs, like-with-like refusal and ``udpsend_baseline``
  marker overrides; the noise floors of one command, the square roots of the session floors,
  since both sides are measured minutes apart by the same host).  The Bonferroni family is every comparison of
  the run: the reference's tests x metrics x the other kernels.  A regression fails
  ``test@<release>`` with the table; so does a refusal (compare.refusal: a test that passed
  there but measured nothing, a value that is not a number, too few samples), and a run in
  which not one comparison was made fails as a whole.
* **The document.** ``--udpsend-json`` holds one run per kernel (the merged layout of
  ``udpsend merge``), each with its environment and the gate's verdicts, so ``udpsend
  report`` shows the upgrade view across them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from pytest_udpsend.frontend import interleave, kernel_lane
from pytest_udpsend.frontend.kernel_interleave import samples as _samples  # one reader for both paths
from pytest_udpsend.frontend.markers import SCENARIO_KEY, Scenario
from pytest_udpsend.lane import vm, wire
from pytest_udpsend.results import compare, paired, store

MEASURING_FIXTURES = interleave.MEASURING
Phases = list[wire.GuestReport]


def matches(value: str, lane: kernel_lane.Lane) -> bool:
    """Does a --udpsend-gate-against value name this lane: ``host``, its image path, or its release
    (whole, or a prefix ending at a dot, dash or plus: ``6.1`` is 6.1.0-56-amd64, not 6.12.95)?"""
    if value == vm.HOST:
        return isinstance(lane, kernel_lane.HostLane)
    if isinstance(lane, kernel_lane.KernelLane) and os.path.exists(value) and os.path.samefile(value, lane.image):
        return True
    return lane.release == value or any(lane.release.startswith(value + sep) for sep in ".-+")


def reference(value: str, lanes: Sequence[kernel_lane.Lane]) -> kernel_lane.Lane:
    """The lane --udpsend-gate-against names (the first, if a kernel was given twice); else a usage error."""
    found = [lane for lane in lanes if matches(value, lane)]
    given = ", ".join(f"{lane.source} ({lane.release})" for lane in lanes)
    if not found:
        raise pytest.UsageError(
            f"--udpsend-gate-against {value}: names none of the kernels given ({given}); "
            "give one of them: its image path, host, or its release"
        )
    if len({lane.release for lane in found}) > 1:
        raise pytest.UsageError(
            f"--udpsend-gate-against {value}: names more than one of the kernels given "
            f"({given}); give the whole release or the image path"
        )
    return found[0]


class KernelGate:
    """Each test on the other kernels against its samples on the reference kernel."""

    def __init__(self, ref: kernel_lane.Lane, others: int, settings: compare.Settings) -> None:
        self.ref = ref
        self.others = others
        self.settings = settings
        self.base: dict[str, list[dict[str, Any]]] = {}  # node id -> the reference's samples
        self.family = 1
        self.rows: dict[str, list[compare.Row]] = {}  # lane suffix -> its rows

    def check_counts(self, items: Sequence[pytest.Item], repeat: int) -> None:
        """Before any kernel runs: refuse, in one sentence, sample counts that cannot reach the level
        (the family counted as every measuring test x every compared metric x the other kernels)."""
        measuring = sum(1 for item in items if MEASURING_FIXTURES & set(getattr(item, "fixturenames", ())))
        family = max(measuring * len(self.settings.names()) * self.others, 1)
        if measuring and (short := compare.needed_samples(repeat, repeat, self.settings, family)):
            raise pytest.UsageError(f"--udpsend-gate-against: {short}")

    def set_reference(self, results: Sequence[tuple[pytest.Item, Phases]]) -> None:
        self.base = {item.nodeid: _samples(phases) for item, phases in results}
        by_key = {compare.base_key(k): v for k, v in self.base.items() if v}
        self.family = compare.family_size(by_key, self.settings) * self.others

    def reference_doc(self) -> dict[str, Any]:
        tests = {f"{k}@{self.ref.suffix}": {"samples": v} for k, v in self.base.items() if v}
        return store.document(self.ref.guest_environment or {"kernel": self.ref.release}, tests)

    def judge(self, lane: kernel_lane.Lane, item: pytest.Item, phases: Phases) -> Phases:
        """The phases of ``item@lane``, its call phase failed with the table if it regressed or is refused."""
        new = _samples(phases)
        passed = any(g.when == "call" and g.outcome == "passed" for g in phases)
        if not new and not (passed and self.base.get(item.nodeid)):
            return phases  # measured on neither kernel, or it did not pass here: its own outcome says why
        key = compare.base_key(item.nodeid)
        base_env = self.ref.guest_environment or {}
        env = lane.guest_environment or {}
        mixed = compare.env_mismatch(base_env, env)
        if mixed and not self.settings.allow_mixed:
            rows = [compare.Row(key, "-", None, None, None, None, "measured differently", note=mixed)]
        else:
            marker = (item.stash.get(SCENARIO_KEY, None) or Scenario()).baseline
            rows = compare.compare_test(
                key,
                self.base.get(item.nodeid) or None,
                new,
                self.settings,
                self.family,
                marker.tolerance,
                marker.metrics,
            )
        self.rows.setdefault(lane.suffix, []).extend(rows)
        failure = self._failure(rows, env, len(self.base.get(item.nodeid) or []), len(new))
        if failure is None:
            return phases
        return [
            replace(g, outcome="failed", longrepr=f"{g.longrepr}\n\n{failure}".strip()) if g.when == "call" else g
            for g in phases
        ]

    def _failure(self, rows: Sequence[compare.Row], env: Mapping[str, Any], base_n: int, new_n: int) -> str | None:
        where = f"udpsend kernel gate (against {self.ref.suffix})"
        if rows[0].verdict == "measured differently":
            return f"{where}: {compare.mixed_refusal(rows[0].note, '--udpsend-allow-mixed')}"
        if why := compare.refusal(rows, self.settings, self.family, "--udpsend-allow-mixed"):
            return f"{where}: this test cannot be judged: {why}"
        if not any(r.regressed for r in rows):
            return None
        head = compare.header(self.settings, self.family)
        return f"{where}: regression:\n" + compare.table(rows, self.ref.guest_environment, env, head)

    def record(self, lane: kernel_lane.Lane) -> dict[str, Any] | None:
        """What the lane's run in the --udpsend-json document keeps of the gate."""
        rows = self.rows.get(lane.suffix)
        return compare.gate_record(self.settings, self.family, self.reference_doc(), rows) if rows else None


class Kernels:
    """The lanes of a run with several kernels, one after the other, and the gate between them.

    Registered as a plugin (the gate's table in the terminal summary); stands where a single
    lane does (``UdpsendSession.lane``): ``run``, ``nic_models``, ``describe``, ``notes``.
    """

    def __init__(self, lanes: Sequence[kernel_lane.Lane], gate: KernelGate | None) -> None:
        self.lanes = list(lanes)
        self.gate = gate
        self.guest_environment = None  # no single environment: see document()
        self.reported: dict[str, list[str]] = {}  # lane suffix -> the node ids it reported
        self.interleaved: dict[str, list[paired.PairedRow]] = {}  # --udpsend-interleave: node id -> its paired rows

    @property
    def nic_models(self) -> set[str]:
        return set().union(*(lane.nic_models for lane in self.lanes))

    @nic_models.setter
    def nic_models(self, models: set[str]) -> None:
        for lane in self.lanes:  # every VM boots with the NIC pairs the tests ask for
            lane.nic_models = set(models)

    def describe(self) -> list[str]:
        lines = [text for lane in self.lanes for text in lane.describe()]
        if self.gate is not None:
            lines.append(f"each test on the other kernels is gated against {self.gate.ref.suffix}")
        return lines

    def notes(self) -> list[tuple[str, str]]:
        return [note for lane in self.lanes for note in lane.notes()]

    def run(self, session: pytest.Session) -> None:
        session.testscollected = len(session.items) * len(self.lanes)  # the progress counts every kernel's reports
        rounds = session.config.getoption("udpsend_interleave")
        if self.gate is not None and rounds:  # two kernels in alternating boots, judged on the pairs
            from pytest_udpsend.frontend import kernel_interleave

            self.interleaved = kernel_interleave.run(self.lanes, session, rounds, self.gate.settings)
            for lane in self.lanes:
                self.reported[lane.suffix] = [f"{item.nodeid}@{lane.suffix}" for item in session.items]
            return
        if self.gate is not None:
            repeat = session.config.getoption("udpsend_repeat")
            self.gate.check_counts(session.items, repeat)
        for lane in self.lanes:
            results = lane.execute(session)
            if self.gate is not None and lane is self.gate.ref:
                self.gate.set_reference(results)
            elif self.gate is not None:
                results = [(item, self.gate.judge(lane, item, phases)) for item, phases in results]
            for item, phases in results:
                lane.report(item, phases)
                self.reported.setdefault(lane.suffix, []).append(f"{item.nodeid}@{lane.suffix}")

    def document(self, tests: Mapping[str, Any], runner: Mapping[str, Any]) -> dict[str, Any]:
        """The --udpsend-json document: one run per kernel (``runs``, as ``udpsend merge`` writes them)."""
        runs: list[dict[str, Any]] = []
        for lane in self.lanes:
            env = {**(lane.guest_environment or {"kernel": lane.release}), **runner}
            run: dict[str, Any] = {
                "source": f"--udpsend-kernel {lane.source} ({lane.suffix})",
                "environment": env,
                "tests": {k: tests[k] for k in self.reported.get(lane.suffix, []) if k in tests},
            }
            if self.gate is not None and (record := self.gate.record(lane)):
                run["gate"] = record
            runs.append(run)
        envs = [r["environment"] for r in runs]
        shared = {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}
        return {
            "format": store.FORMAT,
            "environment": {**shared, "kernels": [lane.suffix for lane in self.lanes]},
            "tests": {},
            "runs": runs,
        }

    def nothing_compared(self) -> str | None:
        """With a gate: one sentence if the other kernels ran tests but not one comparison was made."""
        if self.interleaved:
            return None
        if self.gate is None or not any(
            self.reported.get(lane.suffix) for lane in self.lanes if lane is not self.gate.ref
        ):
            return None
        return compare.nothing_compared([r for rows in self.gate.rows.values() for r in rows])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.nothing_compared() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # never a pass on what was not compared

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if why := self.nothing_compared():
            terminalreporter.write_line(f"udpsend kernel gate: {why}", red=True)
        if self.gate is None or not self.gate.rows:
            return
        gate = self.gate
        terminalreporter.section(f"udpsend kernel gate: each kernel against {gate.ref.suffix}")
        terminalreporter.write_line(compare.header(gate.settings, gate.family))
        for suffix, rows in gate.rows.items():
            lane = next(lane for lane in self.lanes if lane.suffix == suffix)
            terminalreporter.write_line("")
            terminalreporter.write_line(compare.table(rows, gate.ref.guest_environment, lane.guest_environment or {}))
            bad = {r.test for r in rows if r.regressed}
            terminalreporter.write_line(
                f"{suffix}: {len(bad)} of {len({r.test for r in rows})} compared test(s) regressed"
            )
            for line in compare.not_compared(rows):
                terminalreporter.write_line(f"{suffix}: {line}")


def number_repeats(lanes: Sequence[kernel_lane.Lane]) -> None:
    """A kernel given again keeps distinct node ids: ``@<release>#2``."""
    seen: dict[str, int] = {}
    for lane in lanes:
        seen[lane.release] = seen.get(lane.release, 0) + 1
        lane.suffix = lane.release if seen[lane.release] == 1 else f"{lane.release}#{seen[lane.release]}"


def configure(
    given: Sequence[str], against: str | None, settings: compare.Settings, make: Callable[[str], kernel_lane.Lane]
) -> Kernels:
    """The Kernels of a run, the reference first; ``make`` builds one value's lane (checking its
    preconditions).  A bad --udpsend-gate-against is a usage error, before any boot."""
    if against is not None and len(given) < 2:
        raise pytest.UsageError(
            f"--udpsend-gate-against {against}: compares the kernels of one run: give "
            "--udpsend-kernel twice or more, e.g. --udpsend-kernel host --udpsend-kernel NEW.img"
        )
    if against is not None and len({v == vm.HOST for v in given}) > 1 and not settings.allow_mixed:
        raise pytest.UsageError(
            f"--udpsend-gate-against {against}: the kernels given run on the bare host and in a VM, "
            "which measure differently (emulated or virtualised timing), so their difference is not "
            "the kernel's; give only images (or only host), or pass --udpsend-allow-mixed if intended"
        )
    lanes = [make(value) for value in given]
    number_repeats(lanes)
    if against is None:
        return Kernels(lanes, None)
    ref = reference(against, lanes)
    ordered = [ref, *(lane for lane in lanes if lane is not ref)]
    return Kernels(ordered, KernelGate(ref, len(lanes) - 1, replace(settings, one_command=True)))

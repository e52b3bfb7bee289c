"""--udpsend-interleave N: each measuring test in N rounds of two arms, judged on the pairs.

A round runs the whole test (fixtures, body, assertion markers) once in each arm, back to
back, in an order balanced over rounds and random within them (AB BA, or BA AB, ...), so
that drift falls on both arms alike.  The arm is in ``item.stash[ARM_KEY]``; the fixtures
read the candidate's scenario from it (``fixtures.scenario``).  After the last round the
pairs are judged by ``results/paired.py`` and one set of reports is logged for the test:
the first arm run that failed (with which arm and round), or the last one, failed with
the paired table if the candidate regressed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from _pytest.runner import runtestprotocol

from pytest_udpsend.frontend.keys import ARM_KEY, RESULTS_KEY, udpsend_session
from pytest_udpsend.frontend.markers import CANDIDATE_KEY, SCENARIO_KEY
from pytest_udpsend.results import paired, store

FAMILY_KEY = pytest.StashKey["Family"]()  # on the config: the run's family, set once items are collected
PROPERTY = "udpsend_interleave"  # the rounds and the paired verdicts, on the call report's user_properties (collect.py)
SECTION = "udpsend interleave"


def orders(rounds: int, rng: random.Random) -> list[tuple[str, str]]:
    """Arm order per round: each two rounds one AB and one BA, which first at random."""
    ab, ba = paired.ARMS, (paired.ARMS[1], paired.ARMS[0])
    out: list[tuple[str, str]] = []
    for i in range(rounds):
        out.append(rng.choice((ab, ba)) if i % 2 == 0 else (out[-1][1], out[-1][0]))
    return out


MEASURING = frozenset({"udpsend_result", "udp_sender", "sender_process", "udpsend_sweep"})  # fixtures that measure


def interleaved(item: pytest.Item) -> bool:
    """Does this run measure ``item`` in two arms?  With the option, tests that measure or ask for the arm."""
    wanted = MEASURING | {"udpsend_arm"}
    return bool(udpsend_session(item.config).options.interleave) and bool(
        wanted & set(getattr(item, "fixturenames", ()))
    )


def is_control(item: pytest.Item) -> bool:
    """Arms that cannot differ: an empty candidate marker, or no candidate at all (no marker, no
    --udpsend-candidate-sysctl, no udpsend_arm fixture to build the arms by hand)."""
    if CANDIDATE_KEY in item.stash:
        return item.stash[CANDIDATE_KEY] == item.stash.get(SCENARIO_KEY, None)
    session = udpsend_session(item.config)
    return not session.options.candidate_sysctls and "udpsend_arm" not in getattr(item, "fixturenames", ())


@dataclass
class Family:
    """The comparisons of a run (Bonferroni), known once the items are collected."""

    tests: int = 0
    metrics: tuple[str, ...] = ()
    refusal: str | None = None

    @property
    def size(self) -> int:
        return max(self.tests * len(self.metrics), 1)


def plan(items: Sequence[pytest.Item], config: pytest.Config) -> None:
    """Size the family and check that N rounds can reach its level: a usage error in one sentence if
    not (on an xdist worker, which cannot stop the run, each interleaved test fails with it)."""
    session = udpsend_session(config)
    if not session.options.interleave:
        return
    family = Family(sum(1 for i in items if interleaved(i)), tuple(session.gate.names()))
    if family.tests:
        family.refusal = paired.refusal(
            session.options.interleave, session.gate.alpha, family.size, len(family.metrics)
        )
    config.stash[FAMILY_KEY] = family
    if family.refusal and not hasattr(config, "workerinput"):
        raise pytest.UsageError(family.refusal)


def protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """pytest_runtest_protocol for an interleaved test (None: not one, pytest runs it as usual)."""
    if not interleaved(item):
        return None
    family = item.config.stash.get(FAMILY_KEY, None) or Family(1, tuple(udpsend_session(item.config).gate.names()))
    if family.refusal:
        refuse(item, family)
    else:
        run(item, nextitem, family)
    return True


@dataclass
class ArmRun:
    arm: str
    round: int
    reports: list[pytest.TestReport]
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def call_failed(self) -> bool:
        """The test itself failed or skipped in this arm (set-up or body): no further rounds."""
        return any((r.failed or r.skipped) for r in self.reports if r.when != "teardown")

    @property
    def broken(self) -> bool:
        return self.call_failed or any(r.failed for r in self.reports)


def _run_arm(item: pytest.Item, arm: str, index: int, nextitem: pytest.Item | None) -> ArmRun:
    item.stash[ARM_KEY] = arm
    item.stash[RESULTS_KEY] = []  # the fixtures append this arm's samples here
    # each arm starts clean: captured output and user properties would otherwise pile up 2N times
    item._report_sections = []  # pytest keeps captured output here (no public API to reset it)
    item.user_properties = []
    # runtestprotocol is pytest's own (used by pytest-rerunfailures and xdist the same way): no public equivalent
    reports = runtestprotocol(item, log=False, nextitem=nextitem)
    return ArmRun(arm, index, reports, [r.to_dict() for r in item.stash[RESULTS_KEY]])


def run(item: pytest.Item, nextitem: pytest.Item | None, family: Family) -> None:
    """The runtest protocol of an interleaved test: all rounds, then one logged set of reports."""
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    session = udpsend_session(item.config)
    runs: list[ArmRun] = []
    stop: ArmRun | None = None
    plan_ = orders(session.options.interleave, random.Random())
    # between arm runs only the test's own fixtures go: module and session ones (the eBPF probe) stay
    steps = [(index, arm) for index, order in enumerate(plan_) for arm in order]
    for n, (index, arm) in enumerate(steps):
        last = n == len(steps) - 1
        # teardown keeps what the "next item" shares with this one: its parent keeps all but the test's own
        one = _run_arm(item, arm, index, nextitem if last else cast(pytest.Item, item.parent))
        runs.append(one)
        if one.broken or item.session.shouldstop or item.session.shouldfail:
            stop = None if last else one
            break
    extra: list[pytest.TestReport] = []
    if stop is not None:  # torn down as if another round followed: take the module and the rest down as pytest would
        extra = _finish_teardown(item, nextitem)
    rounds = _rounds(runs, plan_)
    final = stop or runs[-1]
    complete = stop is None and not final.call_failed
    verdict = _judge(item, rounds, family) if complete else None
    _log(item, final, rounds, plan_, verdict, family, stopped=stop is not None or final.call_failed)
    for report in extra:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _finish_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.TestReport]:
    """What the last arm's teardown would have taken down with the real next item (the module, ...).

    Only the setup state, not the teardown hooks again (plugins' hooks expect one teardown per run);
    pytest has no public call for it (pytest-rerunfailures reaches it the same way)."""
    call = pytest.CallInfo.from_call(lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown")
    report = pytest.TestReport.from_item_and_call(item, call)
    return [report] if report.failed else []


def _rounds(runs: list[ArmRun], plan_: list[tuple[str, str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"order": "".join(a[0].upper() for a in order), "baseline": [], "candidate": []} for order in plan_
    ]
    for one in runs:
        out[one.round][one.arm] = one.samples
    return [r for r in out if r["baseline"] or r["candidate"]]


def _settings(item: pytest.Item, family: Family) -> tuple[float, list[str]]:
    """The allowed change and the compared metrics: the udpsend_baseline marker's, else the ini options'."""
    scen = item.stash.get(SCENARIO_KEY, None)
    session = udpsend_session(item.config)
    tolerance = float(session.gate.tolerance)
    metrics = list(family.metrics)
    if scen is not None and scen.baseline.tolerance is not None:
        tolerance = scen.baseline.tolerance
    if scen is not None and scen.baseline.metrics:
        metrics = [m for m in scen.baseline.metrics if m in family.metrics] or list(scen.baseline.metrics)
    return tolerance, metrics


def _judge(item: pytest.Item, rounds: list[dict[str, Any]], family: Family) -> list[paired.PairedRow]:
    tolerance, metrics = _settings(item, family)
    level = udpsend_session(item.config).gate.alpha / family.size
    return paired.judge_test(item.nodeid, rounds, metrics, tolerance, level, control=is_control(item))


def _log(
    item: pytest.Item,
    final: ArmRun,
    rounds: list[dict[str, Any]],
    plan_: list[tuple[str, str]],
    verdict: list[paired.PairedRow] | None,
    family: Family,
    stopped: bool,
) -> None:
    session = udpsend_session(item.config)
    level = session.gate.alpha / family.size
    control = is_control(item)
    tolerance, metrics = _settings(item, family)
    where = f"the {final.arm} arm of round {final.round + 1} of {len(plan_)}"
    for report in final.reports:
        if stopped and (report.failed or report.skipped):
            report.sections.append((SECTION, f"this run {'failed' if report.failed else 'skipped'} in {where}"))
        if report.when == "call":
            record: dict[str, Any] = {
                "control": control,
                "rounds": rounds,
                "level": level,
                "family": family.size,
                "tolerance": tolerance,
                "alpha": session.gate.alpha,
                "metrics": metrics,
                "paired": [r.to_dict() for r in verdict or []],
            }
            if stopped:
                record["stopped"] = {"arm": final.arm, "round": final.round + 1}
            report.user_properties = [(k, v) for k, v in report.user_properties if k != store.PROPERTY]
            baseline = [s for r in rounds for s in r["baseline"]]
            if baseline:
                report.user_properties.append((store.PROPERTY, baseline))
            report.user_properties.append((PROPERTY, record))
            failing = [r for r in verdict or [] if r.fails]
            if failing and report.passed:
                report.outcome = "failed"
                head = "the candidate regressed" if any(r.regressed for r in failing) else "an arm lost a metric"
                report.longrepr = f"udpsend interleaved A/B: {head}\n" + paired.table(verdict or [], level)
            elif verdict:
                report.sections.append((SECTION, paired.table(verdict, level)))
        item.ihook.pytest_runtest_logreport(report=report)


def refuse(item: pytest.Item, family: Family) -> None:
    """The run cannot reach its level: the test fails with the sentence, nothing measured."""
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    report = pytest.TestReport(item.nodeid, item.location, {}, "failed", f"udpsend: {family.refusal}", "call")
    item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

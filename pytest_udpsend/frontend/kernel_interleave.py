"""Two kernels in interleaved boots: ``--udpsend-kernel OLD --udpsend-kernel NEW --udpsend-gate-against OLD
--udpsend-interleave N``.

A round is one boot of each kernel, in the balanced random order the arms of
``--udpsend-interleave`` use (OLD NEW, NEW OLD, ...): the reference kernel is the baseline
arm, the other the candidate.  Each boot runs every selected test once (the guests do not
interleave arms themselves).  After the last round each test is reported once per kernel:
the reference's with all its samples, the other's judged by the paired rule
(results/paired.py) on the per-round pairs, its call phase failed with the paired table if
it regressed.  Drift between boots falls on both kernels alike, so the floors of the
two-session gate do not apply.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from pytest_udpsend.frontend import interleave, kernel_lane
from pytest_udpsend.frontend.markers import SCENARIO_KEY, Scenario
from pytest_udpsend.lane import wire
from pytest_udpsend.results import compare, paired, store

Phases = list[wire.GuestReport]


def samples(phases: Phases) -> list[dict[str, Any]]:
    """The samples a test's call phase carried back (store.PROPERTY in its user_properties)."""
    for g in phases:
        if g.when == "call":
            for name, value in g.user_properties:
                if name == store.PROPERTY:
                    return list(value)
    return []


def family(items: Sequence[pytest.Item], settings: compare.Settings) -> tuple[int, int]:
    """(measuring tests, comparisons): every measuring test x every compared metric."""
    measuring = sum(1 for item in items if interleave.MEASURING & set(getattr(item, "fixturenames", ())))
    return measuring, max(measuring * len(settings.names()), 1)


def _judge(
    item: pytest.Item, rounds: list[dict[str, Any]], settings: compare.Settings, level: float
) -> list[paired.PairedRow]:
    """The paired rule with the test's udpsend_baseline marker overrides, as the other paths apply them."""
    marker = (item.stash.get(SCENARIO_KEY, None) or Scenario()).baseline
    tolerance = settings.tolerance if marker.tolerance is None else marker.tolerance
    return paired.judge_test(item.nodeid, rounds, marker.metrics or settings.names(), tolerance, level)


def run(
    lanes: Sequence[kernel_lane.Lane], session: pytest.Session, rounds: int, settings: compare.Settings
) -> dict[str, list[paired.PairedRow]]:
    """Boot the two lanes alternately, then report every test once per kernel; the paired rows per test."""
    ref, cand = lanes
    measuring, size = family(session.items, settings)
    if measuring and (why := paired.refusal(rounds, settings.alpha, size, len(settings.names()))):
        raise pytest.UsageError(why)
    for lane in lanes:
        lane.overrides = ["--udpsend-interleave=0"]  # the guests measure each test once per boot
    plan = interleave.orders(rounds, random.Random())
    records: dict[str, list[dict[str, Any]]] = {}
    last: dict[tuple[str, str], tuple[pytest.Item, Phases]] = {}
    for index, order in enumerate(plan):
        for arm in order:
            lane = ref if arm == "baseline" else cand
            for item, phases in lane.execute(session):
                slots = records.setdefault(item.nodeid, [{"order": "", "baseline": [], "candidate": []} for _ in plan])
                slots[index]["order"] = "".join(a[0].upper() for a in order)
                slots[index][arm] = samples(phases)
                failed_before = any(g.outcome == "failed" for g in last.get((lane.suffix, item.nodeid), (item, []))[1])
                if not failed_before:
                    last[(lane.suffix, item.nodeid)] = (item, phases)  # the first failure stays, else the latest
    level = settings.alpha / size
    mixed = compare.env_mismatch(ref.guest_environment or {}, cand.guest_environment or {})
    verdicts: dict[str, list[paired.PairedRow]] = {}
    for (suffix, nodeid), (item, phases) in last.items():
        lane = ref if suffix == ref.suffix else cand
        rounds_ = [r for r in records[nodeid] if r["baseline"] or r["candidate"]]
        arm = "baseline" if lane is ref else "candidate"
        taken = [s for r in rounds_ for s in r[arm]]
        extra: list[Any] = []
        failure = None
        if lane is cand and rounds_ and mixed and not settings.allow_mixed:
            failure = (
                f"udpsend kernel gate (interleaved boots): {compare.mixed_refusal(mixed, '--udpsend-allow-mixed')}"
            )
        elif lane is cand and rounds_:  # measured on either kernel: a kernel that lost a metric fails ("lost")
            rows = _judge(item, rounds_, settings, level)
            verdicts[nodeid] = rows
            extra = [
                [
                    interleave.PROPERTY,
                    {
                        "control": False,
                        "rounds": rounds_,
                        "level": level,
                        "family": size,
                        "tolerance": settings.tolerance,
                        "alpha": settings.alpha,
                        "metrics": settings.names(),
                        "paired": [r.to_dict() for r in rows],
                    },
                ]
            ]
            if any(r.fails for r in rows):
                failure = (
                    f"udpsend kernel gate (interleaved boots, against {ref.suffix}): regression:\n"
                    + paired.table(rows, level)
                )
        lane.report(item, [_with(g, taken, extra, failure) for g in phases])
    return verdicts


def _with(g: wire.GuestReport, taken: list[dict[str, Any]], extra: list[Any], failure: str | None) -> wire.GuestReport:
    """A call phase carrying every round's samples of its kernel (and the paired record), failed on a regression."""
    if g.when != "call":
        return g
    props = (
        [p for p in g.user_properties if p[0] != store.PROPERTY] + ([[store.PROPERTY, taken]] if taken else []) + extra
    )
    if failure and g.outcome == "passed":
        return replace(g, user_properties=props, outcome="failed", longrepr=failure)
    return replace(g, user_properties=props)

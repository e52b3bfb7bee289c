"""Fan-in: many runners' result files merged, grouped and judged with the one gate (compare.py).

A CI system fans a suite out over hosts and kernels; each job writes one ``--udpsend-json``
document.  Here they come back together:

* **Units.** Each file is one unit; a merged file (``udpsend merge``) holds one unit per
  source document in its ``runs``.
* **What made them differ.** The grouping fields are the kernel release, CPU model,
  hostname and each ``--udpsend-label`` key.  Comparing two sides, a field whose values
  on the two sides do not overlap is the change under test (the kernel in an upgrade
  gate; the hostnames of throw-away CI runners) and does not group; every other field
  that varies groups.  Units of one side and one group are pooled (their samples per
  test joined), so shards of one runner count together.
* **One rule.** Each pair of groups is judged by ``compare.judge`` (the like-with-like
  refusal included); the verdict is a regression if any group regressed, else refused if any
  group was refused or has no partner on the other side, else ok (``udpsend compare`` exits 1, 2, 0).  A group that measured nothing (no
  tests, no test in common, a test without samples) is refused by that rule, never passed.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_udpsend.errors import InputError, ResultsFileError
from pytest_udpsend.results import compare, floors, store

FIELDS = ("kernel", "cpu_model", "hostname")  # and every label key, as "label:KEY"

Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Unit:
    """One source document: where it came from, how it measured, what it measured."""

    source: str
    environment: Mapping[str, Any]
    tests: Mapping[str, Any]
    gate: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other top-level parts, e.g. a remedy sweep's cells

    def run(self) -> dict[str, Any]:
        """The unit as an entry of a merged document's ``runs``."""
        run: dict[str, Any] = {
            **self.extra,
            "source": self.source,
            "environment": dict(self.environment),
            "tests": dict(self.tests),
        }
        if self.gate:
            run["gate"] = dict(self.gate)
        return run

    def doc(self) -> dict[str, Any]:
        doc = {**self.run(), "format": store.FORMAT}
        del doc["source"]
        return doc

    def value(self, name: str) -> str:
        if name.startswith("label:"):
            return str((self.environment.get("labels") or {}).get(name[6:], "-"))
        return str(self.environment.get(name) or "?")


def expand(patterns: Sequence[str]) -> list[str]:
    """Paths and globs as files, in the order given (a glob's matches sorted); a glob matching nothing is an error."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise InputError(f"{pattern}: no file matches (quote a glob so the shell leaves it to udpsend)")
            paths += matches
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


_OWN = ("format", "source", "environment", "tests", "gate", "runs")


def _unit(part: Mapping[str, Any], source: str) -> Unit:
    extra = {k: v for k, v in part.items() if k not in _OWN}
    return Unit(source, part.get("environment", {}), part.get("tests", {}), part.get("gate"), extra)


def units_of(doc: Mapping[str, Any], source: str) -> list[Unit]:
    runs = doc.get("runs")
    if runs:
        return [_unit(r, str(r.get("source") or f"{source}#{i}")) for i, r in enumerate(runs)]
    return [_unit(doc, source)]


def load_units(patterns: Sequence[str]) -> list[Unit]:
    """Every unit in the files (validated on load by store.load)."""
    return [u for path in expand(patterns) for u in units_of(store.load(path), path)]


# --- merge -----------------------------------------------------------------------------------


def merge(paths: Sequence[str]) -> dict[str, Any]:
    """One document from many: their runs, and the environment fields they all share."""
    docs = [(path, store.load(path)) for path in paths]
    formats = {doc["format"] for _, doc in docs}
    if len(formats) > 1:
        first: dict[str, str] = {}
        for path, doc in docs:
            first.setdefault(doc["format"], path)
        named = " and ".join(f"{path} is {fmt}" for fmt, path in sorted(first.items()))
        raise ResultsFileError(
            f"refused: {named}: the schema versions differ; re-save the older files with this "
            f"pytest-udpsend (run their suites again) so all are {store.FORMAT}"
        )
    units = [u for path, doc in docs for u in units_of(doc, path)]
    runs = [u.run() for u in units]
    envs = [u.environment for u in units]
    shared = {k: v for k, v in envs[0].items() if all(k in e and e[k] == v for e in envs[1:])} if envs else {}
    return {"format": store.FORMAT, "environment": {**shared, "merged": len(units)}, "tests": {}, "runs": runs}


def write_merged(out: str, inputs: Sequence[str]) -> tuple[int, int]:
    """``udpsend merge OUT IN...``: every input validated on load, the merged document before it is written; a
    merge of files without a single test is refused (nothing written).  (runs merged, files read)."""
    paths = expand(inputs)
    doc = store.validate(merge(paths), out)
    if not any(run.get("tests") for run in doc["runs"]):  # an empty document would pass for results (issue 24)
        raise ResultsFileError(
            f"refused: {listed(paths)} hold no test (written by runs that measured nothing), so {out} "
            "would hold none; merge files of runs that measured"
        )
    store.write(out, doc)
    return len(doc["runs"]), len(paths)


# --- grouping --------------------------------------------------------------------------------


def fields_of(units: Sequence[Unit]) -> list[str]:
    labels = sorted({k for u in units for k in (u.environment.get("labels") or {})})
    return [*FIELDS, *(f"label:{k}" for k in labels)]


def varying(units: Sequence[Unit]) -> list[str]:
    """The grouping fields whose value is not the same in every unit."""
    return [f for f in fields_of(units) if len({u.value(f) for u in units}) > 1]


def split(base: Sequence[Unit], new: Sequence[Unit]) -> tuple[list[str], list[str]]:
    """(grouping fields, fields that are the change under test) for two sides."""
    group, change = [], []
    for f in fields_of([*base, *new]):
        b, n = {u.value(f) for u in base}, {u.value(f) for u in new}
        if b.isdisjoint(n):
            change.append(f)
        elif len(b | n) > 1:
            group.append(f)
    return group, change


def key_of(unit: Unit, fields: Sequence[str]) -> Key:
    return tuple((f, unit.value(f)) for f in fields)


def group(units: Sequence[Unit], fields: Sequence[str]) -> dict[Key, list[Unit]]:
    groups: dict[Key, list[Unit]] = {}
    for u in units:
        groups.setdefault(key_of(u, fields), []).append(u)
    return dict(sorted(groups.items()))


def describe(key: Key) -> str:
    return ", ".join(f"{f[6:]}={v}" if f.startswith("label:") else f"{f} {v}" for f, v in key) or "all results"


def pool(units: Sequence[Unit]) -> tuple[dict[str, Any] | None, str | None]:
    """One document from one group's units (samples per test joined), or None and why they do not pool."""
    first = units[0]
    for u in units[1:]:
        if mixed := compare.env_mismatch(first.environment, u.environment):
            return None, f"{first.source} and {u.source} were measured differently ({mixed})"
    if len(units) == 1:
        return first.doc(), None
    tests: dict[str, dict[str, Any]] = {}
    for u in units:
        for nodeid, entry in u.tests.items():
            slot = tests.setdefault(nodeid, {"outcome": entry.get("outcome"), "samples": []})
            slot["samples"] = [*slot["samples"], *entry.get("samples", [])]
            if entry.get("outcome") == "failed":
                slot["outcome"] = "failed"
    env = {**first.environment, "sources": [u.source for u in units]}
    doc = {"format": store.FORMAT, "environment": env, "tests": tests}
    if learned := floors.learned([u.tests for u in units]):  # sessions enough to know each test's own drift
        doc["floors"] = learned
    return doc, None


def mixed_change(units: Sequence[Unit], change: Sequence[str]) -> str | None:
    """Why a side's group cannot be pooled: it holds two kernels while the kernel is the change under test.

    Other changed fields (throw-away CI hostnames) may vary: the like-with-like check in ``pool`` still holds.
    """
    for f in (f for f in change if f == "kernel"):
        seen = sorted({u.value(f) for u in units})
        if len(seen) > 1:
            return f"it mixes {f} {', '.join(seen)}"
    return None


# --- compare ---------------------------------------------------------------------------------


@dataclass
class Pair:
    """One group's units, their pooled baseline and new documents, or why the group cannot be judged."""

    key: Key
    base_units: Sequence[Unit]
    new_units: Sequence[Unit]
    base: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    refusal: str = ""


def pair(key: Key, base: Sequence[Unit], new: Sequence[Unit], change: Sequence[str]) -> Pair:
    if not base or not new:
        side, units = ("new results", base) if not new else ("baseline", new)
        return Pair(key, base, new, refusal=f"no {side} for this group (from {', '.join(u.source for u in units)})")
    for name, units in (("baseline", base), ("new side", new)):
        if why := mixed_change(units, change):
            return Pair(key, base, new, refusal=f"the {name} of this group cannot be pooled: {why}")
    (b, why_b), (n, why_n) = pool(base), pool(new)
    if b is None or n is None:
        return Pair(key, base, new, refusal=f"cannot pool: {why_b or why_n}")
    return Pair(key, base, new, b, n)


def pairs(base: Sequence[Unit], new: Sequence[Unit]) -> tuple[list[str], list[Pair]]:
    """The change-under-test fields and every group's Pair, as ``udpsend compare`` and the report judge them."""
    change, groups = paired_groups(base, new)
    return change, [pair(key, b, n, change) for key, b, n in groups]


def family(judged: Sequence[Pair], given: Mapping[str, Any]) -> int:
    """The gate's family over all groups: one exit status for all, so the error is controlled over all."""
    return max(
        sum(
            compare.family_size(compare.samples_by_test(p.base), compare.settings_for(p.new, given))
            for p in judged
            if p.base is not None and p.new is not None
        ),
        1,
    )


@dataclass(frozen=True)
class Sides:
    """``udpsend compare BASE... --new NEW...`` judged: the line naming the groups (None for one group),
    each group's name and judgement, the overall verdict."""

    heading: str | None
    groups: list[tuple[str, compare.Judgement]]
    status: compare.Status

    @property
    def several(self) -> bool:
        return self.heading is not None


def overall(statuses: Sequence[compare.Status]) -> compare.Status:
    """Regression if any group regressed, else refused if any was refused, else ok."""
    return "regression" if "regression" in statuses else ("refused" if "refused" in statuses else "ok")


def compare_sides(base_patterns: Sequence[str], new_patterns: Sequence[str], given: Mapping[str, Any]) -> Sides:
    """``udpsend compare BASE... --new NEW...``: every group judged by the one rule, one verdict for all."""
    base, new = load_units(base_patterns), load_units(new_patterns)
    change, judged = pairs(base, new)
    heading = None
    if len(judged) > 1:
        changed = "; ".join(
            f"{f} {', '.join(sorted({u.value(f) for u in base}))} -> {', '.join(sorted({u.value(f) for u in new}))}"
            for f in change
        )
        by = ", ".join(f for f, _ in judged[0].key)
        heading = f"{len(base)} baseline and {len(new)} new result(s) in {len(judged)} group(s) by {by}" + (
            f"; the change under test: {changed}" if changed else ""
        )
    size = family(judged, given)
    groups = []
    for p in judged:
        if p.base is None or p.new is None:
            judgement = compare.Judgement("refused", refusal=f"{describe(p.key)}: {p.refusal}")
        else:
            judgement = compare.judge(p.base, p.new, given, size, (named(p.base_units), named(p.new_units)))
        groups.append((describe(p.key), judgement))
    return Sides(heading, groups, overall([j.status for _, j in groups]))


def groups_for_report(units: Sequence[Unit]) -> dict[Key, list[Unit]]:
    """The units of one side grouped by every field that varies among them."""
    return group(units, varying(units))


def paired_groups(
    base: Sequence[Unit], new: Sequence[Unit]
) -> tuple[list[str], list[tuple[Key, list[Unit], list[Unit]]]]:
    """The change-under-test fields and each group's (key, baseline units, new units), as compare_sides pairs them."""
    fields, change = split(base, new)
    b, n = group(base, fields), group(new, fields)
    return change, [(k, b.get(k, []), n.get(k, [])) for k in sorted(set(b) | set(n))]


def named(units: Sequence[Unit]) -> str:
    """The files of a side as the user gave them (a refusal names them)."""
    return listed([u.source for u in units])


def listed(names: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def source_names(units: Sequence[Unit]) -> str:
    return ", ".join(Path(u.source).name for u in units)

"""Baseline comparison: is a metric worse than the baseline by more than sessions drift apart?

One rule, used by the pytest gate, ``udpsend compare`` and the HTML report (README,
"Baseline comparison", has the reasoning and the limits):

* **Allowed change.** Per metric, the larger of the tolerance (a fraction of the
  baseline median) and the metric's *session noise floor* (``metrics.Metric.noise``:
  how far two sessions of an unchanged host drift apart), and at least the metric's
  absolute floor.  A rate (``scale="odds"``) takes that factor on each sample's odds.
* **Test.** A one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``) of the new
  samples against the baseline samples *moved by the allowed change* in the worse
  direction: H0 "worse by at most the allowed change".  Exact distribution without
  ties; with ties, the exact permutation distribution wherever it can decide the
  verdict.
* **Family.** The error is controlled over every comparison of the run (Bonferroni):
  the family is the baseline document's tests x the metrics compared that each
  measured, known before the first test runs, so the gate decides each test right
  after it.  A comparison is a regression where p < alpha / family.
* **Refusal.** Sample counts whose smallest possible p cannot pass that level are
  refused (``needed_samples`` says how many are needed) rather than passed silently;
  so are a test with no samples, a value or p that is not a number, and a comparison
  in which nothing at all was compared (``refusal``, ``nothing_compared``, ``judge``).
  What was not compared by design (a test not selected, a metric with no probe) is
  listed (``not_compared``), never counted as a pass; a metric one side measured that the
  other lacks without saying why (``absent``: a probe that stopped working) is refused.
* **Like with like.** Results measured differently (backend, lane and accelerator, CPU
  model and count, payload and duration) are refused unless the user allows it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

from pytest_udpsend.results.metrics import METRICS, lookup, odds_scaled, values

DEFAULT_TOLERANCE = 0.25
DEFAULT_ALPHA = 0.05
_KERNEL_SUFFIX = re.compile(r"\[kernel=[^\]]*\]$|@[^/\s]+$")
_EXACT_PERMUTATIONS = 200_000  # beyond this many arrangements, the normal approximation is accurate enough
# Environment fields that say how a result was measured; the kernel is meant to differ.
ENV_FIELDS = ("backend", "machine", "cpu_model", "cpu_count", "virtualized")
# Sender parameters that change what a sample means (scenario knobs such as sndbuf may be what is gated).
PARAM_FIELDS = ("payload", "duration", "ipv6", "mode", "batch", "gso_size", "flows", "threads")


@dataclass(frozen=True)
class Settings:
    """The gate's knobs: the ini options, the ``udpsend compare`` / ``report`` flags."""

    tolerance: float = DEFAULT_TOLERANCE
    alpha: float = DEFAULT_ALPHA
    metrics: tuple[str, ...] | None = None  # None: every metric
    allow_mixed: bool = False
    # Both sides measured by one command, minutes apart (--udpsend-gate-against): the noise floors are the
    # square roots of the session floors (README, "One command: old against new", has the A/A figures).
    one_command: bool = False

    def noise(self, metric: str) -> float:
        """The metric's noise factor for this comparison."""
        factor = METRICS[metric].noise
        return math.sqrt(factor) if self.one_command else factor

    def names(self) -> list[str]:
        return list(self.metrics or METRICS)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": list(self.metrics) if self.metrics else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if kw.get("metrics"):
            kw["metrics"] = tuple(kw["metrics"])
        return cls(**kw)


def base_key(nodeid: str) -> str:
    """The comparison key of a test: its node id without a kernel-lane suffix."""
    return _KERNEL_SUFFIX.sub("", nodeid)


def find(key: str, by_test: Mapping[str, Any]) -> Any:
    """``by_test[key]``, or the one entry whose id matches ``key`` on a path boundary.

    Node ids are relative to pytest's rootdir, which moves when it is not pinned by
    an ini file (a path given to an option counts when pytest picks it), so
    ``gate/test_x.py::t`` and ``test_x.py::t`` must meet.
    """
    if key in by_test:
        return by_test[key]
    matches = [k for k in by_test if k.endswith("/" + key) or key.endswith("/" + k)]
    return by_test[matches[0]] if len(matches) == 1 else None


def samples_by_test(doc: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    return {base_key(k): v.get("samples", []) for k, v in doc.get("tests", {}).items()}


# --- the family and what it needs -------------------------------------------------------------


def family_size(baseline: Mapping[str, Sequence[Mapping[str, Any]]], settings: Settings) -> int:
    """Comparisons in a run: each baseline test x the compared metrics its samples have."""
    names = settings.names()
    return max(sum(1 for samples in baseline.values() for m in names if values(samples, m)), 1)


def level(settings: Settings, family: int) -> float:
    """The per-comparison significance level (Bonferroni over the family)."""
    return settings.alpha / max(family, 1)


def smallest_p(n: int, m: int) -> float:
    """The smallest one-sided Mann-Whitney p that n against m samples can give."""
    return 1.0 / math.comb(n + m, n) if n and m else 1.0


def needed_samples(base_n: int, new_n: int, settings: Settings, family: int) -> str | None:
    """None if these counts can reach the level, else one sentence saying how many are needed."""
    lvl = level(settings, family)
    if smallest_p(base_n, new_n) < lvl:
        return None
    k = next(k for k in range(1, 1000) if smallest_p(k, k) < lvl)
    more = next((r for r in range(new_n, 1000) if smallest_p(base_n, r) < lvl), None)
    here = f"--udpsend-repeat {more} in this run would do with this baseline, or " if more and more <= 2 * k else ""
    return (
        f"{base_n} baseline and {new_n} new samples per test cannot reach p < {lvl:.2g} "
        f"(alpha {settings.alpha:g} over {family} comparisons: tests x metrics); {here}"
        f"measure both sides with --udpsend-repeat {k} or more"
    )


# --- the test --------------------------------------------------------------------------------


def p_greater(x: Sequence[float], y: Sequence[float], lvl: float = 0.0) -> float:
    """One-sided Mann-Whitney p for H1 "x tends to be larger than y" (scipy.stats).

    Exact without ties; with ties, the exact permutation distribution wherever the
    normal approximation (with tie correction) lands within 10x of ``lvl``, the
    only place it could change a verdict (it costs 0.2 s at 8 against 8).
    """
    from scipy import stats

    n, m = len(x), len(y)
    if any(math.isnan(v) for v in (*x, *y)):
        return math.nan  # no statistic: the caller refuses, never "ok"
    if len(set(x) | set(y)) == 1:
        return 1.0  # every value tied: U is the same in every arrangement, so P(U >= u) is exactly 1
    if len(set(x) | set(y)) == n + m:
        return float(stats.mannwhitneyu(x, y, alternative="greater", method="exact").pvalue)
    p = float(stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").pvalue)
    arrangements = math.comb(n + m, n)
    if p <= 10 * lvl and arrangements <= _EXACT_PERMUTATIONS:
        exact = stats.PermutationMethod(n_resamples=arrangements)  # enumerates every arrangement
        p = float(stats.mannwhitneyu(x, y, alternative="greater", method=exact).pvalue)
    return p


# Verdicts, as the saved document and the tables spell them.  Compared: the test decided.  Refused: nothing may
# pass on it (one sentence says why).  Every other verdict is not compared: listed, never a pass.
Compared = Literal["regression", "ok", "improved"]
Refused = Literal["too few samples", "measured differently", "no samples", "not a number", "lost"]
NotCompared = Literal["no baseline", "not measured", "missing in new run"]
Verdict = Compared | Refused | NotCompared
COMPARED: tuple[Compared, ...] = get_args(Compared)
REFUSED: tuple[Refused, ...] = get_args(Refused)
NOT_COMPARED: tuple[NotCompared, ...] = get_args(NotCompared)
VERDICTS: tuple[Verdict, ...] = (*COMPARED, *REFUSED, *NOT_COMPARED)


@dataclass
class Row:
    test: str
    metric: str
    base_median: float | None
    new_median: float | None
    change: float | None  # relative change of the median, signed as measured
    p_value: float | None
    verdict: Verdict
    direction: str = ""  # "worse" or "better": which way the change goes for this metric
    allowed: float | None = None  # the change the verdict allowed, relative to the baseline median
    note: str = ""
    base_n: int = 0  # samples on each side (what a refusal for too few samples says is needed)
    new_n: int = 0

    @property
    def regressed(self) -> bool:
        return self.verdict == "regression"

    @property
    def compared(self) -> bool:
        return self.verdict in COMPARED

    @property
    def refused(self) -> bool:
        return self.verdict in REFUSED

    @property
    def where(self) -> str:
        return self.test if self.metric == "-" else f"{self.test} {self.metric}"


def allowed_change(metric: str, base_median: float, tolerance: float, noise: float | None = None) -> float:
    """The absolute change of the median that counts as noise: tolerance, noise factor (the session floor
    unless given), absolute floor."""
    return abs(moved(metric, [base_median], base_median, tolerance, True, noise)[0] - base_median)


def moved(
    metric: str, base: Sequence[float], base_median: float, tolerance: float, worse: bool, noise: float | None = None
) -> list[float]:
    """The baseline samples moved by the allowed change, in the worse direction (or the better one).

    Linear metrics move by one amount (from the median); a rate moves on its odds, sample
    by sample, so the allowance shrinks toward 1 where a rate has no room left.
    """
    spec = METRICS[metric]
    factor = spec.noise if noise is None else noise
    up = (spec.worse == "higher") == worse
    if spec.scale == "odds":
        odds = max(1 + tolerance, factor)
        if up:
            return [max(odds_scaled(v, odds), min(v + spec.floor, 1.0)) for v in base]
        return [min(odds_scaled(v, 1 / odds), max(v - spec.floor, 0.0)) for v in base]
    relative = factor - 1 if spec.worse == "higher" else 1 - 1 / factor
    step = max(max(tolerance, relative) * abs(base_median), spec.floor)
    return [v + step if up else v - step for v in base]


def compare_metric(
    test: str,
    metric: str,
    base: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    tolerance: float,
    lvl: float,
    noise: float | None = None,
) -> Row:
    """``noise``: the metric's noise factor (default: its session floor)."""
    spec = METRICS[metric]
    b, n = values(base, metric), values(new, metric)
    for side, vs in (("the baseline", b), ("the new results", n)):
        if not all(math.isfinite(v) for v in vs):  # a NaN median or p would pass as "ok"
            return Row(
                test, metric, None, None, None, None, "not a number", note=f"in {side} (a NaN or infinite value)"
            )
    if not b or not n:
        return absent(test, metric, base, new, b, n)
    bm, nm = statistics.median(b), statistics.median(n)
    change = (nm - bm) / abs(bm) if bm else (0.0 if nm == bm else math.copysign(math.inf, nm - bm))
    sign = 1.0 if spec.worse == "higher" else -1.0
    direction = "" if nm == bm else ("worse" if sign * (nm - bm) > 0 else "better")
    allowed = allowed_change(metric, bm, tolerance, noise)
    rel_allowed = allowed / abs(bm) if bm else None
    row = Row(test, metric, bm, nm, change, None, "too few samples", direction, rel_allowed)
    if smallest_p(len(b), len(n)) >= lvl:
        return row  # significance is out of reach: never a silent pass (callers refuse it)
    # worse by more than allowed: new beyond the baseline moved by the allowed change in the worse direction
    ranked = [sign * v for v in n]
    p = p_greater(ranked, [sign * v for v in moved(metric, b, bm, tolerance, True, noise)], lvl)
    if p < lvl:
        return replace(row, p_value=p, verdict="regression")
    better = p_greater([-v for v in ranked], [-sign * v for v in moved(metric, b, bm, tolerance, False, noise)], lvl)
    if math.isnan(p) or math.isnan(better):
        return replace(row, verdict="not a number", note="for the p-value (these samples give no test statistic)")
    return replace(row, p_value=p, verdict="improved" if better < lvl else "ok")


def absent(
    test: str,
    metric: str,
    base: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    b: Sequence[float],
    n: Sequence[float],
) -> Row:
    """A metric a side lacks: "not measured" (absent by design) if both lack it or the lacking side's samples say
    why; else "lost", refused: a probe that silently stopped working must not pass as not measured."""
    for side, other, samples, vs in (
        ("the new results", "the baseline", new, n),
        ("the baseline", "the new results", base, b),
    ):
        if not vs and (b or n) and not all(says_why_absent(s, metric) for s in samples):
            return Row(
                test,
                metric,
                None,
                None,
                None,
                None,
                "lost",
                note=f"in {side} ({other} measured it, and these samples "
                "neither lack a probe nor say why it is unavailable): did a probe stop working?",
            )
    return Row(test, metric, None, None, None, None, "not measured")


def says_why_absent(sample: Mapping[str, Any], metric: str) -> bool:
    """Whether ``sample`` says why it has no ``metric``: the part holding it (``wfree``) has no backend (no probe) or
    names why the backend could not measure (``unavailable``).  A top-level figure is always written."""
    head, dot, _ = metric.rpartition(".")
    part = lookup(sample, head) if dot else sample
    return bool(dot) and (not isinstance(part, Mapping) or part.get("backend") is None or bool(part.get("unavailable")))


def param_mismatch(base: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> str | None:
    """What differs if the test's samples were sent differently (payload, duration, ...), else None."""

    def params(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        p = (samples[-1].get("params") or {}) if samples else {}
        return {k: p[k] for k in PARAM_FIELDS if k in p}

    bp, np_ = params(base), params(new)
    diff = [f"{k} {bp.get(k)!r} -> {np_.get(k)!r}" for k in PARAM_FIELDS if k in bp and k in np_ and bp[k] != np_[k]]
    return ", ".join(diff) or None


def compare_test(
    test: str,
    base: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    settings: Settings,
    family: int,
    tolerance: float | None = None,
    metrics: Sequence[str] | None = None,
    floors: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Row]:
    """Rows for one test; ``tolerance``/``metrics`` are a udpsend_baseline marker's overrides; ``floors`` the
    test's own noise floors learned from a baseline of several sessions (results/floors.py), per metric."""
    if base is None:
        return [Row(test, "-", None, None, None, None, "no baseline")]
    base_n, new_n = len(base), len(new)
    for side, samples, why in (
        ("the baseline", base, "it holds the test but no measurement"),
        ("the new results", new, "the test ran but measured nothing"),
    ):
        if not samples:
            return [
                Row(
                    test,
                    "-",
                    None,
                    None,
                    None,
                    None,
                    "no samples",
                    note=f"in {side} ({why})",
                    base_n=base_n,
                    new_n=new_n,
                )
            ]
    mixed = param_mismatch(base, new)
    if mixed and not settings.allow_mixed:
        return [Row(test, "-", None, None, None, None, "measured differently", note=mixed, base_n=base_n, new_n=new_n)]
    tol = settings.tolerance if tolerance is None else tolerance
    own = floors or {}
    rows = [
        compare_metric(
            test, m, base, new, tol, level(settings, family), own[m]["factor"] if m in own else settings.noise(m)
        )
        for m in (metrics or settings.names())
    ]
    return [
        replace(r, note=r.note or mixed or _floor_note(own.get(r.metric)), base_n=base_n, new_n=new_n) for r in rows
    ]


def _floor_note(floor: Mapping[str, float] | None) -> str:
    return (
        f"this test's own floor x{floor['factor']:.3g}, from {int(floor['sessions'])} baseline sessions"
        if floor
        else ""
    )


def compare_docs(
    base: Mapping[str, Any], new: Mapping[str, Any], settings: Settings, family: int | None = None
) -> list[Row]:
    """``family``: a larger family than the baseline's own (fan-in: every group's comparisons)."""
    b, n = samples_by_test(base), samples_by_test(new)
    family = family or family_size(b, settings)
    floors = base.get("floors") or {}
    rows: list[Row] = []
    for test in sorted(n):
        rows += compare_test(test, find(test, b), n[test], settings, family, floors=find(test, floors))
    rows += [
        Row(test, "-", None, None, None, None, "missing in new run") for test in sorted(b) if find(test, n) is None
    ]
    return rows


# --- what may not pass: refusals, and what was not compared -------------------------------------


def reason(row: Row, settings: Settings, family: int, allow_flag: str = "--allow-mixed") -> str:
    """Why a refused row cannot be judged, naming its test (and metric)."""
    if row.verdict == "too few samples":
        return f"{row.where}: {needed_samples(row.base_n, row.new_n, settings, family)}"
    if row.verdict == "measured differently":
        return f"{row.test}: {mixed_refusal(row.note, allow_flag)}"
    return f"{row.where}: {row.verdict} {row.note}".strip()


def refusal(rows: Sequence[Row], settings: Settings, family: int, allow_flag: str = "--allow-mixed") -> str | None:
    """The reason of the first refused row, or None: the shared rule for every caller (the pytest gate, the
    kernel gate, ``udpsend compare`` and fan-in groups)."""
    refused = [r for r in rows if r.refused]
    return reason(refused[0], settings, family, allow_flag) if refused else None


def nothing_compared(rows: Sequence[Row]) -> str | None:
    """One sentence if not one row was compared (a comparison of nothing must never pass), else None."""
    if any(r.compared for r in rows):
        return None
    if any(r.refused for r in rows):
        return None  # the refusal says why
    if not rows:
        return "nothing was compared with the baseline: no test of this run was measured against it"
    absent = [r.verdict for r in rows]
    why = (
        "none of the baseline's tests measured here (a -k run or a shard that selected none of them)"
        if all(v in ("missing in new run", "no baseline") for v in absent)
        else "every metric compared is absent on one side (not measured: no probe)"
    )
    return f"nothing was compared with the baseline: {why}"


def _few(names: Sequence[str], shown: int = 5) -> str:
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def not_compared(rows: Sequence[Row]) -> list[str]:
    """Lines listing what was not compared by design: tests not selected on a side, metrics not measured."""
    lines = []
    missing = sorted({r.test for r in rows if r.verdict == "missing in new run"})
    if missing:
        lines.append(
            f"not compared: {len(missing)} test(s) of the baseline not in the new results "
            f"(not selected: a -k run, a shard): {_few(missing)}"
        )
    new = sorted({r.test for r in rows if r.verdict == "no baseline"})
    if new:
        lines.append(f"not compared: {len(new)} test(s) not in the baseline: {_few(new)}")
    absent = [r.where for r in rows if r.verdict == "not measured"]
    if absent:
        lines.append(f"not compared: {_few(absent)} (not measured on one side, e.g. no sock_wfree probe)")
    return lines


def coverage_refusal(
    base: Mapping[str, Sequence[Any]], new: Mapping[str, Sequence[Any]], base_name: str, new_name: str
) -> str | None:
    """One sentence if two documents (tests -> samples) cannot be compared at all, else None."""
    if not new:
        return (
            f"{new_name} has no tests: nothing was measured (a --collect-only run, or a run in which no test "
            "measured, writes no results); compare a run that measured"
        )
    if not base:
        return f"the baseline {base_name} has no tests: there is nothing to compare with"
    if all(find(test, base) is None for test in new):
        return (
            f"{new_name} shares no test with the baseline {base_name} (new: {_few(sorted(new), 2)}; baseline: "
            f"{_few(sorted(base), 2)}): nothing can be compared; compare results of the same tests"
        )
    return None


# --- like with like --------------------------------------------------------------------------


def _where(env: Mapping[str, Any]) -> str:
    lane = env.get("lane")
    return f"kernel lane ({lane.get('accel')})" if isinstance(lane, Mapping) else "bare host"


def env_mismatch(base_env: Mapping[str, Any], new_env: Mapping[str, Any], with_lane: bool = True) -> str | None:
    """One phrase naming how two environments measured differently, or None if alike."""
    diff = [
        f"{k} {base_env.get(k)!r} vs {new_env.get(k)!r}"
        for k in ENV_FIELDS
        if k in base_env and k in new_env and base_env[k] != new_env[k]
    ]
    if with_lane and _where(base_env) != _where(new_env):
        diff.append(f"{_where(base_env)} vs {_where(new_env)}")
    return "; ".join(diff) or None


def mixed_refusal(what: str, option: str) -> str:
    return (
        f"the baseline and this run were measured differently ({what}), so their difference is not the change "
        f"under test; measure both the same way (CI: both through the kernel lane), or pass {option} if intended"
    )


# --- the record the gate leaves, and the table ------------------------------------------------


def baseline_digest(doc: Mapping[str, Any]) -> str:
    """Identifies a baseline's samples (the report shows stored verdicts only for the same baseline)."""
    return hashlib.sha256(json.dumps(doc.get("tests", {}), sort_keys=True).encode()).hexdigest()[:16]


def gate_record(settings: Settings, family: int, baseline: Mapping[str, Any], rows: Sequence[Row]) -> dict[str, Any]:
    """What the --udpsend-json document keeps of the gate: its settings and the verdicts it gave."""
    return {
        "settings": settings.to_dict(),
        "family": family,
        "baseline": {"digest": baseline_digest(baseline), "environment": baseline.get("environment", {})},
        "rows": [asdict(r) for r in rows],
    }


def rows_from(record: Mapping[str, Any]) -> list[Row]:
    known = {f.name for f in fields(Row)}
    return [Row(**{k: v for k, v in r.items() if k in known}) for r in record.get("rows", [])]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _change(r: Row) -> str:
    if r.change is None:
        return "-"
    text = _num(r.change) if math.isinf(r.change) else f"{r.change:+.0%}"
    return f"{text} {r.direction}".strip()


def header(settings: Settings, family: int) -> str:
    floor = (
        "noise floor for one command (the square root of its session floor)"
        if settings.one_command
        else "session noise floor"
    )
    return (
        f"alpha {settings.alpha:g} over {family} comparisons (Bonferroni: p < {level(settings, family):.2g}); "
        f"a regression is worse than the baseline by more than the allowed change (tolerance {settings.tolerance:g} "
        f"or the metric's {floor}, whichever is larger)"
    )


def table(
    rows: Sequence[Row],
    base_env: Mapping[str, Any] | None = None,
    new_env: Mapping[str, Any] | None = None,
    head: str = "",
) -> str:
    lines = [head] if head else []
    if base_env or new_env:
        lines.append(
            f"baseline: kernel {(base_env or {}).get('kernel', '?')}   new: kernel {(new_env or {}).get('kernel', '?')}"
        )
    width = max([len(r.test) for r in rows] + [4])
    lines.append(
        f"{'test':<{width}}  {'metric':<13} {'baseline':>10} {'new':>10} {'change':>14} {'allowed':>8} {'p':>8}  verdict"
    )
    for r in rows:
        p = "-" if r.p_value is None else f"{r.p_value:.2g}"
        allowed = "-" if r.allowed is None else f"{r.allowed:.0%}"
        verdict = f"{r.verdict}: {r.note}" if r.note else r.verdict
        lines.append(
            f"{r.test:<{width}}  {r.metric:<13} {_num(r.base_median):>10} {_num(r.new_median):>10} "
            f"{_change(r):>14} {allowed:>8} {p:>8}  {verdict}"
        )
    return "\n".join(lines)


def common_shift(rows: Sequence[Row]) -> str | None:
    """One sentence when most tests moved the same way in one metric: the host, not one test, changed."""
    for metric in METRICS:
        moved = [r for r in rows if r.metric == metric and r.change is not None]
        worse = [r for r in moved if r.direction == "worse" and r.change is not None and not math.isinf(r.change)]
        if len(moved) >= 4 and len(worse) >= 0.8 * len(moved):
            median = statistics.median(r.change for r in worse if r.change is not None)
            if abs(median) >= 0.1:
                return (
                    f"{len(worse)} of {len(moved)} tests moved together ({metric} {median:+.0%} in the median): "
                    "the host changed between the sessions (load, frequency, another tenant) or the change under "
                    "test affects everything; a two-session comparison cannot tell which (README, Baseline comparison)"
                )
    return None


def settings_for(new: Mapping[str, Any], given: Mapping[str, Any]) -> Settings:
    """Flags given on the command line, else the settings the gate recorded in NEW, else the defaults."""
    recorded = Settings.from_dict((new.get("gate") or {}).get("settings") or {})
    chosen = {k: v for k, v in given.items() if v is not None and v is not False}
    return replace(recorded, **chosen)


Status = Literal["ok", "regression", "refused"]  # a judgement's verdict; ``udpsend compare`` exits 0, 1, 2 on them


@dataclass(frozen=True)
class Judgement:
    """One comparison judged: its verdict, the table with its notes (None if refused before any table) and
    the sentence saying what could not be judged (None if everything could; also beside a regression)."""

    status: Status
    report: str | None = None
    refusal: str | None = None


def compare_files(base_path: str, new_path: str, given: Mapping[str, Any]) -> Judgement:
    """``udpsend compare BASELINE.json NEW.json``, judged."""
    from pytest_udpsend.results import store

    return judge(store.load(base_path), store.load(new_path), given, names=(base_path, new_path))


def judge(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    given: Mapping[str, Any],
    family: int | None = None,
    names: tuple[str, str] = ("the baseline", "the new results"),
) -> Judgement:
    """``new`` judged against ``base``: a regression, a refusal or ok (also per fan-in group, with ``family``
    counting every group's comparisons).  ``names``: the two sides' files.

    Never ok on what was not measured: no tests, no test in common, a test without samples, a value
    that is not a number, or nothing compared at all is a refusal in one sentence."""
    settings = settings_for(new, given)
    base_name, new_name = names
    mixed = env_mismatch(base.get("environment", {}), new.get("environment", {}))
    if mixed and not settings.allow_mixed:
        return Judgement("refused", refusal=mixed_refusal(mixed, "--allow-mixed"))
    b = samples_by_test(base)
    if why := coverage_refusal(b, samples_by_test(new), base_name, new_name):
        return Judgement("refused", refusal=why)
    family = family or family_size(b, settings)
    rows = compare_docs(base, new, settings, family)
    head = header(settings, family) + (f"\nmixed comparison (allowed): {mixed}" if mixed else "")
    bad = [r for r in rows if r.regressed]
    lines = [
        table(rows, base.get("environment"), new.get("environment"), head),
        f"\n{len(bad)} regression(s) in {len({r.test for r in rows})} test(s)",
        *not_compared(rows),
    ]
    if shift := common_shift(rows):
        lines.append(f"note: {shift}")
    why = refusal(rows, settings, family)
    why = (
        f"{len({r.test for r in rows if r.refused})} test(s) cannot be judged: {why}" if why else nothing_compared(rows)
    )
    refused = f"{new_name} against the baseline {base_name}: {why}" if why else None
    return Judgement("regression" if bad else ("refused" if why else "ok"), "\n".join(lines), refused)

"""The paired rule: baseline and candidate measured in interleaved rounds of one run.

Drift between sessions is why the two-session gate needs wide noise floors.  Measured
in one run, round by round, both arms share that drift, so each round's pair gives a
shift that drift mostly cancels (Pinpoint, RMIT; docs: "How the gate decides").

* **Per-pair shift**, oriented so that positive is worse: ``log(candidate / baseline)``
  for times and counts (``log1p`` for counts that can be 0: time_squeeze, enobufs),
  ``log(baseline / candidate)`` for pps, and the log odds ratio for a rate, from the
  counts with a half added to each cell (so an EAGAIN rate of 0 or 1 has a logit).
* **Test**: the exact one-sided Wilcoxon signed-rank test of ``shift - allowed``
  (``scipy.stats.wilcoxon``, ``method="exact"``; a pair exactly at the allowed change
  is dropped, Wilcoxon's convention): H0 "worse by at most the allowed change".  Why
  this one: it needs no normality (pair shifts of EAGAIN are heavy-tailed), one wild
  pair moves it by one rank only, and it is exact at the round counts users run.  Its
  smallest p with n pairs is 1 / 2**n, reached only when every pair lies beyond the
  allowed change.
* **Allowed change**: the tolerance as a factor (``log(1 + tolerance)``; on the odds
  for a rate).  No session noise floor: pairs are what replaces it.  The metric's
  absolute floor still applies to the arms' medians (EAGAIN 0.01 -> 0.03 is not news).
* **Interval**: the Hodges-Lehmann estimate (median of the Walsh averages) and the
  bounds where the same test, inverted, stops rejecting at the family-wise level.
* **Family**: interleaved tests x compared metrics (Bonferroni), known at collection;
  a round count whose smallest p cannot reach the level is refused up front.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from pytest_udpsend.results.metrics import METRICS, lookup

ARMS = ("baseline", "candidate")
COUNT_METRICS = ("time_squeeze", "enobufs")  # counts that are 0 on a quiet run: log1p
ZERO = 1e-9  # a rate or time of 0 on the log scale: far below any measured one
POWER = 0.8  # the power at which "the smallest change found" is stated


# "lost": an arm did not measure the metric where the other did (fails, as a refusal does)
PairedVerdict = Literal["ok", "regressed", "lost", "not compared"]


@dataclass(frozen=True)
class PairedRow:
    """One test x metric under the paired rule."""

    test: str
    metric: str
    pairs: int
    baseline: float | None  # median of the baseline arm
    candidate: float | None  # median of the candidate arm
    estimate: float | None  # Hodges-Lehmann factor candidate/baseline (odds ratio for a rate), worse > 1
    low: float | None  # interval on that factor at the family-wise level
    high: float | None
    allowed: float  # the allowed factor in the worse direction
    p: float | None
    resolvable: float | None  # the smallest worse factor found at 80 % with this many pairs and this spread
    verdict: PairedVerdict
    control: bool = False
    note: str = ""

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    @property
    def fails(self) -> bool:
        """Fails the test: a candidate that regressed, or a metric an arm lost (never a silent pass)."""
        return (self.regressed and not self.control) or self.verdict == "lost"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def min_p(rounds: int) -> float:
    """The smallest p-value the exact one-sided sign-flip test can give with ``rounds`` pairs."""
    return 0.5**rounds


def rounds_needed(level: float) -> int:
    """The fewest pairs whose smallest possible p is below ``level``."""
    return max(1, math.ceil(math.log2(1.0 / level)))


def refusal(rounds: int, alpha: float, family: int, metrics: int) -> str | None:
    """One sentence when ``rounds`` pairs can never reach the family-wise level, else None."""
    level = alpha / max(family, 1)
    if min_p(rounds) < level:
        return None
    tests = max(family // max(metrics, 1), 1)
    return (
        f"--udpsend-interleave {rounds}: with {family} comparisons ({tests} test(s) x {metrics} metric(s)) at "
        f"alpha {alpha:g} each needs p < {level:.2g}, but {rounds} pairs give at best p = {min_p(rounds):.2g}; "
        f"use --udpsend-interleave {rounds_needed(level) + 2} or more, or compare fewer metrics "
        "(ini udpsend_compare_metrics, e.g. 'pps eagain_rate')"
    )


def _logit(sample: Mapping[str, Any], metric: str) -> float | None:
    """Empirical log odds of a rate from its counts (half added to each cell), else from the rate itself."""
    if metric == "eagain_rate" and isinstance(sample.get("eagain"), int) and isinstance(sample.get("attempts"), int):
        bad, total = sample["eagain"], sample["attempts"]
        return math.log((bad + 0.5) / (total - bad + 0.5))
    value = lookup(sample, metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    rate = min(max(float(value), 1e-6), 1 - 1e-6)
    return math.log(rate / (1 - rate))


def transformed(samples: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """One arm run's value of ``metric`` on the scale its shifts are taken (median over its samples)."""
    found: list[float] = []
    for sample in samples:
        if METRICS[metric].scale == "odds":
            value = _logit(sample, metric)
        else:
            raw = lookup(sample, metric)
            if not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0:
                continue
            # a zero pps (nothing sent) is the worst a sender can do, not a pair to leave out
            value = math.log1p(raw) if metric in COUNT_METRICS else math.log(max(raw, ZERO))
        if value is not None:
            found.append(value)
    return statistics.median(found) if found else None


def shifts(rounds: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]], metric: str) -> list[float]:
    """Per round, candidate minus baseline on the metric's scale, positive = worse."""
    sign = -1.0 if METRICS[metric].worse == "lower" else 1.0
    out = []
    for arms in rounds:
        base, cand = transformed(arms.get("baseline", []), metric), transformed(arms.get("candidate", []), metric)
        if base is None or cand is None:
            continue
        if METRICS[metric].scale == "odds" and _same_edge(arms, metric):
            out.append(0.0)  # 0 against 0 (or all against all) is no change, whatever the sends' counts
        else:
            out.append(sign * (cand - base))
    return out


def _same_edge(arms: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> bool:
    """Both arms at the same end of a rate's range: their half-corrected logits differ by the counts alone."""
    medians = [arm_median([arms], arm, metric) for arm in ARMS]
    return medians[0] == medians[1] and medians[0] in (0.0, 1.0)


def p_worse(d: Sequence[float], allowed: float) -> float:
    """One-sided exact p of "the shift exceeds ``allowed``": the signed-rank test on ``d - allowed``."""
    x = np.asarray(d, dtype=float) - allowed
    if not np.any(x):
        return 1.0
    return float(stats.wilcoxon(x, alternative="greater", method="exact", zero_method="wilcox").pvalue)


def _walsh(d: Sequence[float]) -> np.ndarray:
    a = np.asarray(d, dtype=float)
    i, j = np.triu_indices(len(a))
    return np.sort((a[i] + a[j]) / 2.0)


def interval(d: Sequence[float], level: float) -> tuple[float, float, float]:
    """Hodges-Lehmann estimate and the bounds where the one-sided tests at ``level`` stop rejecting
    (each bound one-sided at ``level``: together a 1 - 2 x level interval)."""
    walsh = _walsh(d)
    estimate = float(np.median(walsh))
    low = _bound(d, walsh, level)
    high = -_bound([-v for v in d], _walsh([-v for v in d]), level)
    return estimate, low, high


def _bound(d: Sequence[float], walsh: np.ndarray, level: float) -> float:
    """The lower confidence bound: the largest Walsh average w at which "shift > w" is still rejected."""
    lo, hi = 0, len(walsh) - 1  # p_worse(d, w) grows with w: find the last w with p <= level
    if p_worse(d, float(walsh[0]) - 1e-12) > level:
        return -math.inf
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if p_worse(d, float(walsh[mid]) - 1e-12) <= level:
            lo = mid
        else:
            hi = mid - 1
    return float(walsh[lo])


def _null_upper(n: int) -> np.ndarray:
    """P(T+ >= t) for t = 0..n(n+1)/2 under H0 (no ties): the exact signed-rank distribution (subset sums of 1..n)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for rank in range(1, n + 1):
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    return np.cumsum(counts[::-1])[::-1] / 2.0**n


def resolvable(d: Sequence[float], allowed: float, level: float, power: float = POWER, seed: int = 0) -> float | None:
    """The smallest worse shift these many pairs find with ``power`` at ``level``, for pairs spread as ``d``.

    Simulated (seeded): normal pairs with the measured spread, judged by the same exact one-sided
    signed-rank test against ``allowed``; the shift is found by bisection.  None where the exact
    test cannot reach ``level`` at all (too few pairs).
    """
    n = len(d)
    if n < 2 or min_p(n) >= level:
        return None
    spread = max(statistics.stdev(d), 1e-6)
    upper = _null_upper(n)
    critical = int(np.argmax(upper <= level))  # the smallest T+ whose p is at most the level
    noise = np.random.default_rng(seed).normal(0.0, spread, size=(2000, n))

    def found(shift: float) -> float:
        x = noise + (shift - allowed)
        ranks = np.argsort(np.argsort(np.abs(x), axis=1), axis=1) + 1
        return float(np.mean(np.sum(ranks * (x > 0), axis=1) >= critical))

    lo, hi = allowed, allowed + 10 * spread
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if found(mid) >= power else (mid, hi)
    return hi


def _factor(shift: float | None) -> float | None:
    return None if shift is None or not math.isfinite(shift) else math.exp(shift)


def arm_median(rounds: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]], arm: str, metric: str) -> float | None:
    found = [v for arms in rounds for s in arms.get(arm, []) if isinstance(v := lookup(s, metric), (int, float))]
    return float(statistics.median(found)) if found else None


def _lost(rounds: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]], metric: str) -> int:
    """Rounds in which one arm measured ``metric`` and the other did not."""
    have = [[transformed(arms.get(arm, []), metric) is not None for arm in ARMS] for arms in rounds]
    return sum(1 for b, c in have if b != c)


def judge(
    test: str,
    rounds: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]],
    metric: str,
    tolerance: float,
    level: float,
    control: bool = False,
) -> PairedRow:
    """The paired verdict on one metric of one test."""
    allowed = math.log1p(tolerance)
    d = shifts(rounds, metric)
    base, cand = arm_median(rounds, "baseline", metric), arm_median(rounds, "candidate", metric)
    common: dict[str, Any] = {
        "test": test,
        "metric": metric,
        "pairs": len(d),
        "baseline": base,
        "candidate": cand,
        "allowed": math.exp(allowed),
        "control": control,
    }
    empty: dict[str, Any] = {"estimate": None, "low": None, "high": None, "p": None, "resolvable": None}
    if lost := _lost(rounds, metric):
        return PairedRow(
            **common,
            **empty,
            verdict="lost",
            note=f"measured in one arm only in {lost} round(s): did a probe or the sender stop working?",
        )
    if len(d) < 2:
        return PairedRow(**common, **empty, verdict="not compared", note="fewer than 2 rounds measured it in both arms")
    p = p_worse(d, allowed)
    estimate, low, high = interval(d, level)
    worse = METRICS[metric].worse
    moved = (
        base is not None
        and cand is not None
        and (cand - base if worse == "higher" else base - cand) > METRICS[metric].floor
    )
    verdict: PairedVerdict = "regressed" if p < level and moved else "ok"
    note = (
        ""
        if moved or p >= level
        else f"beyond the allowed change but within the absolute floor {METRICS[metric].floor:g}"
    )
    return PairedRow(
        **common,
        estimate=_factor(estimate),
        low=_factor(low),
        high=_factor(high),
        p=p,
        resolvable=_factor(resolvable(d, allowed, level)),
        verdict=verdict,
        note=note,
    )


def judge_test(
    test: str,
    rounds: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]],
    metrics: Sequence[str],
    tolerance: float,
    level: float,
    control: bool = False,
) -> list[PairedRow]:
    """Every compared metric the test measured in both arms (others are left out, not passed)."""
    measured = [m for m in metrics if shifts(rounds, m) or arm_median(rounds, "baseline", m) is not None]
    return [judge(test, rounds, m, tolerance, level, control) for m in measured]


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def table(rows: Sequence[PairedRow], level: float) -> str:
    """The paired table a failing test and the summary print."""
    head = f"paired rule: exact one-sided signed-rank test on the per-round pairs, level {level:.2g} (family-wise)"
    lines = [
        head,
        f"{'metric':<14} {'pairs':>5} {'baseline':>10} {'candidate':>10} {'factor':>8} "
        f"{'interval':>17} {'allowed':>8} {'p':>9} {'80% finds':>9}  verdict",
    ]
    for r in rows:
        ival = f"[{_num(r.low, 3)}, {_num(r.high, 3)}]"
        lines.append(
            f"{r.metric:<14} {r.pairs:>5} {_num(r.baseline):>10} {_num(r.candidate):>10} {_num(r.estimate, 3):>8} "
            f"{ival:>17} {_num(r.allowed, 3):>8} {_num(r.p, 2):>9} {_num(r.resolvable, 3):>9}  {r.verdict}"
            + (f" ({r.note})" if r.note else "")
        )
    lines.append(
        "factor: candidate over baseline in the worse direction (odds ratio for a rate; 1/ratio for pps), "
        "each bound one-sided at the level; 80% finds: the smallest worse factor these pairs find 4 times in 5"
    )
    return "\n".join(lines)


def records(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The interleaved tests of a results document: nodeid -> its ``interleave`` record."""
    return {
        k: v["interleave"] for k, v in doc.get("tests", {}).items() if isinstance(v, Mapping) and v.get("interleave")
    }


def judge_document(
    doc: Mapping[str, Any], tolerance: float | None, alpha: float | None, metrics: Sequence[str] | None
) -> tuple[list[PairedRow], float, str | None]:
    """The paired verdicts of a document: as recorded by the run that measured it, or recomputed by the
    same rule where knobs are given (a knob not given keeps the run's).  Tests the run stopped early
    (an arm failed) were not judged there and are not here.  Returns the rows, the level, and a
    refusal sentence (or None)."""
    found = {k: r for k, r in records(doc).items() if not r.get("stopped")}
    if tolerance is None and alpha is None and metrics is None:
        rows = [
            PairedRow(**{k: v for k, v in r.items() if k in PairedRow.__dataclass_fields__})
            for rec in found.values()
            for r in rec.get("paired", [])
        ]
        level = min((float(rec.get("level", 1.0)) for rec in found.values()), default=1.0)
        return rows, level, None
    first = next(iter(found.values()), {})
    names = list(metrics or first.get("metrics") or METRICS)
    a = float(first.get("alpha", 0.05)) if alpha is None else alpha
    family = max(len(found) * len(names), 1)
    rounds = min((len(rec.get("rounds", [])) for rec in found.values()), default=0)
    if why := refusal(rounds, a, family, len(names)):
        return [], a / family, why.replace(f"--udpsend-interleave {rounds}:", f"{rounds} rounds:")
    rows = []
    for test, rec in found.items():
        tol = float(rec.get("tolerance", 0.25)) if tolerance is None else tolerance
        rows += judge_test(test, rec.get("rounds", []), names, tol, a / family, bool(rec.get("control")))
    return rows, a / family, None

"""What a bound may claim: per test and metric, the distribution over many runs and the
bound that a stated share of future runs would keep.

A bound that held 50 runs of 50 only shows a false-fail rate under about 6 % (rule of
three: 3/n at 95 %).  To argue for 1 in 1000, we model each metric on the scale where it
is closest to normal (logit for rates, log for rates of packets and latencies, log1p for
counts that can be zero) and take a one-sided normal *tolerance* bound: the value that at
least ``content`` (e.g. 0.999) of the population stays under (or above), with
``confidence`` (e.g. 0.95) over the n runs observed.  Its factor k comes from the
non-central t distribution (scipy.stats.nct), the textbook construction.  Where the
transformed sample is not normal (Shapiro-Wilk p < 0.01) the bound is reported as
unreliable: a heavy tail is not something a margin can tame, and the rule is then to
claim only what the mechanism fixes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy import stats

Scale = Literal["logit", "log", "log1p"]
Sample = dict[str, Any]


def _rate(key: str) -> Callable[[Sample], float | None]:
    def read(s: Sample) -> float | None:
        attempts = s.get("attempts") or 0
        return s.get(key, 0) / attempts if attempts else None

    return read


def _wfree(key: str) -> Callable[[Sample], float | None]:
    def read(s: Sample) -> float | None:
        value = (s.get("wfree") or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return read


# metric -> (how to read it from a sample, the scale it is modelled on)
METRICS: dict[str, tuple[Callable[[Sample], float | None], Scale]] = {
    "eagain_rate": (lambda s: s.get("eagain_rate"), "logit"),
    "enobufs_rate": (_rate("enobufs"), "logit"),
    "pps": (lambda s: s.get("pps"), "log"),
    "time_squeeze": (lambda s: s.get("time_squeeze"), "log1p"),
    "wmem_max_bytes": (lambda s: (s.get("wmem") or {}).get("max_bytes"), "log1p"),
    "wfree_p50_us": (_wfree("p50_us"), "log"),
    "wfree_p99_us": (_wfree("p99_us"), "log"),
}


def tolerance_factor(n: int, content: float, confidence: float) -> float:
    """One-sided normal tolerance factor: mean + k*sd exceeds the ``content`` quantile
    with probability ``confidence`` (non-central t; Natrella, NIST handbook 7.2.6.3)."""
    z = stats.norm.ppf(content)
    return float(stats.nct.ppf(confidence, n - 1, z * math.sqrt(n)) / math.sqrt(n))


def _forward(scale: Scale, x: float, eps: float) -> float:
    if scale == "logit":
        p = min(max(x, eps), 1 - eps)
        return math.log(p / (1 - p))
    if scale == "log":
        return math.log(max(x, eps))
    return math.log1p(max(x, 0.0))


def _back(scale: Scale, y: float) -> float:
    if scale == "logit":
        return 1 / (1 + math.exp(-y))
    if scale == "log":
        return math.exp(y)
    return max(math.expm1(y), 0.0)


@dataclass
class Fit:
    """One (kernel, test, label, metric): what was seen and what may be claimed."""

    kernel: str
    test: str
    label: str
    metric: str
    values: list[float]
    scale: Scale
    lower: float | None = None  # content of runs stay at or above this (None: not claimable)
    upper: float | None = None
    normal_p: float | None = None
    advice: str = ""
    quantiles: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "values"} | {"n": len(self.values)}


def fit(kernel: str, test: str, label: str, metric: str, values: list[float], content: float, confidence: float) -> Fit:
    scale = METRICS[metric][1]
    ordered = sorted(values)
    n = len(ordered)
    f = Fit(kernel, test, label, metric, ordered, scale)
    f.quantiles = {
        "min": ordered[0],
        "p10": ordered[int(0.1 * (n - 1))],
        "median": ordered[n // 2],
        "p90": ordered[int(0.9 * (n - 1))],
        "max": ordered[-1],
    }
    if ordered[0] == ordered[-1]:
        unseen = (
            f"other values rarer than {3 / n:.1%} of runs (95 %, rule of three)"
            if n >= 10
            else "too few runs to say more"
        )
        f.advice = f"the same value ({ordered[0]:g}) in all {n} runs: {unseen}"
        return f
    if n < 8:
        f.advice = f"only {n} runs: too few to fit a tolerance bound"
        return f
    # A rate measured as 0 has no logit: place it at 1e-6 (about half a count in a 1 s run).
    eps = 1e-6 if scale == "logit" else 1e-9
    ys = [_forward(scale, v, eps) for v in ordered]
    mean = sum(ys) / n
    sd = math.sqrt(sum((y - mean) ** 2 for y in ys) / (n - 1))
    k = tolerance_factor(n, content, confidence)
    f.normal_p = float(stats.shapiro(ys).pvalue) if n >= 3 else None
    f.lower, f.upper = _back(scale, mean - k * sd), _back(scale, mean + k * sd)
    if f.normal_p is not None and f.normal_p < 0.01:
        f.advice = (
            f"not normal on the {scale} scale (Shapiro-Wilk p {f.normal_p:.2g}): a heavy or odd tail; "
            "no margin argues for it, claim only what the mechanism fixes"
        )
    else:
        f.advice = f"{content:.1%} of runs within [{f.lower:.4g}, {f.upper:.4g}] at {confidence:.0%} confidence"
    return f


def sample_labels(samples: list[Sample]) -> list[str]:
    """Name each sample of a test by the parameters that set it apart from its siblings
    (a test that measures a clamped and a forced buffer gets one row for each)."""
    params = [s.get("params") or {} for s in samples]
    keys = sorted({k for p in params for k in p})
    differing = [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]
    return [",".join(f"{k}={_stable(p.get(k))}" for k in differing) for p in params]


def _stable(value: Any) -> Any:
    """A file's name, not its path: a capture written under each run's tmp_path is one row over the runs."""
    return value.rsplit("/", 1)[-1] if isinstance(value, str) and "/" in value else value


def gather(docs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[float]]:
    """(kernel, test, label, metric) -> the values over every document's samples."""
    out: dict[tuple[str, str, str, str], list[float]] = {}
    for doc in docs:
        for test, entry in (doc.get("tests") or {}).items():
            samples = entry.get("samples") or []
            for sample, label in zip(samples, sample_labels(samples)):
                kernel = str(sample.get("kernel") or doc.get("environment", {}).get("kernel", "?"))
                for metric, (read, _scale) in METRICS.items():
                    value = read(sample)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        out.setdefault((kernel, test, label, metric), []).append(float(value))
    return out


def fit_all(docs: Iterable[dict[str, Any]], content: float, confidence: float) -> list[Fit]:
    return [
        fit(kernel, test, label, metric, values, content, confidence)
        for (kernel, test, label, metric), values in sorted(gather(docs).items())
    ]


def shorten(text: str, width: int) -> str:
    """Cut the middle, which keeps the file name and the sample label readable."""
    return text if len(text) <= width else text[: width // 2 - 1] + "~" + text[-(width - width // 2) :]


def table(fits: list[Fit]) -> str:
    """The printed form: one line per test, label and metric, grouped by kernel."""
    lines: list[str] = []
    kernel = None
    for f in fits:
        if f.kernel != kernel:
            kernel = f.kernel
            lines += [
                "",
                f"kernel {kernel}",
                f"  {'test [sample]':<70} {'metric':<15} {'n':>3} {'min':>9} {'median':>9} {'max':>9}  claimable",
            ]
        name = shorten(f.test.split("/")[-1] + (f" [{f.label}]" if f.label else ""), 70)
        q = f.quantiles
        lines.append(
            f"  {name:<70} {f.metric:<15} {len(f.values):>3} {q['min']:>9.4g} {q['median']:>9.4g} {q['max']:>9.4g}  {f.advice}"
        )
    return "\n".join(lines).lstrip("\n")

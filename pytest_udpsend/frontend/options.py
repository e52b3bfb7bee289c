"""Command-line options, defined once for pytest and for the ``udpsend`` command.

The table and its argparse helpers only: no pytest here.  What pytest does with the options it
parsed (usage errors, the baseline loaded, the lane chosen) is ``frontend/configure.py``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_udpsend.errors import ConfigError, InputError
from pytest_udpsend.measure.params import accepted, number
from pytest_udpsend.results import compare
from pytest_udpsend.results.metrics import METRICS


def number_type(low: float, high: float = math.inf, integer: bool = False, unit: str = "") -> Callable[[str], Any]:
    """An argparse ``type=`` for a numeric option: the text checked by ``params.number`` (finite, in range),
    so a bad value is a usage error naming the option, the value and what is accepted, at parse time."""

    def convert(text: str) -> Any:
        try:
            value: Any = int(text) if integer else float(text)
            return number("", value, low, high, integer)
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(
                f"{text!r}: {accepted(low, high, integer)}" + (f" ({unit})" if unit else "")
            ) from None

    convert.__name__ = "integer" if integer else "number"  # argparse's name for the type in its own messages
    return convert


WEEK_S = 7 * 24 * 3600  # the longest wait an option takes: beyond it a timeout is a typo (and inf overflows join())


@dataclass(frozen=True)
class Opt:
    flag: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


BACKEND = Opt(
    "--udpsend-backend",
    "how sock_wfree timing is measured: auto (bpf where eBPF kprobes work, else tracepoint where its eBPF loads, "
    "else timestamp), bpf (exact, eBPF kprobes; fails where unavailable), tracepoint (exact counts and release "
    "contexts from tracepoints, latency between them; fails where unavailable), timestamp (receiver-timestamp estimate)",
    {"choices": ["auto", "bpf", "tracepoint", "timestamp"], "default": "auto"},
)
REPEAT = Opt(
    "--udpsend-repeat",
    "run each measuring scenario N times and keep every sample (default 1)",
    {"type": number_type(1, 1000, integer=True), "default": 1, "metavar": "N"},
)
JSON = Opt("--udpsend-json", "write every test's SendResult(s) and the environment to PATH", {"metavar": "PATH"})
BASELINE = Opt(
    "--udpsend-baseline",
    "compare with a saved --udpsend-json file; a significant regression beyond the tolerance fails the test",
    {"metavar": "PATH"},
)
KERNEL = Opt(
    "--udpsend-kernel",
    "run the selected tests in a VM booted with this kernel image (virtme-ng), "
    "reported as test@<release>; repeat it to run them in each kernel, one after the other; host is the "
    "running kernel, no VM; write --udpsend-kernel=PATH to keep the image's directory out of pytest's "
    "rootdir and inifile choice",
    {"action": "append", "metavar": "PATH|host"},
)
GATE_AGAINST = Opt(
    "--udpsend-gate-against",
    "with --udpsend-kernel given twice or more: compare each test on every "
    "other kernel with its own samples on this one (an image path, host, or a release), by the "
    "baseline gate's rule and ini knobs; a regression fails test@<release>",
    {"metavar": "KERNEL"},
)
KERNEL_TIMEOUT = Opt(
    "--udpsend-kernel-timeout",
    "seconds the kernel-lane guest may run before it is killed (default 2400)",
    {"type": number_type(1, WEEK_S, unit="seconds"), "default": 2400.0, "metavar": "S"},
)
HTML = Opt("--udpsend-html", "write a self-contained HTML report with plots to PATH", {"metavar": "PATH"})
PCAP = Opt(
    "--udpsend-pcap", "keep a bounded capture of each failing measuring test's traffic in DIR", {"metavar": "DIR"}
)
REQUIRE = Opt(
    "--udpsend-require-privileges",
    "fail, instead of skip, where root, netns or a needed kernel feature is missing",
    {"action": "store_true", "default": False},
)

ALLOW_MIXED_HELP = (
    "compare with a baseline measured differently (backend, lane or bare host, CPU, payload, "
    "duration) on purpose; without it such a comparison is refused"
)
ALLOW_MIXED = Opt("--udpsend-allow-mixed", ALLOW_MIXED_HELP, {"action": "store_true", "default": False})

LOCK_TIMEOUT = Opt(
    "--udpsend-lock-timeout",
    "seconds a measuring test waits for the host lock (measurements never overlap, also across processes) "
    "before it fails naming the holder (default 3600)",
    {"type": number_type(0, WEEK_S, unit="seconds"), "default": 3600.0, "metavar": "S"},
)

LABEL = Opt(
    "--udpsend-label",
    "KEY=VALUE stored in the --udpsend-json environment (repeatable), e.g. runner=c5-metal; "
    "udpsend compare/report group result files by their labels",
    {"action": "append", "default": [], "metavar": "KEY=VALUE"},
)

NIC_PAIR = Opt(
    "--udpsend-nic-pair",
    "two NIC ports cabled back to back (or two VFs), e.g. ens1f0,ens1f1: tests with topology(link='nic') "
    "(or the ports' driver model) borrow them and give them back as they were",
    {"metavar": "A,B"},
)

INTERLEAVE = Opt(
    "--udpsend-interleave",
    "measure each test in N rounds of two arms, baseline and candidate, back to back in a balanced random order "
    "(AB BA ...), and judge the per-round pairs: a candidate worse beyond udpsend_tolerance fails the test "
    "(the candidate marker, --udpsend-candidate-sysctl or the udpsend_arm fixture define the candidate; a test "
    "whose arms do not differ is a control, an in-run A/A check)",
    {"type": number_type(0, 1000, integer=True), "default": 0, "metavar": "N"},
)
CANDIDATE_SYSCTL = Opt(
    "--udpsend-candidate-sysctl",
    "NAME=VALUE (repeatable): with --udpsend-interleave, the candidate arm of every test is this host with these "
    "sysctls (journaled and restored around each candidate measurement)",
    {"action": "append", "default": [], "metavar": "NAME=VALUE"},
)

PYTEST_OPTIONS = [
    BACKEND,
    REPEAT,
    JSON,
    BASELINE,
    KERNEL,
    KERNEL_TIMEOUT,
    GATE_AGAINST,
    HTML,
    PCAP,
    REQUIRE,
    ALLOW_MIXED,
    LOCK_TIMEOUT,
    LABEL,
    NIC_PAIR,
    INTERLEAVE,
    CANDIDATE_SYSCTL,
]


def parse_labels(given: list[str], flag: str = "--udpsend-label", example: str = "runner=c5-metal") -> dict[str, str]:
    """``["k=v", ...]`` as a dict; InputError with one sentence on a malformed one."""
    labels: dict[str, str] = {}
    for text in given:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"{flag} {text!r}: use KEY=VALUE, e.g. {flag} {example}")
        labels[key.strip()] = value.strip()
    return labels


def add_options(addoption: Callable[..., Any], opts: list[Opt], short: bool = False) -> None:
    """Register ``opts`` with an argparse-like ``addoption``; ``short`` drops the ``--udpsend-``
    prefix (the ``udpsend`` command's spelling: ``--json`` for ``--udpsend-json``)."""
    for opt in opts:
        flag = "--" + opt.flag.removeprefix("--udpsend-") if short else opt.flag
        addoption(flag, dest=opt.dest, help=opt.help, **opt.kwargs)


@dataclass(frozen=True)
class GateKnob:
    """One knob of the baseline gate: an ini option for pytest, a flag for ``udpsend compare``/``report``."""

    ini: str
    flag: str
    help: str
    default: str
    kwargs: dict[str, Any] = field(default_factory=dict)


GATE_KNOBS = [
    GateKnob(
        "udpsend_tolerance",
        "--tolerance",
        "baseline: relative change of a metric's median allowed before a "
        "significant change fails (default 0.25; a metric's session noise floor applies if larger); the "
        "udpsend_baseline marker overrides it per test",
        "0.25",
        {"type": number_type(0), "metavar": "FRACTION"},
    ),
    GateKnob(
        "udpsend_alpha",
        "--alpha",
        "baseline: false-alarm rate over all comparisons of a run, tests x metrics (Bonferroni; default 0.05)",
        "0.05",
        {"type": number_type(0, 1), "metavar": "ALPHA"},
    ),
    GateKnob(
        "udpsend_compare_metrics",
        "--metrics",
        "baseline: metrics compared, space-separated (default: all: "
        "eagain_rate time_squeeze enobufs wfree.p50_us wfree.p99_us pps)",
        "",
        {"nargs": "+", "metavar": "METRIC"},
    ),
]
INI_OPTIONS = [(k.ini, k.help, k.default) for k in GATE_KNOBS]


def add_gate_flags(p: argparse.ArgumentParser) -> None:
    """The gate's knobs as ``udpsend compare``/``report`` flags: the same names, help and meaning as the ini options."""
    for k in GATE_KNOBS:
        p.add_argument(k.flag, dest=k.flag.lstrip("-"), default=None, help=f"{k.help} [ini: {k.ini}]", **k.kwargs)
    p.add_argument("--allow-mixed", action="store_true", default=False, help=ALLOW_MIXED_HELP)


def gate_settings(tolerance: Any, alpha: Any, metrics: Any, allow_mixed: bool, where: str) -> compare.Settings:
    """compare.Settings from raw knob values (ini text or flags); InputError with one sentence if bad."""
    try:
        tol = float(tolerance) if tolerance not in (None, "") else compare.DEFAULT_TOLERANCE
        a = float(alpha) if alpha not in (None, "") else compare.DEFAULT_ALPHA
    except ValueError:
        raise InputError(f"{where}: tolerance and alpha must be numbers, got {tolerance!r} and {alpha!r}") from None
    try:
        number("tolerance", tol)
        number("alpha", a, 0, 1)
    except ConfigError as exc:
        raise InputError(f"{where}: {exc}") from None
    if a in (0, 1):
        raise InputError(f"{where}: alpha={a:g}: must be above 0 and below 1 (a false-alarm rate, e.g. 0.05)")
    names = tuple(metrics.split() if isinstance(metrics, str) else (metrics or ()))
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise InputError(f"{where}: unknown metric(s) {', '.join(unknown)}; accepted: {', '.join(METRICS)}")
    return compare.Settings(tol, a, names or None, allow_mixed)

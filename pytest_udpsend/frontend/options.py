"""Command-line options, defined once for pytest and for the ``udpsend`` command."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_udpsend.errors import ConfigError, InputError
from pytest_udpsend.measure.params import accepted, number


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


def candidate_sysctls(given: list[str], interleave: int) -> dict[str, str]:
    """--udpsend-candidate-sysctl values, checked like the sysctl marker's; InputError with one sentence."""
    from pytest_udpsend.frontend.markers import sysctl_values

    flag = "--udpsend-candidate-sysctl"
    if given and not interleave:
        raise InputError(
            f"{flag} defines the candidate arm of --udpsend-interleave: add --udpsend-interleave N (e.g. 10)"
        )
    pairs = parse_labels(given, flag, "net.core.netdev_budget=8")  # NAME=VALUE, as labels are written
    if not pairs:
        return {}
    try:
        return sysctl_values(pairs)
    except ConfigError as exc:
        raise InputError(f"{flag}: {exc}") from None


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


def add_gate_flags(p: Any) -> None:
    """The gate's knobs as ``udpsend compare``/``report`` flags: the same names, help and meaning as the ini options."""
    for k in GATE_KNOBS:
        p.add_argument(k.flag, dest=k.flag.lstrip("-"), default=None, help=f"{k.help} [ini: {k.ini}]", **k.kwargs)
    p.add_argument("--allow-mixed", action="store_true", default=False, help=ALLOW_MIXED_HELP)


def gate_settings(tolerance: Any, alpha: Any, metrics: Any, allow_mixed: bool, where: str) -> Any:
    """compare.Settings from raw knob values (ini text or flags); InputError with one sentence if bad."""
    from pytest_udpsend.results import compare
    from pytest_udpsend.results.metrics import METRICS

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


def gate_from_ini(config: Any) -> Any:
    """compare.Settings from the ini knobs and --udpsend-allow-mixed (a bad value is a usage error)."""
    import pytest

    allow_mixed = bool(config.getoption("udpsend_allow_mixed", False))
    try:
        tolerance, alpha, metrics = (config.getini(k.ini) for k in GATE_KNOBS)
        return gate_settings(tolerance, alpha, metrics, allow_mixed, where="udpsend ini options")
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def configure_baseline(session: Any, config: Any) -> None:
    """Read the gate's settings and load --udpsend-baseline; refuse, in one sentence, what cannot be judged."""
    import pytest

    from pytest_udpsend.results import compare, store

    allow_mixed = bool(config.getoption("udpsend_allow_mixed", False))
    session.gate = settings = gate_from_ini(config)
    if not session.options.baseline_path:
        return
    if session.options.interleave:
        raise pytest.UsageError(
            "--udpsend-baseline and --udpsend-interleave judge a run two ways (against a saved "
            "session, or baseline and candidate arms in this one): give one of them"
        )
    try:
        doc = store.load(session.options.baseline_path)
    except ConfigError as exc:
        raise pytest.UsageError(f"--udpsend-baseline {exc}") from None
    if doc.get("runs") and not doc.get("tests"):  # several sessions (udpsend merge): pooled, each test's floors learned
        from pytest_udpsend.results import fanin

        pooled, why = fanin.pool(fanin.units_of(doc, session.options.baseline_path))
        if pooled is None:
            raise pytest.UsageError(
                f"--udpsend-baseline {session.options.baseline_path}: its runs cannot be pooled: {why}"
            )
        doc = pooled
    session.baseline = doc
    session.baseline_samples = compare.samples_by_test(doc)
    session.baseline_floors = doc.get("floors") or {}
    session.gate_family = compare.family_size(session.baseline_samples, settings)
    if hasattr(config, "workerinput") or config.getoption("udpsend_kernel", None):
        return  # checked once, where the tests run: the controller, or the lane's guest
    counts = [len(s) for s in session.baseline_samples.values() if s]
    short = (
        compare.needed_samples(min(counts), session.options.repeat, settings, session.gate_family) if counts else None
    )
    if short:
        raise pytest.UsageError(f"--udpsend-baseline: {short}")
    if not allow_mixed:
        here = store.environment(session.backend_choice()[0])
        mixed = compare.env_mismatch(doc.get("environment", {}), here, with_lane=False)
        if mixed:
            raise pytest.UsageError(f"--udpsend-baseline: {compare.mixed_refusal(mixed, '--udpsend-allow-mixed')}")


def configure_lane(config: Any) -> Any:
    """The lane for --udpsend-kernel (controller only), or None: a vm.KernelLane for one image (a
    vm.HostLane for ``host``), a kernel_gate.Kernels for several kernels or --udpsend-gate-against.

    Inside a lane guest (same arguments, so --udpsend-kernel is set there too) there is
    no lane: the guest registers the host's selection instead.  Every precondition of
    the lane is checked here, before collection: a missing one is a usage error.
    """
    import pytest

    from pytest_udpsend.lane import vm

    selection = vm.guest_selection()
    if selection is not None:
        config.pluginmanager.register(selection, "udpsend-lane-selection")
        return None
    given = config.getoption("udpsend_kernel") or []
    against = config.getoption("udpsend_gate_against")
    if hasattr(config, "workerinput"):
        return None
    if not given and not against:
        return None
    if given and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--udpsend-kernel runs the selected tests in one VM: drop -n/--numprocesses")
    if config.getoption("udpsend_interleave") and len(given) > 1 and config.getoption("udpsend_candidate_sysctl"):
        raise pytest.UsageError(
            "--udpsend-candidate-sysctl with two --udpsend-kernel: the candidate is the other "
            "kernel; drop --udpsend-candidate-sysctl, or gate the sysctl within one kernel"
        )
    if config.getoption("udpsend_interleave") and (len(given) > 2 or (len(given) == 2) != bool(against)):
        raise pytest.UsageError(
            "--udpsend-interleave with kernels alternates the boots of two: give --udpsend-kernel OLD "
            "--udpsend-kernel NEW --udpsend-gate-against OLD (or one --udpsend-kernel, whose guest "
            "interleaves the candidate arms)"
        )
    timeout, backend = config.getoption("udpsend_kernel_timeout"), config.getoption("udpsend_backend")
    if len(given) == 1 and not against:
        return vm.lane_for(given[0], timeout, backend)
    from pytest_udpsend.frontend import kernel_gate

    kernels = kernel_gate.configure(given, against, gate_from_ini(config), lambda v: vm.lane_for(v, timeout, backend))
    config.pluginmanager.register(kernels, "udpsend-kernels")
    return kernels


def session_options(config: Any) -> Any:
    """SessionOptions from the pytest command line (a bad value is a usage error)."""
    import pytest

    from pytest_udpsend.frontend.session import SessionOptions

    opts = SessionOptions(
        backend=config.getoption("udpsend_backend"),
        repeat=config.getoption("udpsend_repeat"),
        json_path=config.getoption("udpsend_json"),
        baseline_path=config.getoption("udpsend_baseline"),
        html_path=config.getoption("udpsend_html"),
        pcap_dir=config.getoption("udpsend_pcap"),
        require_privileges=config.getoption("udpsend_require_privileges"),
        lock_timeout=config.getoption("udpsend_lock_timeout"),
        nic_pair=config.getoption("udpsend_nic_pair"),
        interleave=config.getoption("udpsend_interleave"),
    )
    if opts.interleave == 1:
        raise pytest.UsageError(
            "--udpsend-interleave 1: one round is one pair, which cannot show a change: give 0 (off) "
            "or at least 2 rounds (the run says how many its tests need)"
        )
    try:
        opts.labels.update(parse_labels(config.getoption("udpsend_label") or []))
        opts.candidate_sysctls.update(
            candidate_sysctls(config.getoption("udpsend_candidate_sysctl") or [], opts.interleave)
        )
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if opts.nic_pair is not None:
        from pytest_udpsend.host import nics

        try:
            nics.parse_pair(opts.nic_pair)  # the ports themselves are looked at when a NIC test runs
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    return opts  # numbers were checked as the options were parsed (number_type)

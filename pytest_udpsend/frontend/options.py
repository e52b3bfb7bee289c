"""Command-line options, defined once for pytest and for the ``udpsend`` command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
    "how sock_wfree timing is measured: auto (bpf where eBPF tracing works, else timestamp), "
    "bpf (exact, eBPF kprobes; fails where unavailable), timestamp (receiver-timestamp estimate)",
    {"choices": ["auto", "bpf", "timestamp"], "default": "auto"},
)
REPEAT = Opt("--udpsend-repeat", "run each measuring scenario N times and keep every sample (default 1)",
             {"type": int, "default": 1, "metavar": "N"})  # fmt: skip
JSON = Opt("--udpsend-json", "write every test's SendResult(s) and the environment to PATH", {"metavar": "PATH"})
BASELINE = Opt(
    "--udpsend-baseline",
    "compare with a saved --udpsend-json file; a significant regression beyond the tolerance fails the test",
    {"metavar": "PATH"},
)
KERNEL = Opt("--udpsend-kernel", "run the selected tests in a VM booted with this kernel image (virtme-ng)",
             {"metavar": "PATH"})  # fmt: skip
KERNEL_TIMEOUT = Opt("--udpsend-kernel-timeout", "seconds the kernel-lane guest may run before it is killed (default 2400)",
                     {"type": float, "default": 2400.0, "metavar": "S"})  # fmt: skip
HTML = Opt("--udpsend-html", "write a self-contained HTML report with plots to PATH", {"metavar": "PATH"})
PCAP = Opt("--udpsend-pcap", "keep a bounded capture of each failing measuring test's traffic in DIR", {"metavar": "DIR"})
REQUIRE = Opt(
    "--udpsend-require-privileges",
    "fail, instead of skip, where root, netns or a needed kernel feature is missing",
    {"action": "store_true", "default": False},
)

PYTEST_OPTIONS = [BACKEND, REPEAT, JSON, BASELINE, KERNEL, KERNEL_TIMEOUT, HTML, PCAP, REQUIRE]


def add_options(addoption: Callable[..., Any], opts: list[Opt], short: bool = False) -> None:
    """Register ``opts`` with an argparse-like ``addoption``; ``short`` drops the ``--udpsend-``
    prefix (the ``udpsend`` command's spelling: ``--json`` for ``--udpsend-json``)."""
    for opt in opts:
        flag = "--" + opt.flag.removeprefix("--udpsend-") if short else opt.flag
        addoption(flag, dest=opt.dest, help=opt.help, **opt.kwargs)


INI_OPTIONS = [
    ("udpsend_tolerance", "baseline: relative change of a metric's median allowed before a significant change fails "
     "(default 0.25); the udpsend_baseline marker overrides it per test", "0.25"),
    ("udpsend_alpha", "baseline: significance level of the one-sided Mann-Whitney test (default 0.05)", "0.05"),
    ("udpsend_compare_metrics", "baseline: metrics compared, space-separated (default: all: eagain_rate "
     "time_squeeze enobufs wfree.p50_us wfree.p99_us pps)", ""),
]  # fmt: skip


def configure_baseline(session: Any, config: Any) -> None:
    """Read the ini settings and load --udpsend-baseline; a bad value is a usage error, one sentence."""
    import pytest

    from pytest_udpsend.results import compare, metrics, store

    try:
        session.tolerance = float(config.getini("udpsend_tolerance"))
        session.alpha = float(config.getini("udpsend_alpha"))
    except ValueError as exc:
        raise pytest.UsageError(f"udpsend_tolerance / udpsend_alpha must be numbers: {exc}") from None
    names = tuple(str(config.getini("udpsend_compare_metrics")).split())
    unknown = [m for m in names if m not in metrics.METRICS]
    if unknown:
        raise pytest.UsageError(f"udpsend_compare_metrics: unknown {unknown}; accepted: {', '.join(metrics.METRICS)}")
    session.compare_metrics = names or None
    if session.options.baseline_path:
        try:
            doc = store.load(session.options.baseline_path)
        except ValueError as exc:
            raise pytest.UsageError(f"--udpsend-baseline {exc}") from None
        session.baseline = doc
        session.baseline_samples = compare.samples_by_test(doc)


def configure_lane(config: Any) -> Any:
    """The KernelLane for --udpsend-kernel (controller only), or None."""
    import pytest

    image = config.getoption("udpsend_kernel")
    if not image or hasattr(config, "workerinput"):
        return None
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--udpsend-kernel runs the selected tests in one VM: drop -n/--numprocesses")
    from pytest_udpsend.lane.vm import KernelLane

    return KernelLane(image, config.getoption("udpsend_kernel_timeout"))


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
    )
    if opts.repeat < 1:
        raise pytest.UsageError(f"--udpsend-repeat {opts.repeat}: must be 1 or more")
    return opts

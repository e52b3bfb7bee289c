"""pytest's side of the options: the session's options, the gate and its baseline, the kernel lane, read from
the pytest command line and ini file at ``pytest_configure``; a bad value is a ``pytest.UsageError``."""

from __future__ import annotations

import pytest

from pytest_udpsend.errors import ConfigError, InputError
from pytest_udpsend.frontend import kernel_lane
from pytest_udpsend.frontend.guest import guest_selection
from pytest_udpsend.frontend.kernel_gate import configure as configure_kernels
from pytest_udpsend.frontend.markers import sysctl_values
from pytest_udpsend.frontend.options import GATE_KNOBS, gate_settings, parse_labels
from pytest_udpsend.frontend.session import SessionOptions, UdpsendSession
from pytest_udpsend.host import nics
from pytest_udpsend.results import compare, fanin, store


def candidate_sysctls(given: list[str], interleave: int) -> dict[str, str]:
    """--udpsend-candidate-sysctl values, checked like the sysctl marker's; InputError with one sentence."""
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


def gate_from_ini(config: pytest.Config) -> compare.Settings:
    """compare.Settings from the ini knobs and --udpsend-allow-mixed (a bad value is a usage error)."""
    allow_mixed = bool(config.getoption("udpsend_allow_mixed", False))
    try:
        tolerance, alpha, metrics = (config.getini(k.ini) for k in GATE_KNOBS)
        return gate_settings(tolerance, alpha, metrics, allow_mixed, where="udpsend ini options")
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def configure_baseline(session: UdpsendSession, config: pytest.Config) -> None:
    """Read the gate's settings and load --udpsend-baseline; refuse, in one sentence, what cannot be judged."""
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


def configure_lane(config: pytest.Config) -> kernel_lane.SessionLane | None:
    """The lane for --udpsend-kernel (controller only), or None: a kernel_lane.KernelLane for one image (a
    kernel_lane.HostLane for ``host``), a kernel_gate.Kernels for several kernels or --udpsend-gate-against.

    Inside a lane guest (same arguments, so --udpsend-kernel is set there too) there is
    no lane: the guest registers the host's selection instead.  Every precondition of
    the lane is checked here, before collection: a missing one is a usage error.
    """
    selection = guest_selection()
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
        return kernel_lane.lane_for(given[0], timeout, backend)
    kernels = configure_kernels(
        given, against, gate_from_ini(config), lambda v: kernel_lane.lane_for(v, timeout, backend)
    )
    config.pluginmanager.register(kernels, "udpsend-kernels")
    return kernels


def session_options(config: pytest.Config) -> SessionOptions:
    """SessionOptions from the pytest command line (a bad value is a usage error)."""
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
        try:
            nics.parse_pair(opts.nic_pair)  # the ports themselves are looked at when a NIC test runs
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    return opts  # numbers were checked as the options were parsed (number_type)

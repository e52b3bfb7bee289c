"""Marker definitions and their validation into a Scenario, at collection time.

A bad argument becomes a collection error naming the marker, the argument and
what is accepted, before any namespace is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import sysctl, topology
from pytest_udpsend.measure import load, params
from pytest_udpsend.results import bounds as bounds_mod
from pytest_udpsend.results.metrics import METRICS

# What each marker does.  Its parameters are not written here: the registered help and the docs
# reference both take them from the marker's validator (frontend/reference.py: registered_help), so a
# new parameter reaches both.  Only markers whose validator takes a positional value (sysctl) or has
# none (candidate) spell their arguments here.
MARKERS = {
    "topology": "shape the pair of the `veth` fixture, or with link='vmxnet3' | 'virtio' | 'e1000e' | 'nic' the NIC ports"
    " of the `nic_pair` fixture (the kernel lane's emulated pair, or --udpsend-nic-pair; irq_cpus pins their "
    "interrupts) (gro=True puts UDP on the receiver's NAPI path; napi_cpus pins its threaded-NAPI kthread; "
    "tx_checksum=False turns checksum offload off on the sender's link, so UDP GSO sends fail with EIO before"
    " 6.11; CPU sets: [1], a CPU list string '1-3,5' (has - or ,) or a sysfs hex mask string '2' = '0x2' = "
    "CPU 1, '1,00000000' = CPU 32)",
    "sysctl": 'sysctl({"net.core.netdev_budget": 8, ...}): sysctls set for the test and restored after it '
    "(global knobs in the initial netns, per-netns knobs in both veth namespaces)",
    "cpu_pressure": "CPU hogs during the run (cpus as for topology's rps_cpus: [1], '1-3,5' or the hex mask '2'); on_s/off_s "
    "cycle them: running on_s, stopped (SIGSTOP) off_s, repeated, and SendResult.recovery says per release "
    "how long the send rate took to come back to resume_fraction of the unpressured rate, read in window_ms "
    "windows",
    "udpsend": "the send run that `udpsend_result` performs (receiver_cpu pins the draining receiver); replay=PATH, "
    "speed=1.0 send a pcap/pcapng's UDP datagrams with their sizes and gaps instead (speed=0: as fast as "
    "possible)",
    "eagain_rate": "bound on the fraction of send attempts that got EAGAIN (0 to 1); kernel='<6.5' limits it to those kernel"
    " versions (markers stack, one per kernel range); per='burst' bounds every burst of a replay (udpsend "
    "replay=) instead of the whole run: the worst burst decides",
    "time_squeeze": "bound on time_squeeze increments during the run, all CPUs; kernel= as for eagain_rate",
    "wfree_latency": "bounds on charge-to-sock_wfree latency (at least one, or a backend); backend='bpf' demands the exact "
    "eBPF measurement, backend='tracepoint' the tracepoint one (exact counts and contexts, sampled latency: "
    "measure/tpprobe.py); kernel= as for eagain_rate",
    "busy_wait": "bound on the fraction of one CPU the sender used while its send buffer was full (about 1 for a sender "
    "that retries at once on EAGAIN, about 0 for one that waits for POLLOUT; 'not measured' if the buffer "
    "never filled); kernel= as for eagain_rate",
    "resume_ms": "bound on the worst release's recovery time in ms (SendResult.recovery.resume_ms: from a release of "
    "cpu_pressure(on_s=, off_s=) until the send rate was back to resume_fraction of the unpressured rate; "
    "'not measured' if a release never came back); kernel= as for eagain_rate",
    "udpsend_baseline": "per-test baseline comparison settings",
    "candidate": "candidate(topology={...}, sysctl={...}, udpsend={...}, cpu_pressure={...}): with --udpsend-interleave N, "
    "the candidate arm's overrides of those scenario markers (each dict takes that marker's arguments); "
    "candidate() with nothing to override makes the test a control (an in-run A/A check)",
}
OVERRIDABLE = ("topology", "sysctl", "udpsend", "cpu_pressure")  # the scenario markers a candidate arm may change


@dataclass(frozen=True)
class Baseline:
    tolerance: float | None = None
    metrics: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Scenario:
    """Everything the markers of one test ask for."""

    topology: topology.TopologySpec = field(default_factory=topology.TopologySpec)
    sysctls: dict[str, str] = field(default_factory=dict)
    pressure: load.PressureSpec | None = None
    params: params.SendParams = field(default_factory=params.SendParams)
    bounds: bounds_mod.Bounds = field(default_factory=bounds_mod.Bounds)
    baseline: Baseline = field(default_factory=Baseline)
    has_udpsend_marker: bool = False


SCENARIO_KEY = pytest.StashKey[Scenario]()
CANDIDATE_KEY = pytest.StashKey[Scenario]()  # the candidate arm's scenario, where a candidate marker changes it


def _call(marker: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Call a spec builder with the marker's arguments; a TypeError or ConfigError names the marker."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        names = [p for p in inspect.signature(fn).parameters if not p.startswith("_")]
        raise ConfigError(f"@pytest.mark.{marker}: {exc}; accepted arguments: {', '.join(names)}") from None
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"@pytest.mark.{marker}: {exc}") from None


def _sysctl_dict(values: Any) -> dict[str, str]:
    if not isinstance(values, dict) or not values:
        raise ConfigError(
            f"expects one dict of dotted names to values, e.g. {{'net.core.netdev_budget': 8}}, got {values!r}"
        )
    out = {}
    for name, value in values.items():
        try:
            path = sysctl.sysctl_path(str(name))
            out[str(name)] = sysctl.format_value(value)
        except Exception as exc:
            raise ConfigError(str(exc)) from None
        # Outside the host's network namespace (a container) global net.* knobs are not in /proc/sys:
        # that is the test's skip with the reason when it runs, not a collection error for everyone.
        if not path.exists() and not (str(name).startswith("net.") and sysctl.outside_initial_netns()):
            raise ConfigError(f"unknown sysctl {name}: no {path} on this kernel; check the name with 'sysctl -a'")
    return out


def sysctl_values(values: dict[str, Any]) -> dict[str, str]:
    """Sysctl names and values checked as the sysctl marker checks them (ConfigError on a bad one)."""
    return _sysctl_dict(values)


def _baseline(tolerance: Any = None, metrics: Any = None) -> Baseline:
    if tolerance is not None:
        params.number("tolerance", tolerance, unit="a fraction, e.g. 0.2 for 20 %")
    if metrics is not None and (
        not isinstance(metrics, (list, tuple)) or not metrics or not all(m in METRICS for m in metrics)
    ):
        raise ConfigError(f"metrics={metrics!r}: a list of metric names from {', '.join(METRICS)}")
    return Baseline(None if tolerance is None else float(tolerance), None if metrics is None else tuple(metrics))


def _overrides(item: pytest.Item) -> dict[str, dict[str, Any]] | None:
    """The candidate marker's overrides by marker name, or None without a candidate marker."""
    m = item.get_closest_marker("candidate")
    if m is None:
        return None
    if m.args:
        raise ConfigError(
            "@pytest.mark.candidate: takes keyword arguments only, e.g. candidate(sysctl={'net.core.netdev_budget': 8})"
        )
    for name, value in m.kwargs.items():
        if name not in OVERRIDABLE:
            raise ConfigError(
                f"@pytest.mark.candidate: unknown argument {name!r}; accepted arguments: {', '.join(OVERRIDABLE)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"@pytest.mark.candidate: {name}= takes a dict of that marker's arguments, got {value!r}")
    return dict(m.kwargs)


def _arguments(
    name: str, fn: Callable[..., Any], mark: pytest.Mark | None, override: dict[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """A marker's arguments, with the candidate's override laid over them (None: neither has it)."""
    if override is None:
        return (mark.args, dict(mark.kwargs)) if mark is not None else None
    if name == "sysctl":  # one dict: the candidate's knobs over the marker's
        base = mark.args[0] if mark is not None and mark.args and isinstance(mark.args[0], dict) else {}
        return ({**base, **override},), {}
    bound: dict[str, Any] = {}
    if mark is not None:
        try:
            sig = inspect.signature(fn)
            bound = dict(sig.bind_partial(*mark.args, **mark.kwargs).arguments)
            for name_, p in sig.parameters.items():  # a **kwargs builder: its keywords, not one dict
                if p.kind is p.VAR_KEYWORD:
                    bound.update(bound.pop(name_, {}))
        except TypeError:
            return mark.args, dict(mark.kwargs)  # the baseline's own error is reported first
    return (), {**bound, **override}


def _check_reader(item: pytest.Item, over: dict[str, dict[str, Any]]) -> None:
    """An udpsend= override is read only by the fixtures that run the udpsend marker's scenario: elsewhere
    the arms would be the same while the test is judged as if they differed."""
    readers = {"udpsend_result", "udpsend_sweep"}
    if "udpsend" in over and not readers & set(getattr(item, "fixturenames", ())):
        raise ConfigError(
            "@pytest.mark.candidate(udpsend={...}): this test does not use udpsend_result or "
            "udpsend_sweep, which run the udpsend marker's scenario, so the override would change "
            "nothing; pass the candidate's arguments yourself with the udpsend_arm fixture"
        )


def scenario_for(item: pytest.Item, overrides: dict[str, dict[str, Any]] | None = None) -> Scenario:
    """Validate every udpsend marker on ``item`` into a Scenario (ConfigError on the first bad one);
    ``overrides`` (the candidate marker's) are laid over the scenario markers they name."""
    over = overrides or {}

    def one(name: str, fn: Callable[..., Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        return _arguments(name, fn, item.get_closest_marker(name), over.get(name))

    def where(name: str) -> str:  # an error in an override names the candidate marker
        return f"candidate({name}={{...}})" if name in over else name

    kw: dict[str, Any] = {}
    if a := one("topology", topology.make_spec):
        kw["topology"] = _call(where("topology"), topology.make_spec, *a)
    if a := one("sysctl", _sysctl_dict):
        kw["sysctls"] = _call(where("sysctl"), _sysctl_dict, *a)
    if a := one("cpu_pressure", load.make_spec):
        kw["pressure"] = _call(where("cpu_pressure"), load.make_spec, *a)
    if a := one("udpsend", params.make_params):
        if a[0]:
            raise ConfigError("@pytest.mark.udpsend: takes keyword arguments only, e.g. udpsend(duration=1.0)")
        kw["params"] = _call(where("udpsend"), params.make_params, (), a[1])
        kw["has_udpsend_marker"] = True
    if m := item.get_closest_marker("udpsend_baseline"):
        kw["baseline"] = _call("udpsend_baseline", _baseline, m.args, m.kwargs)
    kw["bounds"] = _bounds(item)
    if any(b.marker == "resume_ms" for b in kw["bounds"].bounds) and getattr(kw.get("pressure"), "on_s", None) is None:
        raise ConfigError(
            "@pytest.mark.resume_ms: bounds the recovery after each release of a pressure schedule, and "
            "this test has none: add @pytest.mark.cpu_pressure(..., on_s=0.2, off_s=0.2)"
        )
    return Scenario(**kw)


def _bounds(item: pytest.Item) -> bounds_mod.Bounds:
    """Every assertion marker on the item: markers of one kind stack, each for its kernel= versions."""
    found: list[bounds_mod.Bound] = []
    backends: list[tuple[str, str | None]] = []
    for m in item.iter_markers("eagain_rate"):  # per="burst": every burst of a replay
        found.append(_call("eagain_rate", bounds_mod.eagain_bound, m.args, m.kwargs))
    for name in ("time_squeeze", "busy_wait"):
        for m in item.iter_markers(name):
            found.append(
                _call(
                    name,
                    lambda max=None, min=None, kernel=None, _n=name: bounds_mod.min_max(_n, _n, max, min, kernel),
                    m.args,
                    m.kwargs,
                )
            )
    for m in item.iter_markers("resume_ms"):  # the worst release of a cpu_pressure schedule
        found.append(_call("resume_ms", bounds_mod.resume_bound, m.args, m.kwargs))
    for m in item.iter_markers("wfree_latency"):
        wb, demand = _call("wfree_latency", bounds_mod.wfree_bounds, m.args, m.kwargs)
        found.extend(wb)
        backends.append(demand)
    return bounds_mod.Bounds(tuple(found), tuple(backends))


def validate_collected(report: pytest.CollectReport) -> None:
    """Turn a collect report with invalid markers into a failed one (a collection error)."""
    if report.outcome != "passed":
        return
    errors = []
    for node in report.result:
        if isinstance(node, pytest.Item):
            try:
                node.stash[SCENARIO_KEY] = scenario_for(node)
                if (over := _overrides(node)) is not None:
                    _check_reader(node, over)
                    node.stash[CANDIDATE_KEY] = scenario_for(node, over) if over else node.stash[SCENARIO_KEY]
            except ConfigError as exc:
                errors.append(f"{node.nodeid}: {exc}")
    if errors:
        report.outcome = "failed"
        report.longrepr = "\n".join(errors)
        report.result = []


def nic_links(items: list[pytest.Item]) -> set[str]:
    """The NIC models the items' topology markers ask for: the kernel lane boots its guest with a pair of each."""
    return {s.topology.link for i in items if (s := i.stash.get(SCENARIO_KEY, None)) is not None and s.topology.is_nic}

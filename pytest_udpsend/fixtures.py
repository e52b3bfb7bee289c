"""The public fixtures (names in SPEC.md).  Each is small and builds on ``_udpsend_ctx``.

Every change a fixture makes is pushed on the test's one undo stack right after
it is made, so teardown undoes everything last-in-first-out, also when set-up
failed half way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.frontend import interleave
from pytest_udpsend.frontend.keys import ARM_KEY, RESULTS_KEY, udpsend_session
from pytest_udpsend.frontend.markers import CANDIDATE_KEY, SCENARIO_KEY, Scenario
from pytest_udpsend.frontend.pcap import capture_for
from pytest_udpsend.frontend.session import TestContext, UdpsendSession
from pytest_udpsend.host.netns import Namespace
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.host.topology import Topology, build, build_nic, make_namespace
from pytest_udpsend.measure import load
from pytest_udpsend.measure.external import SenderProcess
from pytest_udpsend.measure.probes import WfreeProbe
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.measure.sender import UdpSender
from pytest_udpsend.results.sweep import Sweep, make_grid


def scenario(request: pytest.FixtureRequest) -> Scenario:
    """The test's scenario; in the candidate arm of --udpsend-interleave, the candidate's."""
    node = request.node
    base: Scenario = node.stash.get(SCENARIO_KEY, None) or Scenario()
    if node.stash.get(ARM_KEY, "baseline") != "candidate" or interleave.is_control(node):
        return base
    extra = udpsend_session(request.config).options.candidate_sysctls
    cand: Scenario = node.stash.get(CANDIDATE_KEY, base)
    return dataclasses.replace(cand, sysctls={**cand.sysctls, **extra}) if extra else cand


@pytest.fixture
def udpsend_arm(request: pytest.FixtureRequest) -> str:
    """Function scope.  ``"baseline"`` or ``"candidate"``: the arm --udpsend-interleave is measuring
    (``"baseline"`` without it), for tests that build their two arms by hand.

    Example::

        def test_new_build(udpsend_arm, sender_process):
            binary = "./sender-old" if udpsend_arm == "baseline" else "./sender-new"
            sender_process.run([binary, "--count", "100000"], cpu=0)
    """
    arm: str = request.node.stash.get(ARM_KEY, "baseline")
    return arm


@pytest.fixture
def _udpsend_ctx(request: pytest.FixtureRequest) -> Iterator[TestContext]:
    """Function scope.  Checks privileges (skip, or fail under --udpsend-require-privileges),
    then yields the test's undo stack; flushes it at teardown."""
    session = udpsend_session(request.config)
    if problem := session.admit(scenario(request).sysctls):
        _skip_or_fail(session, problem)
    ctx = TestContext(session, marked_sysctls=scenario(request).sysctls)
    session.active.append(ctx)
    try:
        yield ctx
    finally:
        ctx.close()


def _register(ctx: TestContext, ns: Namespace) -> None:
    ctx.session.namespaces[ns.name] = ns
    ctx.undo.push(f"forget {ns.name}", lambda: ctx.session.namespaces.pop(ns.name, None))


@pytest.fixture
def netns(_udpsend_ctx: TestContext) -> Callable[[str], Namespace]:
    """Function scope.  Factory: ``netns("hint") -> Namespace`` with lo up; all removed at teardown.

    Example::

        def test_two(netns):
            a = netns("client")
            assert a.name in subprocess.check_output(["ip", "netns"], text=True)
    """

    def make(hint: str = "ns") -> Namespace:
        ns = make_namespace(hint, _udpsend_ctx.undo)
        _register(_udpsend_ctx, ns)
        return ns

    return make


def _build(request: pytest.FixtureRequest, ctx: TestContext, fixture: str) -> Topology:
    """The test's pair, veth or borrowed NIC ports, as its ``topology`` marker asks."""
    spec = scenario(request).topology
    if spec.is_nic != (fixture == "nic_pair"):
        wanted = "nic_pair" if spec.is_nic else "veth"
        pytest.fail(
            f"the topology marker asks for link={spec.link!r}, which the {fixture} fixture does not build: "
            f"request {wanted} (or udp_sender, which takes either)",
            pytrace=False,
        )
    problem = None
    try:
        if spec.is_nic:
            # the host lock first (one lock order with the port locks and global sysctls), so that
            # another session's ports are home again when this one looks for them
            ctx.exclusive()
            ports = ctx.session.nic_pair(spec.link)
            topo = build_nic(
                spec, ctx.undo, ctx.session.subnets, ports, ctx.session.port_journal, hint=request.node.name
            )
        else:
            topo = build(spec, ctx.undo, ctx.session.subnets, hint=request.node.name)
    except PrivilegeError as exc:  # a kernel without veth or IPv6, no NIC pair here: skip, or fail when required
        problem = str(exc)
    if problem is not None:  # outside the except: the sentence alone, no chained traceback
        _skip_or_fail(ctx.session, problem)
    for end in (topo.sender, topo.receiver):
        _register(ctx, end.ns)
    ctx.topology = topo
    ctx.apply_marked_to(topo)
    return topo


@pytest.fixture
def veth(request: pytest.FixtureRequest, _udpsend_ctx: TestContext) -> Topology:
    """Function scope.  Sender and receiver namespaces joined by a veth pair, shaped by the
    ``topology`` marker; per-netns knobs of the ``sysctl`` marker are applied in both.

    Example::

        @pytest.mark.topology(rps_cpus=[1])
        def test_pair(veth):
            assert veth.sender.addr != veth.receiver.addr
    """
    return _build(request, _udpsend_ctx, "veth")


@pytest.fixture
def nic_pair(request: pytest.FixtureRequest, _udpsend_ctx: TestContext) -> Topology:
    """Function scope.  Like ``veth``, on two NIC ports whose driver frees TX skbs at TX completion:
    ``@pytest.mark.topology(link="vmxnet3" | "virtio" | "e1000e" | "nic", irq_cpus=[...])``.  The
    kernel lane (--udpsend-kernel) boots its guest with an emulated pair of the model; on bare metal
    --udpsend-nic-pair A,B names two cabled ports.  They are journaled, moved into the test's
    namespaces and given back as they were (name, addresses, MTU, up state, qdisc, RPS, IRQ affinity).

    Example::

        @pytest.mark.topology(link="vmxnet3", irq_cpus=[1])
        def test_nic(nic_pair):
            assert nic_pair.irqs[nic_pair.sender.ifname]
    """
    return _build(request, _udpsend_ctx, "nic_pair")


@pytest.fixture
def _udpsend_topology(request: pytest.FixtureRequest) -> Topology:
    """Whichever pair the test's ``topology`` marker asks for (what udp_sender and friends run on)."""
    return request.getfixturevalue("nic_pair" if scenario(request).topology.is_nic else "veth")  # type: ignore[no-any-return]


@pytest.fixture
def sysctl(request: pytest.FixtureRequest, _udpsend_ctx: TestContext) -> Sysctls:
    """Function scope.  ``sysctl.set(name, value, netns=None)`` / ``sysctl.get(name, netns=None)``;
    applies the ``sysctl`` marker first; every change restored at teardown (globals journaled).

    Example::

        def test_budget(sysctl):
            sysctl.set("net.core.netdev_budget", 8)
    """
    ctx = _udpsend_ctx
    if ctx.per_netns_marked() and ctx.topology is None:
        request.getfixturevalue("_udpsend_topology")  # builds the pair and applies the per-netns knobs
    return ctx.sysctls


@pytest.fixture
def cpu_pressure(
    request: pytest.FixtureRequest, _udpsend_ctx: TestContext
) -> Callable[..., contextlib.AbstractContextManager[list[int]]]:
    """Function scope.  ``with cpu_pressure(cpus=[1], workers=2): ...`` runs pinned CPU hogs inside
    the block (a measurement: takes the host lock); stopped on exit and at teardown.

    Example::

        def test_busy(cpu_pressure, udp_sender):
            with cpu_pressure(cpus=[1], workers=2):
                result = udp_sender.run(duration=1)
    """

    def start(cpus: object = (1,), workers: object = 2, **kw: object) -> contextlib.AbstractContextManager[list[int]]:
        spec = load.make_spec(cpus, workers, **kw)
        _udpsend_ctx.exclusive()
        return load.pressure(spec)

    return start


def _probe_for(request: pytest.FixtureRequest, ctx: TestContext) -> Callable[[], WfreeProbe | None]:
    """sock_wfree timing is measured when the test asks: the wfree_probe fixture or wfree_latency."""
    wanted = "wfree_probe" in request.fixturenames or scenario(request).bounds.wants_wfree(os.uname().release)
    if not wanted:
        return lambda: None
    return lambda: request.getfixturevalue("wfree_probe")


@pytest.fixture(scope="session")
def wfree_probe(request: pytest.FixtureRequest) -> Iterator[WfreeProbe]:
    """Session scope.  The sock_wfree timing probe (``.backend`` is "bpf" or "timestamp"),
    chosen by --udpsend-backend and built once (an eBPF compile costs seconds to minutes).

    Example::

        def test_backend(wfree_probe, udp_sender):
            r = udp_sender.run(duration=0.5)
            assert r.wfree["backend"] == wfree_probe.backend
    """
    session = udpsend_session(request.config)
    if problem := session.admit({}):
        _skip_or_fail(session, problem)
    try:
        probe = session.probe()
    except PrivilegeError as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:
        _skip_or_fail(session, problem)
    yield probe


def _skip_or_fail(session: UdpsendSession, reason: str) -> NoReturn:
    if session.options.require_privileges:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def udp_sender(request: pytest.FixtureRequest, _udpsend_ctx: TestContext, _udpsend_topology: Topology) -> UdpSender:
    """Function scope, bound to ``veth`` (or ``nic_pair`` for a NIC link).  ``udp_sender.run(duration=2.0, payload=1400, sndbuf=None,
    force_sndbuf=False, rate=None, cpu=None, ipv6=False) -> SendResult``.  A measurement: takes the
    host lock; the ``cpu_pressure`` marker's hogs run during each run.

    Example::

        @pytest.mark.topology(rps_cpus=[1])
        def test_rps(udp_sender):
            assert udp_sender.run(duration=1, cpu=0).sent > 0
    """
    ctx = _udpsend_ctx
    scen = scenario(request)
    demand = scen.bounds.backend_for(os.uname().release)
    probe = _probe_for(request, ctx)
    if demand in EXACT:
        probe = _demand_backend(request, probe, demand)
    topo = _udpsend_topology
    sender = UdpSender(topo, ctx.sysctls, ctx.exclusive, probe, scen.pressure, capture_for(request, ctx, topo))
    sender.results = request.node.stash.setdefault(RESULTS_KEY, sender.results)  # shared with sender_process
    return sender


@pytest.fixture
def sender_process(
    request: pytest.FixtureRequest, _udpsend_ctx: TestContext, _udpsend_topology: Topology
) -> SenderProcess:
    """Function scope, bound to ``veth`` (or ``nic_pair`` for a NIC link).  ``sender_process.run(argv, duration=None, cpu=None, env=None,
    time_blocked=False) -> SendResult``: your own program sends from the sender namespace (destination in
    ``UDPSEND_DST``, ``UDPSEND_DST6``, ``UDPSEND_PORT``), pinned to ``cpu``, under the ``cpu_pressure`` marker,
    for ``duration`` seconds or until it exits; measured from outside (kernel counters of that netns, and
    its send calls traced by errno where the kernel allows tracepoint eBPF: ``result.errno``).
    ``time_blocked=True`` also times how long its send calls waited for buffer space (``result.blocked``;
    it traces every syscall of the program, about 15 % of a full-speed sender's rate).
    Its output is in ``result.process`` and shown when the test fails; it is killed at teardown.

    Example::

        def test_mine(sender_process):
            r = sender_process.run(["./my-sender", "--count", "100000"], cpu=0)
            assert r.eagain_rate < 0.01
    """
    ctx = _udpsend_ctx
    scen = scenario(request)
    probe = _probe_for(request, ctx)
    if (demand := scen.bounds.backend_for(os.uname().release)) in EXACT:
        probe = _demand_backend(request, probe, demand)
    results = request.node.stash.setdefault(RESULTS_KEY, [])  # shared with udp_sender
    proc = SenderProcess(_udpsend_topology, ctx.sysctls, ctx.exclusive, probe, scen.pressure, results)
    ctx.undo.push("kill the sender process", proc.close)
    return proc


EXACT = {"bpf": "the exact eBPF measurement", "tracepoint": "the tracepoint measurement (--udpsend-backend tracepoint)"}


def _demand_backend(
    request: pytest.FixtureRequest, probe: Callable[[], WfreeProbe | None], demand: str
) -> Callable[[], WfreeProbe | None]:
    chosen = probe()
    if chosen is not None and chosen.backend != demand:
        session = udpsend_session(request.config)
        _skip_or_fail(
            session,
            f"wfree_latency(backend='{demand}') demands {EXACT[demand]}, but the backend is "
            f"{chosen.backend} ({chosen.reason})",
        )
    return lambda: chosen


@pytest.fixture
def udpsend_result(request: pytest.FixtureRequest, udp_sender: UdpSender) -> SendResult:
    """Function scope.  Runs the scenario the test's markers describe (``topology``, ``sysctl``,
    ``cpu_pressure``, ``udpsend``), --udpsend-repeat times, and returns the median sample by
    EAGAIN rate (every sample is kept for --udpsend-json and the baseline).

    Example::

        @pytest.mark.topology(rps_cpus=[1])
        @pytest.mark.udpsend(duration=1.0, cpu=0)
        @pytest.mark.eagain_rate(max=0.5)
        def test_rps(udpsend_result):
            assert udpsend_result.sent > 0
    """
    params = scenario(request).params.as_dict()
    repeat = udpsend_session(request.config).options.repeat
    samples = [udp_sender.run(**params) for _ in range(repeat)]
    return sorted(samples, key=lambda r: r.eagain_rate)[len(samples) // 2]


@pytest.fixture
def udpsend_sweep(
    request: pytest.FixtureRequest, _udpsend_ctx: TestContext, _udpsend_topology: Topology
) -> Callable[..., Sweep]:
    """Function scope, bound to ``veth`` (or ``nic_pair``).  ``udpsend_sweep(sndbuf=[...], force="no"|"yes"|"both",
    budget=[...], budget_usecs=[...], workers=[...], repeat=None) -> Sweep``: the test's scenario
    (its ``udpsend`` and ``cpu_pressure`` markers) across a grid of the remedies' knobs, each cell
    --udpsend-repeat times; global knobs restored at teardown.  ``workers`` are hogs on the
    ``cpu_pressure`` marker's CPUs (default CPU 1).

    Example::

        @pytest.mark.topology(rps_cpus=[1])
        def test_remedy(udpsend_sweep):
            sweep = udpsend_sweep(sndbuf=[8 << 20], force="both", budget=[8, 300])
            assert sweep.cell(force=True, budget=300).median("eagain_rate") < 0.01
    """
    scen = scenario(request)
    pressure = scen.pressure

    def run(repeat: int | None = None, **knobs: Any) -> Sweep:
        grid = make_grid(**knobs)
        # every cell reports wfree p99 (the remedy table), so the session's probe is used
        sweep = Sweep(
            _udpsend_topology,
            _udpsend_ctx.sysctls,
            _udpsend_ctx.exclusive,
            request.getfixturevalue("wfree_probe"),
            scen.params,
            pressure=pressure,
        )
        return sweep.run(grid, repeat or udpsend_session(request.config).options.repeat)

    return run

"""Hosts as they are (issue 17): namespaces that are not empty, kernels without IPv6 or veth,
RPS masks as sysfs reads them, loops that stop on Ctrl-C, bounded timestamp memory, and
output files that never follow a planted symlink.  Real namespaces where the kernel
decides; the forms that need a module or a boot argument run in the kernel lane (marked
``lane``, from ci/lane.sh)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_udpsend.errors import PrivilegeError
from pytest_udpsend.host import outfile, topology
from pytest_udpsend.host.rtnl import Rtnl, veth_msg
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.measure import _engine, probes, sender  # type: ignore[attr-defined]


def _udp_roundtrip(topo: topology.Topology) -> bytes:
    def bind() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((topo.receiver.addr, 40100))
        sock.settimeout(2)
        return sock

    rx: socket.socket = topo.receiver.run(bind)

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"hello", (topo.receiver.addr, 40100))

    try:
        topo.sender.run(send)
        return rx.recv(100)
    finally:
        rx.close()


@pytest.fixture
def build_topology():
    undo = UndoStack()
    subnets = topology.SubnetAllocator(7)

    def build(**marker: object) -> topology.Topology:
        return topology.build(topology.make_spec(**marker), undo, subnets, hint="hosts")

    yield build
    undo.flush()


def test_veth_index_is_picked_free_where_tunnel_devices_exist(build_topology, monkeypatch):
    """With ipip/sit loaded every new namespace holds tunl0, sit0 at ifindex 2, 3: the veth
    must not ask for an index they hold (it did: FileExistsError from rtnl.py)."""
    original = topology._new_ns_setup

    def with_tunnel_like_devices(ipv6: bool):  # what a tunnel module's pernet init leaves
        rt = Rtnl()
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            rt.call(veth_msg("tunl0", "sit0", own, 1500, 2, 3))
        finally:
            os.close(own)
            rt.close()
        return original(ipv6)

    monkeypatch.setattr(topology, "_new_ns_setup", with_tunnel_like_devices)
    topo = build_topology()
    assert topo.sender.index == topo.receiver.index == 4
    assert _udp_roundtrip(topo) == b"hello"


def test_ipv4_topology_works_without_ipv6_and_ipv6_is_refused_in_one_sentence(build_topology, monkeypatch):
    """ipv6.disable=1 removes /proc/sys/net/ipv6 (the real boot is in the lane test below)."""
    monkeypatch.setattr(topology, "IPV6_SYSCTL_DIR", Path("/nonexistent/ipv6"))
    assert _udp_roundtrip(build_topology()) == b"hello"
    with pytest.raises(PrivilegeError, match=r"ipv6=True, but this kernel has IPv6 disabled .*ipv6\.disable=1"):
        build_topology(ipv6=True)


def test_missing_veth_driver_names_modprobe():
    exc = topology._veth_refused(OSError(errno.EOPNOTSUPP, "Operation not supported"))
    assert isinstance(exc, PrivilegeError) and "modprobe veth" in str(exc)


@pytest.mark.parametrize("given", ["2", "0x2", "1-1", [1], 1])
def test_rps_mask_as_sysfs_reads_it(build_topology, given):
    topo = build_topology(rps_cpus=given)
    assert topo.spec.rps_cpus == (1,)
    assert "rps_cpus=[1] (mask 2)" in topo.describe()
    assert int(topology.read_receiver_sysfs(topo, "queues/rx-0/rps_cpus").replace(",", ""), 16) == 2


def _udpsend_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("udpsend-tx", "udpsend-rx") and t.is_alive()]


def _interrupted_run(udp_sender, interrupt: Callable[[], None], duration: float) -> float:
    """Seconds a 20k/s run lasted when ``interrupt`` ran 0.5 s into it; it must raise KeyboardInterrupt."""
    timer = threading.Timer(0.5, interrupt)
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            udp_sender.run(duration=duration, cpu=0, rate=20000)
    finally:
        timer.cancel()
    return time.monotonic() - started


def test_ctrl_c_stops_the_loops_before_their_sockets_close(udp_sender, monkeypatch):
    closed_while_running: list[str] = []
    real_close = socket.socket.close

    def close(sock: socket.socket) -> None:
        if _udpsend_threads():
            closed_while_running.append(repr(sock))
        real_close(sock)

    monkeypatch.setattr(socket.socket, "close", close)
    assert _interrupted_run(udp_sender, lambda: os.kill(os.getpid(), signal.SIGINT), duration=60) < 10
    assert not _udpsend_threads()
    assert closed_while_running == []


def test_ctrl_c_delivered_to_another_thread_still_stops_the_run(udp_sender):
    """The kernel hands a process's SIGINT to any thread that does not block it (under xdist, once, not
    the main one); Python's handler then only sets a flag, which the main thread must not sleep through."""

    def to_the_timer_thread() -> None:
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    assert _interrupted_run(udp_sender, to_the_timer_thread, duration=5) < 2.5
    assert not _udpsend_threads()


def test_stop_byte_ends_both_c_loops(build_topology):
    topo = build_topology()
    rx = topo.receiver.run(lambda: _bound(topo.receiver.addr))
    tx = topo.sender.run(lambda: _connected(topo.receiver.addr))
    stop = bytearray(1)
    out: dict[str, dict[str, object]] = {}
    until = time.monotonic_ns() + 60 * 10**9
    threads = [
        threading.Thread(target=lambda: out.update(tx=_engine.send_loop(tx.fileno(), 60.0, 100, rate=1.0, stop=stop))),
        threading.Thread(target=lambda: out.update(rx=_engine.recv_loop(rx.fileno(), until, 100, stop=stop))),
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    stop[0] = 1
    for t in threads:
        t.join(5)
    assert time.monotonic() - started < 1  # a paced sender (1 pps) sleeps in 10 ms steps at most
    assert out["tx"]["stopped"] and out["rx"]["stopped"]
    tx.close()
    rx.close()


def _warm_up(tx: socket.socket, rx: socket.socket) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        tx.send(b"x" * 16)
        try:
            rx.recv(64)
            return
        except OSError:  # SO_RCVTIMEO 20 ms
            continue
    pytest.fail("no datagram crossed the fresh veth pair within 5 s")


def _bound(addr: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, sender.SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, (0).to_bytes(8, "little") + (20000).to_bytes(8, "little"))
    sock.setsockopt(socket.SOL_SOCKET, sender.SO_RCVBUFFORCE, 32 << 20)
    sock.bind((addr, sender.PORT))
    return sock


def _connected(addr: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect((addr, sender.PORT))
    return sock


def test_timestamp_samples_are_a_bounded_reservoir(build_topology):
    """More stamped datagrams than buffer slots: the buffer keeps a sample, the count seen and
    the exact max are still right."""
    topo = build_topology()
    rx = topo.receiver.run(lambda: _bound(topo.receiver.addr))
    tx = topo.sender.run(lambda: _connected(topo.receiver.addr))
    _warm_up(tx, rx)  # ARP resolved: a fresh pair may hold the first datagrams in the neighbour queue
    cap = 100
    buf = memoryview(bytearray(4 * cap)).cast("I")
    until = time.monotonic_ns() + int(0.3e9)
    got: dict[str, dict[str, int]] = {}
    drain = threading.Thread(target=lambda: got.update(rx=_engine.recv_loop(rx.fileno(), until, 100, buf, True)))
    drain.start()
    got["tx"] = _engine.send_loop(tx.fileno(), 0.3, 64, rate=20000.0, stamp=True)
    drain.join()
    tx.close()
    rx.close()
    out = got["rx"]
    assert out["received"] > 10 * cap, (out, got["tx"])
    assert out["seen"] > 10 * cap and out["samples"] == cap
    assert out["lost_samples"] == out["seen"] - cap
    assert max(buf) <= out["max_ns"] and min(buf) > 0


def test_timestamp_buffer_does_not_grow_with_duration(udp_sender, monkeypatch):
    """A 3600 s run allocated 14 GB before; now the buffer is SAMPLE_CAP slots (checked on a
    run whose loops are cut short through the stop byte's deadline, not one of an hour)."""
    sizes: list[int] = []
    real_recv, real_send = _engine.recv_loop, _engine.send_loop

    class Engine:
        @staticmethod
        def recv_loop(fd, until, quiet, buf, stamp, stop):  # noqa: ANN001, ANN205
            sizes.append(len(buf) * buf.itemsize)
            return real_recv(fd, time.monotonic_ns() + int(0.2e9), quiet, buf, stamp, stop)

        @staticmethod
        def send_loop(fd, duration, payload, **kw):  # noqa: ANN001, ANN205
            return real_send(fd, 0.2, payload, **kw)

    monkeypatch.setattr(sender, "_engine", Engine)
    probe = probes.TimestampProbe("test")
    monkeypatch.setattr(udp_sender, "_probe", lambda: probe)
    r = udp_sender.run(duration=3600, cpu=0)
    assert sizes == [4 * sender.SAMPLE_CAP]
    w = r.wfree["samples"]
    assert w["cap"] == sender.SAMPLE_CAP and w["kept"] <= w["seen"] and r.wfree["count"] == w["seen"] > 0


# --- output files: O_EXCL temporaries with unpredictable names ------------------------------


def test_output_write_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "out.json"
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # the old predictable temp names
        (tmp_path / f".out.json.{pid}.tmp").symlink_to(victim)
    outfile.atomic_write(target, "{}")
    assert victim.read_text() == "keep"
    assert target.read_text() == "{}" and not target.is_symlink()
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_output_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "report.html"
    target.symlink_to(victim)
    outfile.atomic_write(target, "<html>")
    assert victim.read_text() == "keep" and target.read_text() == "<html>" and not target.is_symlink()


def test_failed_output_write_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError), outfile.atomic_open(tmp_path / "x.pcap") as out:
        out.write(b"half")
        raise RuntimeError("scapy failed")
    assert list(tmp_path.iterdir()) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the kernel lane: module and boot-argument forms ---------------------------------------

LANE_IMAGE = os.environ.get("UDPSEND_LANE_IMAGE")
needs_lane = pytest.mark.skipif(
    not LANE_IMAGE or not shutil.which("qemu-system-x86_64"),
    reason="needs UDPSEND_LANE_IMAGE and qemu (ci/lane.sh sets both up)",
)

TUNNELS_INNER = """
import socket
import pytest
from pytest_udpsend.host import netns

def test_new_namespaces_hold_tunnel_devices():
    ((ns, names),) = netns.create(["probe"], on_each=lambda: [n for _, n in socket.if_nameindex()])
    netns.remove(ns)
    assert {"tunl0", "sit0", "gre0"} <= set(names), names

@pytest.mark.topology(rps_cpus="2")
def test_veth_beside_them(udp_sender):
    r = udp_sender.run(duration=0.3)
    assert r.sent > 100 and r.received > 0
"""


@pytest.mark.lane
@needs_lane
def test_lane_tunnel_modules_loaded_veth_tests_pass(pytester, monkeypatch):
    monkeypatch.setenv("UDPSEND_LANE_MODULES", "ipip sit ip_gre")
    pytester.makepyfile(TUNNELS_INNER)
    result = pytester.runpytest_subprocess(
        "--udpsend-kernel", str(LANE_IMAGE), "--udpsend-require-privileges", "--udpsend-kernel-timeout", "400"
    )
    result.assert_outcomes(passed=2)


NO_IPV6_INNER = """
import subprocess
from pathlib import Path
import pytest

def test_booted_without_ipv6():
    assert not Path("/proc/sys/net/ipv6").exists()

def test_ipv4_veth(udp_sender):
    assert udp_sender.run(duration=0.3).sent > 100

@pytest.mark.topology(ipv6=True)
def test_ipv6_veth(veth):
    pass

@pytest.fixture
def no_veth_module():
    if subprocess.run(["modprobe", "-r", "veth"]).returncode != 0:
        pytest.skip("veth is built in or busy here")
    Path("/proc/sys/kernel/modprobe").write_text("/bin/false\\n")  # the guest is thrown away after

def test_without_veth(no_veth_module, veth):
    pass
"""


@pytest.mark.lane
@needs_lane
def test_lane_ipv6_disabled_and_veth_missing_are_one_sentence_each(pytester, monkeypatch):
    monkeypatch.setenv("UDPSEND_LANE_APPEND", "ipv6.disable=1")
    pytester.makepyfile(NO_IPV6_INNER)
    result = pytester.runpytest_subprocess(
        "--udpsend-kernel", str(LANE_IMAGE), "-rs", "--udpsend-kernel-timeout", "400"
    )
    result.assert_outcomes(passed=2, skipped=2)
    out = result.stdout.str()
    assert "ipv6=True, but this kernel has IPv6 disabled" in out
    assert "modprobe veth" in out

"""Real sysctls: scope detection, restore at teardown, the crash journal, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_udpsend.errors import SysctlError
from pytest_udpsend.host.state import FileLock

from .conftest import netns_names

BUDGET = Path("/proc/sys/net/core/netdev_budget")


def test_global_set_and_get(sysctl):
    sysctl.set("net.core.netdev_budget", 17)  # from here on this test holds the host lock
    assert BUDGET.read_text().strip() == "17"
    assert sysctl.get("net.core.netdev_budget") == "17"
    assert sysctl.set("net.core.netdev_budget", 18) == "17"
    assert sysctl.in_force["net.core.netdev_budget"] == "18"


def test_global_value_restored_after_test(pytester, host_unchanged):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.sysctl({"net.core.netdev_budget": 9, "net.core.netdev_max_backlog": 2000})
        def test_a(sysctl):
            assert open("/proc/sys/net/core/netdev_budget").read().strip() == "9"
            assert sysctl.get("net.core.netdev_max_backlog") == "2000"
            raise RuntimeError("fails on purpose")
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(failed=1)


def test_per_netns_knob_goes_into_the_namespace(sysctl, veth):
    host_value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    sysctl.set("net.ipv4.ip_forward", 1, netns=veth.sender)
    assert sysctl.get("net.ipv4.ip_forward", netns=veth.sender) == "1"
    assert sysctl.get("net.ipv4.ip_forward", netns=veth.sender.name) == "1"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == host_value


@pytest.mark.sysctl({"net.ipv4.udp_rmem_min": 8192})
def test_marker_applies_per_netns_knobs_to_both_ends(veth, sysctl):
    assert sysctl.get("net.ipv4.udp_rmem_min", netns=veth.sender) == "8192"
    assert sysctl.get("net.ipv4.udp_rmem_min", netns=veth.receiver) == "8192"


def test_per_netns_knob_refused_for_the_host(sysctl):
    with pytest.raises(SysctlError, match="per-namespace.*pass netns="):
        sysctl.set("net.ipv4.ip_forward", 1)


def test_global_knob_refused_inside_a_namespace(sysctl, netns):
    with pytest.raises(SysctlError, match="global.*without netns="):
        sysctl.set("net.core.netdev_budget", 8, netns=netns("x"))


def test_wmem_max_is_global_even_though_visible_in_child(sysctl, netns):
    ns = netns("w")
    assert sysctl.get("net.core.wmem_max", netns=ns)  # visible in the child...
    with pytest.raises(SysctlError, match="global"):
        sysctl.set("net.core.wmem_max", 1 << 20, netns=ns)  # ...but not settable there


def test_unknown_sysctl(sysctl):
    with pytest.raises(SysctlError, match=r"unknown sysctl net\.core\.no_such_knob"):
        sysctl.set("net.core.no_such_knob", 1)


def test_out_of_range_value_names_knob_and_value(sysctl):
    sysctl.set("net.core.netdev_budget", 300)  # takes the host lock: nobody else changes knobs now
    before = sysctl.get("net.core.netdev_budget_usecs")
    with pytest.raises(SysctlError, match=r"netdev_budget_usecs='-5' was refused by the kernel \(EINVAL"):
        sysctl.set("net.core.netdev_budget_usecs", -5)
    assert sysctl.get("net.core.netdev_budget_usecs") == before


def test_bad_name_is_rejected(sysctl):
    with pytest.raises(SysctlError, match="not a sysctl name"):
        sysctl.set("../../etc/passwd", 1)


def test_sigterm_mid_test_cleans_up(pytester, host_unchanged):
    pytester.makepyfile(
        """
        import os, signal
        import pytest
        @pytest.mark.topology(rps_cpus=[1])
        @pytest.mark.sysctl({"net.core.netdev_budget": 13})
        def test_terminated(veth, sysctl, cpu_pressure):
            with cpu_pressure(cpus=[0], workers=1):
                os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    result = pytester.runpytest_subprocess()
    assert "KeyboardInterrupt" in result.stdout.str()


@pytest.mark.isolated  # leaves orphans on purpose until the next session: nothing may run beside it
def test_sigkilled_session_is_restored_by_the_next(pytester, host_unchanged):
    """A session killed while a global knob is changed: the next session restores it."""
    with FileLock("host"):
        original = BUDGET.read_text().strip()
    pytester.makepyfile(
        test_hang=textwrap.dedent(
            """
            import time
            import pytest
            @pytest.mark.topology(rps_cpus=[1])
            @pytest.mark.sysctl({"net.core.netdev_budget": 11})
            def test_hang(veth, sysctl, cpu_pressure):
                with cpu_pressure(cpus=[1], workers=1):
                    open("ready", "w").close()
                    time.sleep(600)
            """
        ),
        test_noop="def test_noop():\n    pass\n",
        test_next="def test_next(netns):\n    pass\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "test_hang.py"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (pytester.path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the session never got going"
        time.sleep(0.05)
    assert BUDGET.read_text().strip() == "11"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with FileLock("host"):  # keep other xdist workers off the knob while we look
        assert BUDGET.read_text().strip() == "11"  # the dead session could not restore it
        assert any(n.startswith(f"udps-{proc.pid}.") for n in netns_names())
    pytester.runpytest_subprocess("test_noop.py").assert_outcomes(passed=1)
    assert any(n.startswith(f"udps-{proc.pid}.") for n in netns_names())  # a suite not using the plugin reaps nothing
    pytester.runpytest_subprocess("test_next.py").assert_outcomes(passed=1)  # the first that does, reaps
    with FileLock("host"):
        assert BUDGET.read_text().strip() == original
    assert not any(n.startswith(f"udps-{proc.pid}.") for n in netns_names())


def test_ctrl_c_mid_test_cleans_up(pytester, host_unchanged):
    pytester.makepyfile(
        """
        import os, signal
        import pytest
        @pytest.mark.topology(rps_cpus=[1])
        @pytest.mark.sysctl({"net.core.netdev_budget": 12})
        def test_interrupted(veth, sysctl, cpu_pressure):
            signal.signal(signal.SIGINT, signal.default_int_handler)  # xdist workers pass SIGINT on ignored
            with cpu_pressure(cpus=[0], workers=1):
                os.kill(os.getpid(), signal.SIGINT)
        """
    )
    result = pytester.runpytest_subprocess()
    assert "KeyboardInterrupt" in result.stdout.str()

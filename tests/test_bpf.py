"""The exact eBPF probe.  Needs kprobes, bcc and kernel headers: on a host without them
(this project's CI host) these run through the kernel lane, see ci/lane.sh."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.bpf


@pytest.mark.udpsend(duration=1.0, cpu=0)
@pytest.mark.wfree_latency(backend="bpf")
def test_every_datagram_is_released_once_inline_on_plain_veth(udpsend_result):
    r, w = udpsend_result, udpsend_result.wfree
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    assert sum(w["contexts"].values()) == w["count"]
    assert w["contexts"]["inline"] >= 0.9 * w["count"]  # sock_wfree ran in the sender's own syscall
    assert w["p50_us"] <= w["p99_us"] <= w["max_us"] * 1.13  # bucket midpoints may exceed the exact max a little


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.udpsend(duration=1.0, cpu=0, sndbuf=16384)
@pytest.mark.wfree_latency(backend="bpf")
def test_rps_moves_sock_wfree_out_of_the_senders_syscall(udpsend_result):
    r, w = udpsend_result, udpsend_result.wfree
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    assert sum(w["contexts"].values()) == w["count"]
    outside = w["count"] - w["contexts"]["inline"]
    assert outside >= 0.1 * w["count"], w["contexts"]


@pytest.mark.udpsend(duration=0.5, cpu=0, payload=3000)
@pytest.mark.wfree_latency(backend="bpf")
def test_fragmented_datagrams_count_once(udpsend_result):
    """3000 bytes over a 1500 MTU: the head skb is charged once and every fragment gets a
    sock_wfree of its own; the probe must still count one release per datagram."""
    r, w = udpsend_result, udpsend_result.wfree
    assert r.snmp.get("IpFragCreates", 0) >= 2 * r.sent  # the datagrams really were fragmented
    assert abs(w["count"] - r.sent) <= 0.05 * r.sent, (w["count"], r.sent)
    assert abs(w["charges"] - w["count"]) <= 0.05 * w["count"]


@pytest.mark.udpsend(duration=0.3, cpu=0)
@pytest.mark.wfree_latency(backend="bpf")
def test_probe_is_detached_once_the_run_ends(udpsend_result, wfree_probe):
    """Tests that never asked for the probe must not pay for it: no fentry link, no kprobe."""
    assert udpsend_result.wfree["count"] > 0
    bpf = wfree_probe._bpf
    assert not bpf.kfunc_entry_fds and bpf.num_open_kprobes() == 0


PIDNS_INNER = '''
import os
import pytest

@pytest.mark.udpsend(duration=0.5, cpu=0)
@pytest.mark.wfree_latency(backend="bpf")
def test_counted_from_a_pid_namespace(udpsend_result):
    assert os.getpid() < 100  # really in a pid namespace of its own (unshare -p -f)
    r, w = udpsend_result, udpsend_result.wfree
    assert w["count"] >= 0.95 * r.sent > 0, (w["count"], r.sent)
'''


def test_probe_counts_a_sender_in_its_own_pid_namespace(pytester):
    """A container's pid namespace (GitLab's docker executor): bpf_get_current_pid_tgid() gives the
    initial namespace's tgid, os.getpid() the container's; the probe must still count."""
    import os
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux)")
    pytester.makepyfile(PIDNS_INNER)
    # a session of its own: not the lane's (whose report file and selection it would otherwise use)
    env = {k: v for k, v in os.environ.items() if k not in ("UDPSEND_LANE_REPORT", "UDPSEND_LANE_SELECTION")}
    argv = ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
            "--udpsend-backend", "bpf", "--udpsend-require-privileges", str(pytester.path)]  # fmt: skip
    out = subprocess.run(argv, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-1000:]

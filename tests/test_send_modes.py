"""Send modes (sendto, sendmmsg, GSO, flows, threads) and the user's own program as the sender.

Validation and user-visible errors first (nothing measured), then real runs on real
namespaces with wide bounds (20/20 on a loaded 2-core VM)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.sender import _sockaddr
from tests.own_sender import counts, own_sender

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"mode": "writev"}, "mode='writev': accepted: 'send', 'sendto', 'sendmmsg', 'gso'"),
        ({"batch": 8}, "batch=8 applies to mode='sendmmsg' only"),
        ({"mode": "sendmmsg", "batch": 0}, "batch=0: must be an integer from 1 to 1024"),
        ({"mode": "gso"}, "mode='gso' needs gso_size="),
        ({"gso_size": 1000}, "gso_size=1000 applies to mode='gso' only"),
        ({"mode": "gso", "gso_size": 2000, "payload": 1400}, "gso_size=2000: must be an integer from 1 to 1400"),
        ({"mode": "gso", "gso_size": 500, "payload": 65000}, "130 segments per send; the kernel takes at most 64"),
        ({"flows": 0}, "flows=0: must be an integer from 1 to 256"),
        ({"threads": 2.5}, "threads=2.5: must be an integer"),
        ({"cpu": [0]}, "a list of CPUs needs threads > 1"),
        ({"threads": 2, "cpu": []}, "must be a CPU number or a non-empty list"),
    ],
)
def test_bad_send_pattern_is_one_sentence(kwargs, says):
    with pytest.raises(ConfigError) as info:
        make_params(**kwargs)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_send_pattern_defaults_and_cpu_lists():
    p = make_params()
    assert (p.mode, p.batch, p.gso_size, p.flows, p.threads) == ("send", 32, None, 1, 1)
    assert make_params(threads=3, cpu=[0, 1]).thread_cpus() == [0, 1, 0]
    assert make_params(mode="gso", gso_size=1400, payload=64000).segments_per_send() == 46
    assert make_params(**make_params(mode="sendmmsg", batch=8).as_dict()).batch == 8  # round-trips (udpsend_result)


def test_sockaddr_packing_matches_the_kernel_layout():
    a = _sockaddr(socket.AF_INET, "198.18.0.2", 40000)
    assert len(a) == 16 and a[2:4] == (40000).to_bytes(2, "big") and a[4:8] == bytes([198, 18, 0, 2])
    assert len(_sockaddr(socket.AF_INET6, "fd75::2", 40000)) == 28


def test_bad_mode_in_marker_is_a_collection_error(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.udpsend(mode="sendmmsg", batch=5000)
        def test_m(udpsend_result):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*@pytest.mark.udpsend: batch=5000: must be an integer from 1 to 1024*"])
    assert "Traceback" not in result.stdout.str()


def test_sender_process_bad_input_is_one_sentence(pytester):
    pytester.makepyfile(
        """
        def test_shell_string(sender_process):
            sender_process.run("echo hi; rm -rf /")

        def test_missing(sender_process):
            sender_process.run(["/nonexistent/udp-sender", "-x"])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--udpsend-require-privileges")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*argv='echo hi; rm -rf /': must be a non-empty list of strings*never a shell string*",
            "*the sender command '/nonexistent/udp-sender' was not found*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


# ---- measuring: real namespaces ----


def _totals_hold(r) -> None:
    assert r.attempts == r.sent + r.eagain + r.enobufs + r.other_errors, r.summary()
    assert all(line.endswith(": ok") for line in r.checks), r.checks
    assert sum(f["sent"] for f in r.flows) == r.sent and sum(f["attempts"] for f in r.flows) == r.attempts
    assert sum(f["eagain"] for f in r.flows) == r.eagain


@pytest.mark.parametrize("mode", ["sendto", "sendmmsg"])
def test_mode_counts_agree_with_the_kernel(udp_sender, mode):
    r = udp_sender.run(duration=0.5, cpu=0, mode=mode)
    _totals_hold(r)
    assert r.sent > 5_000
    assert r.snmp["UdpOutDatagrams"] == r.sent
    if mode == "sendmmsg":
        assert r.calls <= r.attempts // 2  # batches of 32: far fewer calls than messages
    else:
        assert r.calls == r.attempts


@pytest.mark.topology(rps_cpus=[1])
def test_sendmmsg_partial_batches_count_every_message(udp_sender):
    """A small buffer and RPS: batches stop part-way; each stop is one EAGAIN attempt."""
    r = udp_sender.run(duration=0.5, cpu=0, receiver_cpu=1, mode="sendmmsg", batch=32, sndbuf=4096)
    _totals_hold(r)
    assert r.eagain > 0 and r.stops > 0
    assert r.eagain <= r.snmp["UdpSndbufErrors"]
    assert r.attempts < r.calls * 32  # stopped batches tried fewer than 32 messages


def test_gso_counts_super_datagrams_and_segments(udp_sender):
    if shutil.which("ethtool"):  # UDP GSO needs TX checksum offload (else EIO): veth has it
        feats = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                udp_sender.topology.sender.name,
                "ethtool",
                "-k",
                udp_sender.topology.sender.ifname,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "tx-checksumming: on" in feats
    r = udp_sender.run(duration=0.5, cpu=0, mode="gso", payload=14000, gso_size=1400)
    _totals_hold(r)
    assert r.sent > 500
    assert r.segments == r.sent * 10
    assert r.snmp["UdpOutDatagrams"] == r.sent  # the kernel counts a super-datagram once
    assert r.received > r.sent  # the receiver sees wire segments
    assert r.received + r.rcvbuf_errors <= r.segments


def test_flows_and_threads_keep_per_socket_counts(udp_sender):
    r = udp_sender.run(duration=0.5, mode="send", flows=3, threads=2, cpu=[0, 1])
    _totals_hold(r)
    assert len(r.flows) == 6 and len({f["sport"] for f in r.flows}) == 6
    assert [f["cpu"] for f in r.flows] == [0, 0, 0, 1, 1, 1]
    assert all(f["sent"] > 500 for f in r.flows)
    assert r.snmp["UdpOutDatagrams"] == r.sent


@pytest.fixture
def c_sender(tmp_path: Path) -> Path:
    return own_sender(tmp_path)


@pytest.mark.topology(rps_cpus=[1])
def test_own_program_eagain_measured_from_outside(sender_process, c_sender):
    r = sender_process.run([str(c_sender), "0.5"], cpu=0)
    own = counts(r.process["stdout"])
    assert r.process["exited"] and r.process["returncode"] == 0
    assert r.eagain == own["eagain"] and r.sent == own["sent"]
    assert r.sent > 5_000 and r.received + r.rcvbuf_errors <= r.sent
    assert r.wmem["samples"] > 10


def test_own_program_sock_wfree_is_not_measured_but_the_bpf_backend(sender_process, wfree_probe, c_sender):
    """Only the bpf probe follows another program's datagrams: with any other backend the result says so (count
    None, as every backend that measured nothing), so a bound on it fails as "not measured", not on a 0."""
    if wfree_probe.backend == "bpf":
        pytest.skip("the bpf backend measures the program")
    r = sender_process.run([str(c_sender), "0.3"], cpu=0)
    assert r.sent > 0 and r.wfree["count"] is None and r.wfree["backend"] == wfree_probe.backend
    assert "--udpsend-backend bpf" in r.wfree["unavailable"]


def test_own_program_killed_after_duration_and_failure_is_one_sentence(pytester):
    pytester.makepyfile(
        """
        import sys
        def test_sleeper(sender_process):
            r = sender_process.run(["sleep", "30.123"], duration=0.3)
            assert not r.process["exited"] and r.duration_s < 5

        def test_fails(sender_process):
            sender_process.run([sys.executable, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(3)"])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--udpsend-require-privileges")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*exited with code 3 (last stderr line: 'oops')*", "*oops*"])
    assert "Traceback" not in result.stdout.str()
    assert subprocess.run(["pgrep", "-f", "sleep 30.123"], capture_output=True).returncode == 1


def test_interrupted_program_is_killed(pytester):
    """Ctrl-C during sender_process.run(): the program's process group dies with the run."""
    pytester.makepyfile("def test_sleeps(sender_process):\n    sender_process.run(['sleep', '30.456'])\n")
    # SIGINT may be ignored by whoever started this suite; the child resets it before exec'ing pytest
    boot = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, sys.argv[1:])"
    )
    argv = [
        sys.executable,
        "-c",
        boot,
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--udpsend-require-privileges",
    ]
    proc = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", "sleep 30.456"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "the program never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert "KeyboardInterrupt" in out
    assert subprocess.run(["pgrep", "-f", "sleep 30.456"], capture_output=True).returncode == 1

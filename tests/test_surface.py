"""What users see, through pytester: markers, options, collection errors, skips."""

from __future__ import annotations

import shutil
import sys

import pytest


def test_markers_are_registered(pytester):
    out = pytester.runpytest("--markers").stdout.str()
    for name in ("topology", "sysctl", "cpu_pressure", "udpsend", "eagain_rate", "time_squeeze", "wfree_latency"):
        assert f"@pytest.mark.{name}(" in out


def test_options_in_help(pytester):
    out = pytester.runpytest("--help").stdout.str()
    for opt in (
        "--udpsend-json",
        "--udpsend-baseline",
        "--udpsend-repeat",
        "--udpsend-backend",
        "--udpsend-kernel",
        "--udpsend-html",
        "--udpsend-pcap",
        "--udpsend-require-privileges",
    ):
        assert opt in out


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (
            "topology(rps_cpu=[1])",
            "@pytest.mark.topology: got an unexpected keyword argument 'rps_cpu'; accepted arguments: rps_cpus, qdisc",
        ),
        ("topology(qdisc='wred limit 10')", "unknown or missing qdisc kind; supported: bfifo, fq_codel, htb"),
        ("topology(qdisc='tbf rate 10mbit burst 10kb')", "tbf needs latency or limit"),
        ("topology(qdisc='tbf rate fast burst 10kb latency 5ms')", "rate: 'fast' is not a rate"),
        ("topology(threaded_napi=True)", "threaded_napi=True needs gro=True"),
        ("topology(rps_cpus=[99])", "rps_cpus=[99]: CPU(s) [99] are not available"),
        ("sysctl({'net.core.no_such': 1})", "unknown sysctl net.core.no_such"),
        ("sysctl(netdev_budget=8)", "@pytest.mark.sysctl: "),
        ("udpsend(duraton=1)", "@pytest.mark.udpsend: unknown argument 'duraton'; accepted: duration, payload"),
        ("udpsend(payload='big')", "payload='big': must be an integer"),
        ("eagain_rate(maximum=0.1)", "@pytest.mark.eagain_rate: got an unexpected keyword argument 'maximum'"),
        ("eagain_rate(max=0.1, min=0.5)", "min=0.5 is above max=0.1"),
        ("wfree_latency(p99_us=10, backend='ebpf')", "backend='ebpf': accepted: any, bpf, tracepoint, timestamp"),
        ("cpu_pressure(cpus=[1], workers=0)", "workers=0: must be an integer from 1 to 64"),
    ],
)
def test_bad_marker_argument_is_a_collection_error(pytester, marker, expected):
    pytester.makepyfile(f"import pytest\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "ERROR collecting" in out and expected in out
    assert "Traceback" not in out


def test_own_errors_show_one_sentence_not_a_traceback(pytester):
    pytester.makepyfile(
        """
        def test_x(sysctl):
            sysctl.set("net.core.no_such_knob", 1)
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "SysctlError: unknown sysctl net.core.no_such_knob" in out
    assert "sysctl.py:" not in out  # no frames from our code


SETPRIV = shutil.which("setpriv")
DROP_CAPS = [
    SETPRIV,
    "--bounding-set",
    "-net_admin,-sys_admin",
    sys.executable,
    "-m",
    "pytest",
    "-p",
    "no:cacheprovider",
]


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux) to drop capabilities")
def test_skipped_without_privileges(pytester):
    pytester.makepyfile("def test_x(veth):\n    pass\n")
    result = pytester.run(*DROP_CAPS, "-rs")
    result.assert_outcomes(skipped=1)
    assert "needs CAP_NET_ADMIN and CAP_SYS_ADMIN" in result.stdout.str()


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux) to drop capabilities")
def test_require_privileges_turns_skip_into_failure(pytester):
    pytester.makepyfile("def test_x(veth):\n    pass\n")
    result = pytester.run(*DROP_CAPS, "--udpsend-require-privileges")
    result.assert_outcomes(errors=1)
    assert "run pytest as root" in result.stdout.str()


def test_xdist_workers_never_collide(pytester, host_unchanged):
    pytester.makepyfile(
        """
        import json, os, pytest
        @pytest.mark.parametrize("i", range(16))
        def test_pair(veth, netns, i):
            extra = netns("x")
            with open(f"seen-{os.getpid()}-{i}.json", "w") as fh:
                json.dump([veth.sender.name, veth.receiver.name, extra.name, veth.sender.addr, veth.receiver.addr], fh)
        """
    )
    pytester.runpytest_subprocess("-n", "4").assert_outcomes(passed=16)
    import json

    seen = [json.loads(p.read_text()) for p in pytester.path.glob("seen-*.json")]
    names = [n for row in seen for n in row[:3]]
    addrs = [a for row in seen for a in row[3:]]
    assert len(seen) == 16 and len(set(names)) == len(names) and len(set(addrs)) == len(addrs)

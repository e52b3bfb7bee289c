"""What a user sees from NIC links on a host without a NIC pair (no lane, no --udpsend-nic-pair)."""

from __future__ import annotations

import pytest

NIC_TEST = """
import pytest

@pytest.mark.topology(link="vmxnet3", irq_cpus=[1])
def test_nic(udp_sender):
    pass
"""


def test_a_nic_link_outside_the_lane_skips_saying_how_to_run_it(pytester):
    pytester.makepyfile(NIC_TEST)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*link='vmxnet3' needs a pair of emulated vmxnet3 NICs: run it in the kernel lane "
            "with --udpsend-kernel IMAGE*"
        ]
    )


def test_a_nic_link_fails_under_require_privileges(pytester):
    pytester.makepyfile(NIC_TEST)
    result = pytester.runpytest_subprocess("--udpsend-require-privileges")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--udpsend-kernel IMAGE*"])
    result.stdout.no_fnmatch_line("*Traceback*")


@pytest.mark.parametrize(
    ("marker", "sentence"),
    [
        ("link='foo'", "link='foo': must be one of 'veth', 'nic', 'vmxnet3', 'virtio', 'e1000e'"),
        ("irq_cpus=[1]", "irq_cpus= needs a NIC link"),
        ("link='virtio', gro=True", "gro, threaded_napi and napi_cpus shape a veth; on link='virtio'"),
    ],
)
def test_bad_nic_marker_arguments_are_one_sentence_at_collection(pytester, marker, sentence):
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.topology({marker})\ndef test_x(udp_sender):\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert sentence in result.stdout.str()


@pytest.mark.parametrize("pair", ["ens1f0", "ens1f0,ens1f0", ",x"])
def test_a_malformed_nic_pair_is_a_usage_error(pytester, pair):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(f"--udpsend-nic-pair={pair}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "give two different port names, e.g. ens1f0,ens1f1" in result.stderr.str()


def test_a_virtual_port_is_refused_in_one_sentence(pytester):
    """A veth dies with a killed session's namespace: it can never be given back."""
    import subprocess

    subprocess.run(["ip", "link", "add", "udpsnic0", "type", "veth", "peer", "name", "udpsnic1"], check=True)
    try:
        pytester.makepyfile("import pytest\n\n@pytest.mark.topology(link='nic')\ndef test_x(udp_sender):\n    pass\n")
        result = pytester.runpytest_subprocess("--udpsend-nic-pair=udpsnic0,udpsnic1")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*udpsnic0 is a virtual device*name two physical ports or VFs*"])
        result.stdout.no_fnmatch_line("*Traceback*")
    finally:
        subprocess.run(["ip", "link", "del", "udpsnic0"], check=False)

"""The kernel lane's own behaviour that needs no working guest kernel.  Needs qemu and
virtme-ng (installed by ci/prepare-kernel.sh); ci/lane.sh runs these."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from pytest_udpsend.lane import vm

pytestmark = pytest.mark.lane


def test_kernel_release_from_the_bzimage_header(tmp_path):
    image = tmp_path / "kernel"
    header = bytearray(0x400)
    header[0x202:0x206] = b"HdrS"
    header[0x20E:0x210] = (0x100).to_bytes(2, "little")
    header[0x300 : 0x300 + 30] = b"6.1.0-56-amd64 (debian@x) #1\0"
    image.write_bytes(bytes(header))
    assert vm.kernel_release(image) == "6.1.0-56-amd64"
    assert vm.kernel_release(Path("/nonexistent/vmlinuz-6.12.9")) == "6.12.9"


def test_guest_args_keep_the_hosts_own_and_override_in_option_form():
    """The host's arguments unchanged (so the guest picks the same rootdir and inifile),
    then overrides in --opt=value form, which pytest never reads as a path."""
    args = ["--udpsend-kernel", "/k/boot/vmlinuz", "tests/test_bpf.py", "-k", "plain", "--junitxml", "out.xml"]
    out = vm.guest_args(args, Path("/x"), ["cacheprovider", "junitxml"])
    assert out == [
        *args,
        "--udpsend-json=/x/results.json",
        "--udpsend-html=",
        "--udpsend-pcap=",
        "--override-ini=cache_dir=/x/cache",
        "--junitxml=",
    ]
    assert vm.guest_args(["-p", "no:cacheprovider"], Path("/x"), []) == [
        "-p",
        "no:cacheprovider",
        "--udpsend-json=/x/results.json",
        "--udpsend-html=",
        "--udpsend-pcap=",
    ]


def test_a_file_that_is_no_kernel_is_a_usage_error(pytester, tmp_path):
    bogus = tmp_path / "vmlinuz-0.0.0-bogus"
    bogus.write_bytes(b"\0" * 4096)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--udpsend-kernel", str(bogus))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "not an x86 Linux kernel image" in result.stderr.str()


LANE_IMAGE = os.environ.get("UDPSEND_LANE_IMAGE")


@pytest.mark.skipif(
    not LANE_IMAGE or not shutil.which("qemu-system-x86_64"),
    reason="needs UDPSEND_LANE_IMAGE and qemu (ci/lane.sh sets both up)",
)
def test_a_guest_that_does_not_finish_fails_with_the_console_tail(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--udpsend-kernel", str(LANE_IMAGE), "--udpsend-kernel-timeout", "25")
    assert time.monotonic() - started < 90  # the deadline, not the guest, ends it
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "never reported this test: it did not finish within 25 s" in out
    assert "console tail" in out and re.search(r"\[\s*\d+\.\d+\] ", out)  # the guest kernel's own messages


def test_kernel_lane_refuses_xdist(pytester, tmp_path):
    image = tmp_path / "vmlinuz-1"
    image.write_bytes(b"\0")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--udpsend-kernel", str(image), "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "drop -n" in result.stderr.str()


def test_python_in_guest_is_this_one():
    assert Path(sys.executable).exists()

"""Several kernels in one run and the gate between them (--udpsend-kernel repeated,
--udpsend-gate-against): what users see.  The usage errors need no VM; the gate itself is
shown on the host (``host`` twice) and, marked ``lane``, against a kernel image."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

RELEASE = os.uname().release
TINY = """
import pytest

def test_plain():
    pass

@pytest.mark.udpsend(duration=0.2, cpu=0)
def test_measure(udpsend_result):
    assert udpsend_result.sent > 0
"""


def _usage_error(pytester: pytest.Pytester, *args: str) -> str:
    pytester.makepyfile(test_x=TINY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    err = result.stderr.str()
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    return err


def test_a_gate_against_a_kernel_not_given_is_one_sentence(pytester):
    err = _usage_error(
        pytester, "--udpsend-kernel", "host", "--udpsend-kernel", "host", "--udpsend-gate-against", "5.10"
    )
    assert f"--udpsend-gate-against 5.10: names none of the kernels given (host ({RELEASE}), host ({RELEASE}))" in err


def test_a_gate_needs_two_kernels(pytester):
    for args in (["--udpsend-gate-against", "host"], ["--udpsend-kernel", "host", "--udpsend-gate-against", "host"]):
        assert "give --udpsend-kernel twice or more" in _usage_error(pytester, *args)


def test_a_release_names_a_kernel_whole_or_by_a_prefix_ending_at_a_separator():
    from pytest_udpsend.frontend import kernel_gate
    from pytest_udpsend.frontend.kernel_lane import Lane

    old, new = Lane("6.1.0-56-amd64", 1.0), Lane("6.12.95+deb12-amd64", 1.0)
    assert kernel_gate.reference("6.1", [old, new]) is old and kernel_gate.reference("6.12", [old, new]) is new
    assert kernel_gate.reference("6.12.95+deb12-amd64", [old, new]) is new
    with pytest.raises(pytest.UsageError, match="names more than one of the kernels given"):
        kernel_gate.reference("6", [old, new])
    with pytest.raises(pytest.UsageError, match="names none of the kernels given"):
        kernel_gate.reference("6.1.0-5", [old, new])


def test_bare_host_against_a_vm_is_refused_unless_allowed(pytester):
    err = _usage_error(
        pytester,
        "--udpsend-kernel",
        "host",
        "--udpsend-kernel",
        "/nonexistent/vmlinuz",
        "--udpsend-gate-against",
        "host",
    )
    assert "run on the bare host and in a VM" in err and "--udpsend-allow-mixed" in err
    # allowed, the image itself is checked next (before anything runs)
    err = _usage_error(
        pytester,
        "--udpsend-kernel",
        "host",
        "--udpsend-kernel",
        "/nonexistent/vmlinuz",
        "--udpsend-gate-against",
        "host",
        "--udpsend-allow-mixed",
    )
    assert "--udpsend-kernel /nonexistent/vmlinuz: no such kernel image" in err


def test_several_kernels_refuse_xdist(pytester):
    assert "drop -n" in _usage_error(pytester, "--udpsend-kernel", "host", "--udpsend-kernel", "host", "-n", "2")


def test_too_few_samples_are_refused_before_any_kernel_runs(pytester):
    pytester.makepyfile(test_x=TINY.replace("pass", "open('ran', 'w').close()"))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--udpsend-kernel",
        "host",
        "--udpsend-kernel",
        "host",
        "--udpsend-gate-against",
        "host",
        "--udpsend-repeat",
        "2",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert re.search(
        r"--udpsend-gate-against: 2 baseline and 2 new samples per test cannot reach .* --udpsend-repeat \d+ or more",
        result.stderr.str(),
    )
    assert not (pytester.path / "ran").exists()


# The second run of the kernel sends at a tenth of the rate: a regression the gate must flag, every time.
CHANGED = """
import os
import pytest

# imported by this session, then by each kernel's run, in order: the third import is the second kernel
with open("imports", "a") as fh:
    fh.write("x")
SECOND = os.path.getsize("imports") >= 3

def test_plain():
    pass

@pytest.mark.udpsend(duration=0.2, cpu=0, rate=2000 if SECOND else 20000)
def test_rate(udpsend_result):
    assert udpsend_result.sent > 0
"""


def test_the_same_kernel_twice_reports_each_and_the_gate_fails_the_regressed_one(pytester):
    pytester.makepyfile(test_x=CHANGED)
    out, page = pytester.path / "out.json", pytester.path / "r.html"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-rA",
        "--udpsend-require-privileges",
        "--udpsend-kernel",
        "host",
        "--udpsend-kernel",
        "host",
        "--udpsend-gate-against",
        RELEASE,
        "--udpsend-repeat",
        "6",
        "--udpsend-json",
        str(out),
    )
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    for line in (
        f"PASSED test_x.py::test_plain@{RELEASE}",
        f"PASSED test_x.py::test_rate@{RELEASE}",
        f"PASSED test_x.py::test_plain@{RELEASE}#2",
        f"FAILED test_x.py::test_rate@{RELEASE}#2",
    ):
        assert line in text
    assert f"udpsend kernel gate (against {RELEASE}): regression" in text
    assert re.search(r"test_x.py::test_rate\s+pps .* -9\d% worse .* regression", text)
    assert f"udpsend kernel gate: each kernel against {RELEASE}" in text and "1 of 1 compared test(s) regressed" in text

    doc = json.loads(out.read_text())
    first, second = doc["runs"]
    assert first["environment"]["kernel"] == second["environment"]["kernel"] == RELEASE
    assert list(first["tests"]) == [f"test_x.py::test_rate@{RELEASE}"] and "gate" not in first
    verdicts = {r["metric"]: r["verdict"] for r in second["gate"]["rows"]}
    assert (
        verdicts["pps"] == "regression" and second["tests"][f"test_x.py::test_rate@{RELEASE}#2"]["outcome"] == "failed"
    )
    assert second["gate"]["settings"]["one_command"] and "noise floor for one command" in text
    report = subprocess.run(
        [sys.executable, "-m", "pytest_udpsend.cli", "report", str(out), "-o", str(page)],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert f"--udpsend-kernel host ({RELEASE}#2)" in page.read_text()  # one section per kernel's run


LANE_IMAGE = os.environ.get("UDPSEND_LANE_IMAGE", "")


@pytest.mark.lane
@pytest.mark.skipif(
    not LANE_IMAGE or not shutil.which("qemu-system-x86_64"),
    reason="needs UDPSEND_LANE_IMAGE and qemu (ci/lane.sh sets both up)",
)
def test_this_host_against_a_kernel_image_in_one_command(pytester):
    """host, then the image in a VM (one boot): both ids reported, the gate's verdict on the image's."""
    from pytest_udpsend.lane import vm

    guest = vm.kernel_release(vm.Path(LANE_IMAGE))
    pytester.makepyfile(test_x=TINY)
    out = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-rA",
        "--udpsend-require-privileges",
        "--udpsend-kernel",
        "host",
        f"--udpsend-kernel={LANE_IMAGE}",
        "--udpsend-gate-against",
        "host",
        "--udpsend-allow-mixed",
        "--udpsend-backend",
        "timestamp",
        "--udpsend-repeat",
        "5",
        "--udpsend-json",
        str(out),
        "--udpsend-kernel-timeout",
        "900",
    )
    text = result.stdout.str()
    for nodeid in (
        f"test_x.py::test_plain@{RELEASE}",
        f"test_x.py::test_measure@{RELEASE}",
        f"test_x.py::test_plain@{guest}",
        f"test_x.py::test_measure@{guest}",
    ):
        assert re.search(rf"^(PASSED|FAILED) {re.escape(nodeid)}( - .*)?$", text, re.M), text[-3000:]
    assert f"udpsend kernel gate: each kernel against {RELEASE}" in text
    assert re.search(rf"{re.escape(guest)}: [01] of 1 compared test\(s\) regressed", text)
    doc = json.loads(out.read_text())
    assert [r["environment"]["kernel"] for r in doc["runs"]] == [RELEASE, guest]
    assert doc["runs"][1]["gate"]["rows"]
    page = pytester.path / "r.html"
    subprocess.run([sys.executable, "-m", "pytest_udpsend.cli", "report", str(out), "-o", str(page)], check=True)
    assert "Upgrade view: tests x kernels" in page.read_text()
    if "tcg" in doc["runs"][1]["environment"]["lane"]["accel"]:  # emulated: a fraction of the host's packet rate
        assert f"FAILED test_x.py::test_measure@{guest}" in text
        assert {r["metric"]: r["verdict"] for r in doc["runs"][1]["gate"]["rows"]}["pps"] == "regression"

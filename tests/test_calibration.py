"""udpsend calibrate: the statistics (pure) and what a user sees (the command, the end-of-run table)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pytest_udpsend.cli import main
from pytest_udpsend.results import calibration


def test_tolerance_factor_matches_the_published_table():
    # NIST/SEMATECH e-Handbook 7.2.6.3 (one-sided, 95 % confidence): n=10, 99 % content -> 3.981
    assert calibration.tolerance_factor(10, 0.99, 0.95) == pytest.approx(3.981, abs=0.002)
    assert calibration.tolerance_factor(50, 0.999, 0.95) == pytest.approx(3.766, abs=0.002)


def _doc(values: list[float], kernel: str = "6.18.0") -> list[dict]:
    return [
        {
            "environment": {"kernel": kernel},
            "tests": {
                "t.py::test_a": {
                    "outcome": "passed",
                    "samples": [{"eagain_rate": v, "pps": 1e5, "kernel": kernel, "params": {"sndbuf": 4096}}],
                }
            },
        }
        for v in values
    ]


def test_a_lognormal_rate_gets_a_bound_outside_every_run_seen():
    rng = random.Random(7)
    values = [0.02 * rng.lognormvariate(0, 0.3) for _ in range(50)]
    (fit,) = [f for f in calibration.fit_all(_doc(values), 0.999, 0.95) if f.metric == "eagain_rate"]
    assert fit.upper is not None and fit.lower is not None
    assert fit.upper > max(values) and fit.lower < min(values)
    assert "99.9% of runs within" in fit.advice


def test_a_heavy_tail_is_not_given_a_bound():
    values = [0.0003] * 25 + [0.4] * 25  # two humps: what RPS on 6.5+ gives run to run
    (fit,) = [f for f in calibration.fit_all(_doc(values), 0.999, 0.95) if f.metric == "eagain_rate"]
    assert "not normal" in fit.advice and "mechanism" in fit.advice


def test_a_constant_is_reported_with_the_rule_of_three():
    (fit,) = [f for f in calibration.fit_all(_doc([0.0] * 50), 0.999, 0.95) if f.metric == "eagain_rate"]
    assert fit.upper is None and "in all 50 runs" in fit.advice and "6.0%" in fit.advice


def test_samples_of_one_test_are_named_by_what_sets_them_apart():
    samples = [{"params": {"sndbuf": 1, "force_sndbuf": False}}, {"params": {"sndbuf": 1, "force_sndbuf": True}}]
    assert calibration.sample_labels(samples) == ["force_sndbuf=False", "force_sndbuf=True"]
    # a capture written under each run's tmp_path keeps one name over the runs (it was one row per run)
    samples = [
        {"params": {"replay": "/tmp/pytest-of-root/pytest-7/t0/even.pcap"}},
        {"params": {"replay": "shape:telemetry"}},
    ]
    assert calibration.sample_labels(samples) == ["replay=even.pcap", "replay=shape:telemetry"]


def test_calibrate_from_files_prints_per_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for i, doc in enumerate(_doc([0.01, 0.02] * 5, kernel="6.1.0")):
        (tmp_path / f"r{i}.json").write_text(json.dumps(doc))
    out_json = tmp_path / "cal.json"
    assert main(["calibrate", "--from", str(tmp_path / "r*.json"), "-o", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "kernel 6.1.0" in out and "test_a" in out and "eagain_rate" in out
    assert json.loads(out_json.read_text())["fits"][0]["kernel"] == "6.1.0"


@pytest.mark.parametrize(
    "argv", [["calibrate", "-n", "0", "--", "x"], ["calibrate", "--content", "1.5", "--", "x"], ["calibrate"]]
)
def test_calibrate_refuses_bad_arguments_in_one_sentence(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("udpsend calibrate: ") and "\n" not in err and "Traceback" not in err


def test_the_run_ends_with_what_each_test_measured(pytester: pytest.Pytester):
    """A measuring run prints a table: EAGAIN, pps, sock_wfree, and the first finding."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.topology(qdisc="tbf rate 20mbit burst 32kb latency 50ms")
        @pytest.mark.udpsend(duration=0.2, cpu=0, sndbuf=4096)
        def test_shaped(udpsend_result):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--udpsend-require-privileges")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*udpsend: what each test measured*",
            "test * EAGAIN * pps * sock_wfree",
            "test_shaped * *% * not measured",
            "*the send buffer was full*",
        ]
    )


def test_a_stopped_calibrate_lets_its_pytest_run_clean_up(tmp_path: Path) -> None:
    """SIGTERM to udpsend calibrate reaches the pytest it runs as SIGTERM, not SIGKILL, so that pytest
    undoes its changes and stops a kernel-lane guest (a SIGKILLed lane leaves its VM running)."""
    import signal
    import subprocess
    import sys
    import time

    pidfile, cleaned = tmp_path / "pid", tmp_path / "cleaned"
    (tmp_path / "test_slow.py").write_text(
        "import os, signal, time\n"
        "def _stop(*_):\n    raise KeyboardInterrupt\n"
        "def test_slow():\n"
        "    signal.signal(signal.SIGTERM, _stop)  # as the plugin does once a test of ours runs\n"
        f"    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        f"    try:\n        time.sleep(120)\n    finally:\n        open({str(cleaned)!r}, 'w').write('yes')\n"
    )
    cmd = [sys.executable, "-m", "pytest_udpsend.cli", "calibrate", "-n", "1", "--", str(tmp_path / "test_slow.py")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert cleaned.exists(), f"pytest was killed without cleaning up: {err.decode()[-300:]}"
    assert b"Traceback" not in err

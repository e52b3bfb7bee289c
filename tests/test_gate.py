"""What users see of the baseline gate: the gate, `udpsend compare` and the report agree; mixed and
under-sampled comparisons are refused in one sentence."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SHAPED = """
import pytest
@pytest.mark.topology(qdisc="tbf rate 100mbit burst 32kb latency 20ms")
@pytest.mark.udpsend(duration=0.2)
def test_shaped(udpsend_result):
    pass
"""


def _baseline(pytester: pytest.Pytester, path: Path, *extra: str) -> dict:
    pytester.makepyfile(test_gate=SHAPED)
    pytester.runpytest_subprocess("--udpsend-json", str(path), "--udpsend-repeat", "5", *extra).assert_outcomes(
        passed=1
    )
    return dict(json.loads(path.read_text()))


def _rows(text: str) -> dict[tuple[str, str], str]:
    """(test name, metric) -> verdict, from a comparison table."""
    found = {}
    for line in html.unescape(text).replace("</pre>", "\n").splitlines():
        m = re.match(
            r"\s*(\S*test_shaped)\s+(\S+)\s.*\s(regression|ok|improved|too few samples|not measured)\s*$", line
        )
        if m:
            found[(m.group(1).split("::")[-1], m.group(2))] = m.group(3)
    return found


def test_gate_compare_and_report_give_the_same_verdicts(pytester):
    """One saved baseline whose EAGAIN rate is made tiny: the gate fails the test under a strict ini, and
    `udpsend compare` (recorded settings, or the same flags) and the HTML report show the same verdicts."""
    base = pytester.path / "base.json"
    saved = _baseline(pytester, base)
    (entry,) = saved["tests"].values()
    for rate, sample in zip((0.01, 0.02, 0.015, 0.012, 0.018), entry["samples"]):
        sample["eagain_rate"] = rate
    base.write_text(json.dumps(saved))
    pytester.makefile(".ini", pytest="[pytest]\nudpsend_tolerance = 0.5\nudpsend_compare_metrics = eagain_rate pps\n")
    new, page = pytester.path / "new.json", pytester.path / "r.html"
    result = pytester.runpytest_subprocess(
        "--udpsend-baseline",
        str(base),
        "--udpsend-repeat",
        "5",
        "--udpsend-json",
        str(new),
        "--udpsend-html",
        str(page),
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "udpsend baseline regression" in out and "alpha 0.05 over 2 comparisons" in out
    gate = {("test_shaped", r["metric"]): r["verdict"] for r in json.loads(new.read_text())["gate"]["rows"]}
    assert gate[("test_shaped", "eagain_rate")] == "regression" and set(m for _, m in gate) == {"eagain_rate", "pps"}

    cli = [sys.executable, "-m", "pytest_udpsend.cli"]
    recorded = subprocess.run([*cli, "compare", str(base), str(new)], capture_output=True, text=True)
    flags = subprocess.run(
        [*cli, "compare", str(base), str(new), "--tolerance", "0.5", "--metrics", "eagain_rate", "pps"],
        capture_output=True,
        text=True,
    )
    assert recorded.returncode == flags.returncode == 1, recorded.stderr
    assert _rows(recorded.stdout) == _rows(flags.stdout) == gate
    assert _rows(page.read_text()) == gate and "the verdicts the gate gave" in page.read_text()
    report = pytester.path / "again.html"
    done = subprocess.run(
        [*cli, "report", str(new), "--baseline", str(base), "-o", str(report)], capture_output=True, text=True
    )
    assert done.returncode == 0 and _rows(report.read_text()) == gate


def test_a_mixed_comparison_is_refused_unless_allowed(pytester):
    base = pytester.path / "base.json"
    saved = _baseline(pytester, base)
    saved["environment"]["backend"] = "bpf" if saved["environment"]["backend"] != "bpf" else "timestamp"
    saved["environment"]["cpu_model"] = "QEMU TCG CPU version 2.5+"
    base.write_text(json.dumps(saved))
    refused = pytester.runpytest_subprocess("--udpsend-baseline", str(base), "--udpsend-repeat", "5")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    err = refused.stderr.str()
    assert "measured differently" in err and "backend" in err and "cpu_model" in err and "--udpsend-allow-mixed" in err
    assert "Traceback" not in err
    allowed = pytester.runpytest_subprocess(
        "--udpsend-baseline", str(base), "--udpsend-repeat", "5", "--udpsend-allow-mixed"
    )
    allowed.assert_outcomes(passed=1)


def test_a_test_sent_differently_fails_with_one_sentence(pytester):
    base = pytester.path / "base.json"
    saved = _baseline(pytester, base)
    for sample in next(iter(saved["tests"].values()))["samples"]:
        sample["params"]["payload"] = 200
    base.write_text(json.dumps(saved))
    result = pytester.runpytest_subprocess("--udpsend-baseline", str(base), "--udpsend-repeat", "5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*udpsend baseline: the baseline and this run were measured differently "
            "(payload 200 -> 1400)*--udpsend-allow-mixed if intended*"
        ]
    )


def test_too_few_samples_are_refused_up_front(pytester):
    base = pytester.path / "base.json"
    _baseline(pytester, base)
    result = pytester.runpytest_subprocess("--udpsend-baseline", str(base), "--udpsend-repeat", "1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "cannot reach p <" in err and "--udpsend-repeat" in err and "Traceback" not in err


def test_bad_gate_settings_are_usage_errors(pytester):
    pytester.makefile(".ini", pytest="[pytest]\nudpsend_alpha = lots\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "must be numbers" in result.stderr.str()

"""Issue 24, items 1, 2 and 4: the gate never passes on what was not measured, a run that measured
nothing leaves results files alone, and malformed files or output paths give one sentence.

Synthetic documents (nothing here measures, except one short gate run)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_udpsend.results import compare, store

RATES = [0.010, 0.011, 0.012, 0.013, 0.014, 0.015]
HIST = {"edges_us": [1.0, 10.0, 100.0], "counts": [0, 5, 3, 1]}


def sample(rate: float, **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "kernel": "6.1",
        "eagain_rate": rate,
        "pps": 100000.0,
        "attempts": 1000,
        "time_squeeze": 3,
        "enobufs": 0,
        "params": {"payload": 1400, "duration": 1.0},
        "series": {"bucket_ms": 10, "attempts": [100] * 5, "eagain": [1] * 5, "outq_max": [8192] * 5},
        "softnet": {"0": {"processed": 5, "dropped": 0, "time_squeeze": 1}},
        "wfree": {"backend": "bpf", "p50_us": 10.0, "p99_us": 40.0, "histogram": HIST, "histograms": {"inline": HIST}},
    }
    s.update(extra)
    return s


def doc(tests: dict[str, list[dict[str, Any]]], kernel: str = "6.1", here: bool = False) -> dict[str, Any]:
    """``here``: an environment that does not say how it measured, so that a pytest run here may use it as its baseline."""
    env = {"kernel": kernel} if here else {"kernel": kernel, "backend": "bpf", "cpu_model": "X", "cpu_count": 2}
    return {
        "format": store.FORMAT,
        "environment": env,
        "tests": {t: {"outcome": "passed", "samples": v} for t, v in tests.items()},
    }


def write(path: Path, content: dict[str, Any] | str) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def udpsend(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_udpsend.cli", *argv], capture_output=True, text=True)


def one_sentence(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


BOTH = {"t.py::a": [sample(r) for r in RATES], "t.py::b": [sample(r) for r in RATES]}


# --- item 1: the gate never passes on what was not measured --------------------------------------------------


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (doc({}, "6.12"), "has no tests"),
        (doc({"t.py::a": [], "t.py::b": [sample(r) for r in RATES]}, "6.12"), "t.py::a: no samples in the new results"),
        (
            doc({"t.py::a": [sample(math.nan) for _ in RATES], "t.py::b": [sample(r) for r in RATES]}, "6.12"),
            "t.py::a eagain_rate: not a number in the new results (a NaN or infinite value)",
        ),
        (doc({"t.py::other": [sample(r) for r in RATES]}, "6.12"), "shares no test with the baseline"),
    ],
    ids=["no-tests", "empty-samples", "nan", "disjoint"],
)
def test_compare_refuses_what_was_not_measured(tmp_path, new, expected):
    base, path = write(tmp_path / "base.json", doc(BOTH)), write(tmp_path / "new.json", new)
    done = udpsend("compare", base, path, "--metrics", "eagain_rate")
    assert done.returncode == 2, done.stdout + done.stderr
    sentence = one_sentence(done)
    assert expected in sentence and "new.json" in sentence


def test_nan_in_the_baseline_is_refused_too(tmp_path):
    base = write(
        tmp_path / "base.json", doc({"t.py::a": [sample(math.nan if i == 2 else r) for i, r in enumerate(RATES)]})
    )
    done = udpsend("compare", base, write(tmp_path / "new.json", doc({"t.py::a": [sample(r) for r in RATES]}, "6.12")))
    assert done.returncode == 2 and "t.py::a eagain_rate: not a number in the baseline" in one_sentence(done)


def test_a_nan_p_is_never_ok():
    assert math.isnan(compare.p_greater([1.0, math.nan, 2.0], [1.0, 2.0, 3.0]))
    assert compare.p_greater([2.0] * 4, [2.0] * 4) == 1.0  # all tied: exactly 1, not a forced fallback
    row = compare.compare_metric(
        "t",
        "pps",
        [{"pps": v} for v in (1.0, 2.0, 3.0, 4.0)],
        [{"pps": v} for v in (math.nan, 2.0, 3.0, 4.0)],
        0.25,
        0.5,
    )
    assert row.verdict == "not a number" and row.refused and not row.compared


def test_tests_not_selected_are_listed_as_not_compared(tmp_path):
    """A -k run or a shard: the baseline's other tests are listed, the selected ones are judged."""
    base = write(tmp_path / "base.json", doc(BOTH))
    done = udpsend(
        "compare",
        base,
        write(tmp_path / "new.json", doc({"t.py::a": [sample(r) for r in RATES]}, "6.12")),
        "--metrics",
        "eagain_rate",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "not compared: 1 test(s) of the baseline not in the new results (not selected: a -k run, a shard): t.py::b"
        in done.stdout
    )


def test_nothing_compared_at_all_never_exits_0(tmp_path):
    """Metrics absent by design (no probe: no wfree) are not compared; if that is all there is, it is refused."""
    no_probe = [sample(r, wfree={}) for r in RATES]
    base = write(tmp_path / "base.json", doc({"t.py::a": no_probe}))
    new = write(tmp_path / "new.json", doc({"t.py::a": no_probe}, "6.12"))
    done = udpsend("compare", base, new, "--metrics", "wfree.p50_us")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nothing was compared" in one_sentence(done) and "not compared: t.py::a wfree.p50_us" in done.stdout
    both = udpsend("compare", base, new, "--metrics", "wfree.p50_us", "eagain_rate")
    assert both.returncode == 0 and "not measured" in both.stdout


def test_fan_in_groups_refuse_a_group_that_measured_nothing(tmp_path):
    base = [
        write(tmp_path / f"old-{r}.json", {**doc(BOTH), "environment": {"kernel": "6.1", "labels": {"runner": r}}})
        for r in "ab"
    ]
    new = [
        write(
            tmp_path / "new-a.json", {**doc(BOTH, "6.12"), "environment": {"kernel": "6.12", "labels": {"runner": "a"}}}
        ),
        write(
            tmp_path / "new-b.json", {**doc({}, "6.12"), "environment": {"kernel": "6.12", "labels": {"runner": "b"}}}
        ),
    ]
    done = udpsend("compare", *base, "--new", *new, "--metrics", "eagain_rate")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "new-b.json has no tests" in done.stderr and "runner=b: refused" in done.stdout


def test_pytest_gate_refuses_a_test_that_measured_nothing_and_a_run_that_compared_nothing(pytester, tmp_path):
    pytester.makepyfile(test_m="def test_plain():\n    pass\n\ndef test_other():\n    pass\n")
    base = write(tmp_path / "base.json", doc({"test_m.py::test_plain": [sample(r) for r in RATES]}, here=True))
    ran = pytester.runpytest_subprocess("--udpsend-baseline", base, "--udpsend-repeat", "6", "-k", "test_plain")
    ran.assert_outcomes(failed=1)
    ran.stdout.fnmatch_lines(
        ["*udpsend baseline: this test cannot be judged: *test_m.py::test_plain: no samples in the new results*"]
    )
    # review item 7: a -k run selecting only tests that are not ours (or whose measuring tests all skip) is no refusal
    other = pytester.runpytest_subprocess("--udpsend-baseline", base, "--udpsend-repeat", "6", "-k", "test_other")
    other.assert_outcomes(passed=1)
    assert other.ret == 0 and "nothing was compared" not in other.stdout.str()


SHAPED = """
import pytest
@pytest.mark.udpsend(duration=0.1)
def test_shaped(udpsend_result):
    pass
"""


def test_pytest_gate_refuses_a_nan_in_the_baseline(pytester, tmp_path):
    pytester.makepyfile(test_gate=SHAPED)
    pytester.makefile(".ini", pytest="[pytest]\nudpsend_compare_metrics = eagain_rate\n")
    rates = [math.nan, *RATES[1:]]
    base = write(
        tmp_path / "base.json",
        doc({"test_gate.py::test_shaped": [{"kernel": "x", "eagain_rate": r} for r in rates]}, here=True),
    )
    result = pytester.runpytest_subprocess(
        "--udpsend-baseline", base, "--udpsend-repeat", "2", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*udpsend baseline: this test cannot be judged: *test_gate.py::test_shaped eagain_rate: not a number in the baseline*"
        ]
    )


# --- item 2: a run that measured nothing leaves results files alone ------------------------------------------


def test_collect_only_and_unmeasured_runs_leave_results_files_alone(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    prev, page = pytester.path / "prev.json", pytester.path / "prev.html"
    prev.write_text("previous results")
    page.write_text("previous page")
    collected = pytester.runpytest_subprocess(
        "--collect-only", "--udpsend-json", str(prev), "--udpsend-html", str(page)
    )
    assert collected.ret == 0
    ran = pytester.runpytest_subprocess("--udpsend-json", str(prev), "--udpsend-html", str(page))
    ran.assert_outcomes(passed=1)
    assert prev.read_text() == "previous results" and page.read_text() == "previous page"
    ran.stdout.fnmatch_lines(["*--udpsend-json and --udpsend-html not written: no test measured anything*"])


# --- item 4: malformed files and output paths ----------------------------------------------------------------


def _sweep_doc(knobs: bool = True) -> dict[str, Any]:
    cell = {
        "cell": "sndbuf=4096,force=no",
        "knobs": {"sndbuf": "4096", "force": False, "budget": None, "budget_usecs": None, "workers": None},
        "eagain_rate": 0.1,
        "enobufs_rate": 0.0,
        "pps": 1.0,
        "time_squeeze": 0,
        "wfree_p99_us": None,
        "wall_s": 1.0,
    }
    if not knobs:
        del cell["knobs"]
    d = doc({})
    d["tests"] = {"sndbuf=4096,force=no": {"outcome": "passed", "samples": [sample(0.1)], "sweep": cell}}
    return d


def _malformed() -> list[tuple[str, Any, str]]:
    series = doc({"t.py::a": [sample(r, series=[1, 2, 3]) if i == 0 else sample(r) for i, r in enumerate(RATES)]})
    no_edges = {"backend": "bpf", "histogram": {"edges_us": [], "counts": [1]}}
    edges = doc({"t.py::a": [sample(r, wfree=no_edges) if i == 0 else sample(r) for i, r in enumerate(RATES)]})
    gate = {
        **doc({"t.py::a": [sample(r) for r in RATES]}, "6.12"),
        "gate": {"settings": {"tolerance": "x"}, "family": 1, "rows": []},
    }
    deep = '{"format": "pytest-udpsend/2", "environment": {}, "tests": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    medium = '{"format": "pytest-udpsend/2", "environment": {}, "tests": {}, "x": ' + "[" * 500 + "]" * 500 + "}"
    return [
        ("deep", deep, "nested too deeply"),
        ("medium", medium, "field 'x.0.0.0."),
        ("series", series, "field 'tests.t.py::a.samples.0.series': [1, 2, 3] is not of type 'object'"),
        ("edges", edges, "field 'tests.t.py::a.samples.0.wfree.histogram.edges_us': []"),
        (
            "sweep",
            _sweep_doc(),
            "field 'tests.sndbuf=4096,force=no.sweep.knobs.sndbuf': '4096' is not of type 'integer', 'null'",
        ),
        ("gate", gate, "field 'gate.settings.tolerance': 'x' is not of type 'number'"),
        (
            "no-edges",
            doc(
                {
                    "t.py::a": [
                        sample(r, wfree={"backend": "bpf", "histogram": {"counts": [1]}}) if i == 0 else sample(r)
                        for i, r in enumerate(RATES)
                    ]
                }
            ),
            "field 'tests.t.py::a.samples.0.wfree.histogram': 'edges_us' is a required property",
        ),
        (
            "no-knobs",
            _sweep_doc(knobs=False),
            "field 'tests.sndbuf=4096,force=no.sweep': 'knobs' is a required property",
        ),
    ]


@pytest.mark.parametrize(("name", "content", "expected"), _malformed(), ids=[m[0] for m in _malformed()])
def test_malformed_files_are_one_sentence_naming_the_file_and_the_field(tmp_path, name, content, expected):
    bad = write(tmp_path / f"{name}.json", content)
    with pytest.raises(ValueError) as info:
        store.load(bad)
    assert str(info.value).startswith(f"{bad}: ") and expected in str(info.value)
    base = write(tmp_path / "base.json", doc(BOTH))
    for argv in (
        ("compare", base, bad),
        ("report", bad, "-o", str(tmp_path / "r.html")),
        ("merge", str(tmp_path / "m.json"), bad),
    ):
        done = udpsend(*argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert expected in one_sentence(done) and bad in done.stderr
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "r.html").exists()


def test_a_deeply_nested_baseline_is_a_usage_error(pytester, tmp_path):
    bad = write(tmp_path / "deep.json", _malformed()[0][1])
    result = pytester.runpytest_subprocess("--udpsend-baseline", bad)
    assert (
        result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    )
    result.stderr.fnmatch_lines([f"*--udpsend-baseline {bad}: nested too deeply*"])


def test_today_s_documents_still_load():
    """A document as the current code writes it (every SendResult field, the timestamp and the bpf wfree,
    a sweep, a gate record, a merged file) validates; so does schema 1."""
    from pytest_udpsend.measure.histogram import latency_stats
    from pytest_udpsend.measure.result import SendResult

    full = SendResult(
        attempts=10,
        sent=9,
        eagain=1,
        eagain_rate=0.1,
        pps=9.0,
        duration_s=1.0,
        payload=1400,
        sndbuf_requested=None,
        sndbuf_effective=4608,
        softnet={"0": {"processed": 1, "dropped": 0, "time_squeeze": 0}},
        irqs={"eth0": {"24 eth0-tx": [1, 2]}},
        snmp={"UdpOutDatagrams": 9},
        wmem={"max_bytes": 4608, "mean_bytes": 10.5},
        wfree={
            "backend": "timestamp",
            **latency_stats([1000, 2000]),
            "contexts": {},
            "coverage": 0.5,
            "lost_samples": 0,
            "reason": "r",
            "samples": {"cap": 1, "kept": 1, "seen": 1, "method": "m"},
        },
        kernel="6.1",
        sysctls={"net.core.wmem_max": "4096"},
        diagnosis=[{"finding": "f", "evidence": "e"}],
        flows=[{"thread": 0, "cpu": None, "sport": 1, "attempts": 10, "sent": 9, "eagain": 1, "stops": 0}],
        process={"argv": ["x"], "returncode": None, "exited": False, "stdout": "", "stderr": ""},
        series={"bucket_ms": 10, "outq_max": []},
        topology="veth",
        params={
            "payload": 1400,
            "duration": None,
            "cpu": [0, 1],
            "sndbuf": None,
            "rate": None,
            "argv": ["x"],
            "external": True,
        },
        checks=["ok"],
    ).to_dict()
    empty = SendResult(wfree={"backend": "timestamp", **latency_stats([])}).to_dict()
    bpf = sample(
        0.1,
        wfree={
            "backend": "bpf",
            "method": "kprobe",
            "count": 3,
            "charges": 3,
            "p50_us": None,
            "p90_us": 1.0,
            "p99_us": 2.0,
            "max_us": 3.0,
            "contexts": {"inline": 3},
            "histogram": HIST,
            "histograms": {"inline": HIST},
            "context_p99_us": {"inline": 2.0},
            "stacks": [{"context": "inline", "count": 3, "samples": 1, "share": 1.0, "frames": ["a"], "text": "a"}],
            "stacks_lost": 0,
            "stacks_sampled": 1,
            "stack_every": 8,
        },
    )
    d = doc({"t::full": [json.loads(json.dumps(full))], "t::empty": [json.loads(json.dumps(empty))], "t::bpf": [bpf]})
    d["environment"] = {
        **store.environment("timestamp"),
        "labels": {"a": "b"},
        "lane": {"host_kernel": "6.1", "accel": "tcg"},
    }
    rows = compare.compare_docs(d, d, compare.Settings())
    d["gate"] = compare.gate_record(compare.Settings(), 3, d, rows)
    store.validate(json.loads(json.dumps(d)), "today")  # Infinity/NaN survive as JSON numbers
    sweep = _sweep_doc()
    sweep["tests"]["sndbuf=4096,force=no"]["sweep"]["knobs"]["sndbuf"] = 4096
    sweep["sweep"] = {
        "grid": {"sndbuf": [4096], "force": [False], "budget": None, "budget_usecs": None, "workers": None},
        "baseline": {"sndbuf": 4096, "force": False, "budget": None, "budget_usecs": None, "workers": None},
        "target": 0.01,
        "interrupted": False,
        "cells": 1,
        "planned": 1,
        "smallest_change": "x",
        "wall_s": 2.0,
    }
    store.validate(sweep, "sweep")
    merged = {
        "format": store.FORMAT,
        "environment": {"merged": 2, "kernels": ["6.1"]},
        "tests": {},
        "runs": [
            {"source": "a", "environment": {"kernel": "6.1", "sources": ["x"]}, "tests": d["tests"], "gate": d["gate"]},
            {**sweep, "source": "b"},
        ],
    }
    del merged["runs"][1]["format"]
    store.validate(merged, "merged")
    store.validate({**d, "format": "pytest-udpsend/1"}, "v1")


def test_schema_metric_names_follow_the_code():
    from pytest_udpsend.results.metrics import METRICS

    schema = json.loads(store.SCHEMA.read_text())
    assert schema["$defs"]["metric"]["enum"] == list(METRICS)


@pytest.mark.parametrize(
    "target",
    ["adir", "base.json/r.html", "base.json/deeper/r.html"],
    ids=["directory", "parent-is-a-file", "ancestor-is-a-file"],
)
def test_output_paths_are_checked_up_front(tmp_path, target):
    (tmp_path / "adir").mkdir()
    base = write(tmp_path / "base.json", doc(BOTH))
    out = str(tmp_path / target)
    for argv in (("report", base, "-o", out), ("merge", out, base)):
        done = udpsend(*argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        sentence = one_sentence(done)
        assert out in sentence or str(Path(out).parent) in sentence


def test_a_missing_output_folder_is_made_as_the_file_is_written(tmp_path):
    """Review item 6: the up-front check agrees with atomic_open, which makes missing parents."""
    base = write(tmp_path / "base.json", doc(BOTH))
    page, merged = tmp_path / "out" / "html" / "r.html", tmp_path / "merged" / "m.json"
    done = udpsend("report", base, "-o", str(page))
    assert done.returncode == 0, done.stderr
    done = udpsend("merge", str(merged), base)
    assert done.returncode == 0, done.stderr
    assert page.is_file() and store.load(merged)["runs"]


def test_a_missing_output_folder_does_not_stop_a_pytest_run(pytester):
    """Review item 6: --udpsend-json out/r.json in addopts: collect-only and plain runs go on, nothing is made."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.makeini("[pytest]\naddopts = --udpsend-json out/r.json --udpsend-html out/r.html\n")
    assert pytester.runpytest_subprocess("--collect-only").ret == pytest.ExitCode.OK
    ran = pytester.runpytest_subprocess()
    ran.assert_outcomes(passed=1)
    assert ran.ret == pytest.ExitCode.OK and not (pytester.path / "out").exists()


def test_collect_only_does_not_check_output_paths(pytester):
    """Review item 6: a run that writes nothing is not stopped by a path it would not write."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    (pytester.path / "adir").mkdir()
    result = pytester.runpytest_subprocess("--collect-only", "--udpsend-json", str(pytester.path / "adir"))
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()


def test_a_measuring_run_makes_the_missing_output_folder(pytester):
    pytester.makepyfile(test_m=SHAPED)
    result = pytester.runpytest_subprocess("--udpsend-json", "out/r.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "test_m.py::test_shaped" in store.load(pytester.path / "out" / "r.json")["tests"]


@pytest.mark.parametrize("flag", ["--udpsend-json", "--udpsend-html"])
def test_pytest_output_paths_are_usage_errors_before_any_test(pytester, flag):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    (pytester.path / "adir").mkdir()
    (pytester.path / "afile").write_text("")
    for target in ("adir", "afile/r.out"):
        result = pytester.runpytest_subprocess(flag, str(pytester.path / target))
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        assert "Traceback" not in result.stderr.str() and "passed" not in result.stdout.str()
        result.stderr.fnmatch_lines([f"*{flag} {pytester.path / target}: *"])


def test_exec_is_refused_where_it_means_nothing(tmp_path):
    base = write(tmp_path / "base.json", doc(BOTH))
    done = udpsend("compare", base, base, "--exec", "foo")
    assert done.returncode == 2 and "--exec" in one_sentence(done) and "udpsend run" in done.stderr


def test_the_kernel_gate_refuses_a_test_that_passed_but_measured_nothing_there():
    """The same rule (compare.refusal) on the other kernel: no samples where the reference measured is a failure."""
    from types import SimpleNamespace

    from pytest_udpsend.frontend import kernel_gate
    from pytest_udpsend.lane.wire import GuestReport

    ref, other = (
        SimpleNamespace(suffix="6.1", guest_environment={}),
        SimpleNamespace(suffix="6.12", guest_environment={}),
    )
    gate = kernel_gate.KernelGate(ref, 1, compare.Settings(metrics=("eagain_rate",), one_command=True))  # type: ignore[arg-type]
    item = SimpleNamespace(nodeid="t.py::a", stash=pytest.Stash())
    measured = [GuestReport("t.py::a", "call", "passed", "", 0.1, [(store.PROPERTY, [sample(r) for r in RATES])])]
    gate.set_reference([(item, measured)])  # type: ignore[list-item]
    nothing = [GuestReport("t.py::a", "call", "passed", "", 0.1, [])]
    (call,) = gate.judge(other, item, nothing)  # type: ignore[arg-type]
    assert (
        call.outcome == "failed"
        and "this test cannot be judged: t.py::a: no samples in the new results" in call.longrepr
    )
    nan = [GuestReport("t.py::a", "call", "passed", "", 0.1, [(store.PROPERTY, [sample(math.nan) for _ in RATES])])]
    (call,) = gate.judge(other, item, nan)  # type: ignore[arg-type]
    assert call.outcome == "failed" and "t.py::a eagain_rate: not a number in the new results" in call.longrepr
    skipped = [GuestReport("t.py::a", "call", "skipped", "no kprobes", 0.1, [])]
    assert gate.judge(other, item, skipped) == skipped  # its own outcome says why
    kernels = kernel_gate.Kernels([ref, other], gate)  # type: ignore[list-item]
    kernels.reported = {"6.1": ["t.py::a@6.1"], "6.12": ["t.py::a@6.12"]}
    assert kernels.nothing_compared() is None  # refused rows say why themselves
    gate.rows = {"6.12": [compare.Row("t.py::a", "eagain_rate", None, None, None, None, "not measured")]}
    assert "nothing was compared" in (kernels.nothing_compared() or "")


# --- review of the issue-24 work: items 3, 4 (above), 6 (above), 7 (above), 9 and 15 ----------------------------


def test_an_unreadable_input_is_one_sentence(tmp_path, pytester):
    """Review item 3: a directory (or an unreadable file) given as a results file names the file and the cause."""
    with pytest.raises(ValueError, match=f"^{tmp_path}: cannot be read: Is a directory"):
        store.load(tmp_path)
    new = write(tmp_path / "new.json", doc(BOTH, "6.12"))
    done = udpsend("compare", str(tmp_path), new)
    assert done.returncode == 2 and f"{tmp_path}: cannot be read: Is a directory" in one_sentence(done)
    result = pytester.runpytest_subprocess("--udpsend-baseline", str(tmp_path))
    assert (
        result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    )
    result.stderr.fnmatch_lines([f"*--udpsend-baseline {tmp_path}: cannot be read: Is a directory*"])


def _wfree(p50: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "bpf",
        "count": 0 if p50 is None else 10,
        "p50_us": p50,
        "p99_us": None if p50 is None else 4 * p50,
        **extra,
    }


def test_a_metric_lost_in_the_new_results_is_refused(tmp_path):
    """Review item 9: a metric the baseline measured that the new samples lack without saying why (a probe that
    silently broke, same backend) is refused; absent by design (no backend, or 'unavailable') is not compared."""
    base = [sample(r, wfree=_wfree(10.0 + i)) for i, r in enumerate(RATES)]
    lost = [sample(r, wfree=_wfree(None)) for r in RATES]
    row = compare.compare_metric("t.py::a", "wfree.p50_us", base, lost, 0.25, 0.01)
    assert row.refused and not row.compared and "the baseline measured it" in row.note
    for why in ({}, {"backend": None}, _wfree(None, unavailable="netem orphans the skb early")):
        design = [sample(r, wfree=why) for r in RATES]
        assert compare.compare_metric("t.py::a", "wfree.p50_us", base, design, 0.25, 0.01).verdict == "not measured"
        assert compare.compare_metric("t.py::a", "wfree.p50_us", design, design, 0.25, 0.01).verdict == "not measured"
    old = [{k: v for k, v in s.items() if k != "pps"} for s in base]  # a top-level metric has no reason to be absent
    assert compare.compare_metric("t.py::a", "pps", base, old, 0.25, 0.01).refused
    files = (
        write(tmp_path / "base.json", doc({"t.py::a": base})),
        write(tmp_path / "new.json", doc({"t.py::a": lost}, "6.12")),
    )
    done = udpsend("compare", *files, "--metrics", "wfree.p50_us", "eagain_rate")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "t.py::a wfree.p50_us: lost in the new results" in one_sentence(done)


def test_merge_refuses_to_write_a_document_without_tests(tmp_path):
    """Review item 15: merging files that hold no test would write an empty document; refused, nothing written."""
    empty = [write(tmp_path / f"e{i}.json", doc({}, "6.12")) for i in range(2)]
    out = tmp_path / "m.json"
    done = udpsend("merge", str(out), *empty)
    assert done.returncode == 2, done.stdout + done.stderr
    sentence = one_sentence(done)
    assert "no test" in sentence and "e0.json" in sentence and not out.exists()
    assert udpsend("merge", str(out), *empty, write(tmp_path / "full.json", doc(BOTH))).returncode == 0

"""Fan-in of many runners' result files: grouping, one exit status, merge, schema errors.

Synthetic documents from three "runners" (labels runner=a/b/c, throw-away hostnames as
CI runners have) on an old and a new kernel: nothing here measures.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_udpsend.frontend.options import parse_labels
from pytest_udpsend.results import fanin, store

OLD, NEW = "6.1.0-56-amd64", "6.12.95+deb12-amd64"
BASE_RATES = [0.010, 0.011, 0.012, 0.013, 0.014, 0.015]
WORSE_RATES = [0.30, 0.31, 0.32, 0.33, 0.34, 0.35]


def sample(kernel: str, rate: float, contexts: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "kernel": kernel,
        "eagain_rate": rate,
        "pps": 100000.0,
        "attempts": 1000,
        "params": {"payload": 1400, "duration": 1.0},
        "wfree": {"backend": "bpf", "p99_us": 40.0, "contexts": contexts or {"inline": 90, "softirq": 10}},
    }


def doc(
    kernel: str,
    runner: str,
    host: str,
    rates: dict[str, list[float]],
    fmt: str = store.FORMAT,
    contexts: dict[str, int] | None = None,
) -> dict[str, Any]:
    env = {
        "kernel": kernel,
        "hostname": host,
        "cpu_model": "Xeon",
        "cpu_count": 2,
        "backend": "bpf",
        "virtualized": False,
        "labels": {"runner": runner},
    }
    if fmt != store.FORMAT:  # schema 1 had neither hostname nor labels
        env = {k: v for k, v in env.items() if k not in ("hostname", "labels")}
    tests = {t: {"outcome": "passed", "samples": [sample(kernel, r, contexts) for r in rs]} for t, rs in rates.items()}
    return {"format": fmt, "environment": env, "tests": tests}


def write(path: Path, content: dict[str, Any] | str) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def fleet(tmp: Path, regressed: str | None = None) -> tuple[list[str], list[str]]:
    """Three runners' files per kernel; ``regressed`` names the runner whose test_b got worse on the new kernel."""
    base, new = [], []
    for i, runner in enumerate("abc"):
        base.append(
            write(
                tmp / f"old-{runner}.json",
                doc(OLD, runner, f"ci-{i}", {"t.py::test_a": BASE_RATES, "t.py::test_b": BASE_RATES}),
            )
        )
        worse = WORSE_RATES if runner == regressed else BASE_RATES
        new.append(
            write(
                tmp / f"new-{runner}.json",
                doc(NEW, runner, f"ci-{i + 10}", {"t.py::test_a": BASE_RATES, "t.py::test_b": worse}),
            )
        )
    return base, new


def udpsend(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_udpsend.cli", *argv], capture_output=True, text=True)


METRIC = ("--metrics", "eagain_rate")


def test_one_group_per_runner_and_exit_1_if_any_regressed(tmp_path):
    base, new = fleet(tmp_path, regressed="b")
    done = udpsend("compare", *base, "--new", *new, *METRIC)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 group(s) by label:runner" in done.stdout
    assert "the change under test: kernel" in done.stdout  # throw-away hostnames do not split the groups
    for runner in "abc":
        assert f"=== runner={runner} ===" in done.stdout
    assert "summary: runner=a: ok; runner=b: regression; runner=c: ok" in done.stdout
    assert done.stdout.count("alpha 0.05 over 6 comparisons") == 3  # one exit status: the family spans the groups
    section_b = done.stdout.split("=== runner=b ===")[1].split("===")[0]
    assert "test_b" in section_b and "regression" in section_b


def test_all_groups_ok_exit_0_and_globs_are_expanded(tmp_path):
    fleet(tmp_path)
    done = udpsend("compare", str(tmp_path / "old-*.json"), "--new", str(tmp_path / "new-*.json"), *METRIC)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("regression(s) in 2 test(s)") == 3


def test_a_runner_missing_on_one_side_is_refused(tmp_path):
    base, new = fleet(tmp_path)
    done = udpsend("compare", *base, "--new", *new[:2], *METRIC)
    assert done.returncode == 2
    assert "refused: runner=c: no new results for this group (from " in done.stderr


def test_regression_wins_over_a_refused_group(tmp_path):
    base, new = fleet(tmp_path, regressed="a")
    assert udpsend("compare", *base, "--new", *new[:2], *METRIC).returncode == 1


def test_two_file_form_still_works_and_the_side_must_be_said(tmp_path):
    base, new = fleet(tmp_path, regressed="a")
    done = udpsend("compare", base[0], new[0], *METRIC)
    assert done.returncode == 1 and "===" not in done.stdout  # one group: the table as before
    done = udpsend("compare", *base, *METRIC)
    assert done.returncode == 2 and "without --new" in done.stderr


def test_shards_of_one_runner_pool_and_two_old_kernels_do_not(tmp_path):
    base, new = fleet(tmp_path)
    extra = write(tmp_path / "old-a-shard.json", doc(OLD, "a", "ci-7", {"t.py::test_c": BASE_RATES}))
    done = udpsend("compare", *base, extra, "--new", *new, *METRIC)
    assert done.returncode == 0 and "test_c" in done.stdout.split("=== runner=a ===")[1].split("===")[0]
    units = fanin.load_units([*base, extra])
    pooled, why = fanin.pool([u for u in units if u.value("label:runner") == "a"])
    assert (
        why is None and pooled is not None and set(pooled["tests"]) == {"t.py::test_a", "t.py::test_b", "t.py::test_c"}
    )
    other = write(tmp_path / "older-a.json", doc("6.0.0-1-amd64", "a", "ci-8", {"t.py::test_a": BASE_RATES}))
    done = udpsend("compare", *base, other, "--new", *new, *METRIC)
    assert done.returncode == 2 and "cannot be pooled: it mixes kernel 6.0.0-1-amd64, 6.1.0-56-amd64" in done.stderr


def test_merge_writes_one_document_that_compares_like_its_files(tmp_path):
    base, new = fleet(tmp_path, regressed="c")
    out_base, out_new = tmp_path / "merged-old.json", tmp_path / "merged-new.json"
    assert udpsend("merge", str(out_base), *base).returncode == 0
    done = udpsend("merge", str(out_new), str(tmp_path / "new-*.json"))
    assert done.returncode == 0 and "merged 3 run(s) from 3 file(s)" in done.stdout
    merged = store.load(out_new)
    assert [r["source"] for r in merged["runs"]] == new and merged["environment"]["kernel"] == NEW
    assert "hostname" not in merged["environment"]  # not shared by all runs
    separate = udpsend("compare", *base, "--new", *new, *METRIC)
    together = udpsend("compare", str(out_base), "--new", str(out_new), *METRIC)
    assert together.returncode == separate.returncode == 1
    assert together.stdout == separate.stdout


def test_merge_refuses_differing_schema_versions(tmp_path):
    v1 = write(tmp_path / "v1.json", doc(OLD, "a", "h", {"t.py::test_a": BASE_RATES}, fmt="pytest-udpsend/1"))
    v2 = write(tmp_path / "v2.json", doc(OLD, "b", "h", {"t.py::test_a": BASE_RATES}))
    done = udpsend("merge", str(tmp_path / "out.json"), v1, v2)
    assert done.returncode == 2 and not (tmp_path / "out.json").exists()
    message = done.stderr.strip()
    assert message.count("\n") == 0 and f"{v1} is pytest-udpsend/1 and {v2} is pytest-udpsend/2" in message
    assert "schema versions differ" in message


def test_schema_1_documents_are_still_read(tmp_path):
    v1 = write(tmp_path / "v1.json", doc(OLD, "a", "h", {"t.py::test_a": BASE_RATES}, fmt="pytest-udpsend/1"))
    assert store.load(v1)["format"] == "pytest-udpsend/1"
    v1b = write(tmp_path / "v1b.json", doc(NEW, "a", "h", {"t.py::test_a": BASE_RATES}, fmt="pytest-udpsend/1"))
    assert udpsend("compare", v1, v1b, *METRIC).returncode == 0


GOOD = doc(OLD, "a", "h", {"t.py::test_a": BASE_RATES})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (json.dumps(GOOD)[:-40], "truncated (the JSON ends early"),
        ('{"name": "other-tool", "results": []}', "not a pytest-udpsend results file (no 'format' field"),
        ('{"format": "junit/3", "tests": {}}', "not a pytest-udpsend results file (field 'format' is 'junit/3')"),
        ({**GOOD, "format": "pytest-udpsend/3"}, "'pytest-udpsend/3', a newer schema than this pytest-udpsend"),
        (
            {**GOOD, "format": "pytest-udpsend/0"},
            "field 'format' is 'pytest-udpsend/0', not one this pytest-udpsend reads",
        ),
        (
            {**GOOD, "environment": {**GOOD["environment"], "kernel": 61}},
            "field 'environment.kernel': 61 is not of type 'string'",
        ),
        (
            {**GOOD, "tests": {"t.py::x": {"samples": [{"eagain_rate": "high"}]}}},
            "field 'tests.t.py::x.samples.0.eagain_rate': 'high' is not of type 'number'",
        ),
        ("[1, 2]", "not a pytest-udpsend results file"),
    ],
    ids=[
        "truncated",
        "other-tool",
        "other-format",
        "newer-schema",
        "unknown-schema",
        "bad-field",
        "bad-sample",
        "not-an-object",
    ],
)
def test_schema_errors_name_the_file_and_the_field_in_one_sentence(tmp_path, content, expected):
    bad = write(tmp_path / "bad.json", content)
    with pytest.raises(ValueError) as info:
        store.load(bad)
    assert str(info.value).startswith(f"{bad}: ") and expected in str(info.value)
    base, _ = fleet(tmp_path)
    done = udpsend("compare", *base, "--new", bad)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr


def test_a_glob_that_matches_nothing_is_named(tmp_path):
    done = udpsend("merge", str(tmp_path / "out.json"), str(tmp_path / "nothing-*.json"))
    assert done.returncode == 2 and "nothing-*.json: no file matches" in done.stderr


def test_report_over_the_fleet_groups_and_shows_the_upgrade_view(tmp_path):
    base, new = fleet(tmp_path, regressed="b")
    page = tmp_path / "fleet.html"
    done = udpsend(
        "report", *new, "--baseline", str(tmp_path / "old-*.json"), "--metrics", "eagain_rate", "-o", str(page)
    )
    assert done.returncode == 0, done.stderr
    text = html.unescape(page.read_text())
    assert text.count("<h2>Group: ") == 3 and "Group: runner=b" in text
    assert "Upgrade view: tests x kernels" in text and f"{OLD} (base)" in text and NEW in text
    assert "1 regression(s): t.py::test_b on " + NEW in text  # runner b's matrix
    assert text.count("no regression against the oldest kernel") == 2
    assert 'class="regressed"' in text and "<title>inline: 540 (90%)</title>" in text
    assert text.count("over 6 comparisons") == 3  # the same family as udpsend compare
    group_b = text.split("Group: runner=b")[1].split("Group: ")[0]
    assert re.search(r"t\.py::test_b\s+eagain_rate .* regression", group_b)


def test_a_merged_document_with_two_kernels_shows_where_sock_wfree_ran(tmp_path):
    old = write(tmp_path / "old.json", doc(OLD, "a", "h", {"t.py::test_a": BASE_RATES}, contexts={"inline": 100}))
    new = write(
        tmp_path / "new.json",
        doc(NEW, "a", "h", {"t.py::test_a": WORSE_RATES}, contexts={"softirq": 30, "ksoftirqd": 70}),
    )
    merged, page = tmp_path / "m.json", tmp_path / "m.html"
    assert udpsend("merge", str(merged), old, new).returncode == 0
    assert udpsend("report", str(merged), "-o", str(page)).returncode == 0
    text = html.unescape(page.read_text())
    assert "<title>inline: 600 (100%)</title>" in text and "<title>ksoftirqd: 420 (70%)</title>" in text
    assert "1 regression(s): t.py::test_a on " + NEW in text


def test_labels_are_parsed_and_bad_ones_named():
    assert parse_labels(["runner=c5", "pool = gpu "]) == {"runner": "c5", "pool": "gpu"}
    with pytest.raises(ValueError, match="--udpsend-label 'runner': use KEY=VALUE"):
        parse_labels(["runner"])


def test_labels_and_hostname_land_in_the_environment(pytester):
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.udpsend(duration=0.1)\ndef test_measured(udpsend_result):\n    pass\n"
    )
    out = pytester.path / "r.json"
    result = pytester.runpytest("--udpsend-label", "runner=a", "--udpsend-label", "pool=x", "--udpsend-json", str(out))
    result.assert_outcomes(passed=1)
    env = store.load(out)["environment"]
    assert env["labels"] == {"runner": "a", "pool": "x"} and env["hostname"]
    bad = pytester.runpytest("--udpsend-label", "runner")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--udpsend-label 'runner': use KEY=VALUE*"])


def test_this_version_s_own_documents_validate():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(
        json.loads(store.SCHEMA.read_text())
    )  # the schema file itself is valid
    written = store.document(
        store.environment("timestamp"), {"t.py::x": {"outcome": "passed", "samples": [sample(OLD, 0.1)]}}
    )
    assert store.validate(json.loads(json.dumps(written)), "here") is not None
    assert written["format"] == "pytest-udpsend/2" and written["environment"]["hostname"]


def test_merge_keeps_each_run_s_other_parts(tmp_path):
    one = {**doc(OLD, "a", "h", {"t.py::test_a": BASE_RATES}), "sweep": {"cells": 2, "smallest_change": "sndbuf 64 KB"}}
    merged = fanin.merge([write(tmp_path / "one.json", one), write(tmp_path / "two.json", doc(NEW, "a", "h", {}))])
    assert merged["runs"][0]["sweep"] == one["sweep"] and "sweep" not in merged["runs"][1]
    (unit,) = fanin.units_of(merged, "m")[:1]
    assert unit.doc()["sweep"] == one["sweep"] and "source" not in unit.doc()


def test_one_document_with_lane_suffixed_tests_on_two_kernels_gets_the_upgrade_view():
    from pytest_udpsend.results import report

    one = doc(OLD, "a", "h", {f"t.py::test_a@{OLD}": BASE_RATES})
    one["tests"][f"t.py::test_a@{NEW}"] = doc(NEW, "a", "h", {"x": WORSE_RATES})["tests"]["x"]
    page = html.unescape(report.render(one))
    assert "Upgrade view: tests x kernels" in page and "1 regression(s): t.py::test_a on " + NEW in page
    assert "Upgrade view" not in report.render(doc(OLD, "a", "h", {"t.py::test_a": BASE_RATES}))


def test_a_one_command_document_s_upgrade_view_uses_the_rule_its_gate_recorded():
    from pytest_udpsend.results import compare, report

    sides = [
        doc(OLD, "a", "h", {f"t.py::test_a@{OLD}": BASE_RATES}),
        doc(NEW, "a", "h", {f"t.py::test_a@{NEW}": WORSE_RATES}),
    ]
    runs = [
        {"source": f"--udpsend-kernel {i}", "environment": d["environment"], "tests": d["tests"]}
        for i, d in enumerate(sides)
    ]
    runs[1]["gate"] = {"settings": compare.Settings(one_command=True).to_dict(), "family": 6, "rows": []}
    page = html.unescape(report.render({"format": store.FORMAT, "environment": {}, "tests": {}, "runs": runs}))
    assert "Upgrade view: tests x kernels" in page and "noise floor for one command" in page

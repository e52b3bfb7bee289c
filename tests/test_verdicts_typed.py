"""Verdicts are Literal types (mypy catches a misspelt comparison); the strings on the wire stay the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

from pytest_udpsend.results import compare, paired

SCHEMA = Path(compare.__file__).with_name("schema") / "results-v2.json"


def test_the_paired_verdicts_are_the_schemas():
    enum = json.loads(SCHEMA.read_text())["$defs"]["paired_row"]["properties"]["verdict"]["enum"]
    assert sorted(get_args(paired.PairedVerdict)) == sorted(enum)


def test_each_gate_verdict_is_compared_refused_or_listed_never_two():
    every = compare.VERDICTS
    assert len(set(every)) == len(every) == 11 and all(isinstance(v, str) for v in every)
    for verdict in every:
        row = compare.Row("t.py::t", "pps", 1.0, 1.0, 0.0, 0.5, verdict)
        assert row.compared + row.refused <= 1, verdict
        assert row.regressed == (verdict == "regression")
    assert set(compare.NOT_COMPARED) == set(every) - set(compare.COMPARED) - set(compare.REFUSED)


def test_a_row_keeps_its_verdict_through_the_document():
    row = compare.Row("t.py::t", "pps", 1.0, 2.0, 1.0, 0.001, "regression", note="x")
    record = compare.gate_record(compare.Settings(), 1, {"tests": {}}, [row])
    (back,) = compare.rows_from(json.loads(json.dumps(record)))
    assert back.verdict == "regression" and back.regressed

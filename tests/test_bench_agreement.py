"""The verdicts of ci/bench_backend_agreement.py (issue 26, item 4): counts within 1 %, context shares
within 2 points, the latency difference signed tracepoint - bpf.  The lane run itself is a benchmark."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from .conftest import ci_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return ci_script("bench_backend_agreement")


def _w(count: int, calls: int, napi: int, softirq: int, p50: float, p99: float) -> dict[str, Any]:
    return {
        "count": count,
        "calls": calls,
        "contexts": {"inline": 0, "softirq": softirq, "ksoftirqd": 0, "napi_thread": napi},
        "p50_us": p50,
        "p99_us": p99,
    }


def _row(bpf: dict[str, Any], tp: dict[str, Any], sent: int = 6698) -> dict[str, Any]:
    return {
        "scenario": "GRO threaded NAPI",
        "mode": "same run",
        "sent": sent,
        "eagain_rate": 0.0,
        "pressure": "",
        "bpf": bpf,
        "tracepoint": tp,
    }


def test_equal_counts_and_shares_agree_and_latency_is_signed(bench):
    a = bench.agreement(_row(_w(6698, 237, 6698, 0, 30.0, 400.0), _w(6660, 236, 6600, 60, 27.5, 410.0)))
    assert a["agree"], a
    assert a["latency_diff_us"] == {"p50_us": -2.5, "p99_us": 10.0}  # tracepoint - bpf
    assert a["share_diff_points"]["softirq"] == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize(
    ("tp", "what"),
    [
        (_w(6600, 237, 6600, 0, 30.0, 400.0), "counts_agree"),  # released 1.5 % fewer
        (_w(6698, 240, 6698, 0, 30.0, 400.0), "counts_agree"),  # sock_wfree calls 1.3 % more
        (_w(6698, 237, 6480, 218, 30.0, 400.0), "shares_agree"),  # 3.3 points moved to softirq
    ],
)
def test_a_count_off_by_more_than_1_percent_or_a_share_by_2_points_disagrees(bench, tp, what):
    a = bench.agreement(_row(_w(6698, 237, 6698, 0, 30.0, 400.0), tp))
    assert not a[what] and not a["agree"], a


def test_the_table_names_both_backends_and_a_scenario_that_could_not_run(bench):
    rows = [
        _row(_w(6698, 237, 6698, 0, 30.0, 400.0), _w(6698, 237, 6698, 0, 27.5, 390.0)),
        {"scenario": "vmxnet3 TX completion", "error": "PrivilegeError: no vmxnet3 pair"},
    ]
    text = "\n".join(bench.table("6.1.0-56-amd64", rows))
    assert "released +0.00 %, calls +0.00 %" in text and "latency p50 -2.5 us, p99 -10 us" in text
    assert "counts within 1%: yes; shares within 2 points: yes" in text
    assert "vmxnet3 TX completion: could not run: PrivilegeError: no vmxnet3 pair" in text

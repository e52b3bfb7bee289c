"""The shape of ``SendResult.wfree`` shared by every sock_wfree backend (probes.py, bpfprobe.py, tpprobe.py)."""

from __future__ import annotations

from pytest_udpsend.measure.shapes import Backend, Wfree


def not_measured(backend: Backend, why: str) -> Wfree:
    """A wfree result without figures: ``count`` and the latencies None (a bound on them fails as "not
    measured"), ``method`` and ``unavailable`` the sentence saying why."""
    return {
        "backend": backend,
        "method": why,
        "unavailable": why,
        "count": None,
        "p50_us": None,
        "p90_us": None,
        "p99_us": None,
        "max_us": None,
        "contexts": {},
        "histogram": {},
    }

"""Issue 24 item 12: the timestamp estimate knows where its premise (the receiver's ip_rcv_core
releases the charge) fails, from the topology alone, and says so instead of giving a number.
No namespaces: the lane checks the same under a real netem (tests/test_lane_netem.py)."""

from __future__ import annotations

import pytest

from pytest_udpsend.host.topology import make_spec
from pytest_udpsend.measure.probes import TimestampProbe
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.results.bounds import check, failure_table, wfree_bounds


class RecordingSysctls:
    def __init__(self) -> None:
        self.written: dict[str, object] = {}

    def set(self, key: str, value: object) -> None:
        self.written[key] = value


def _end(**topology: object) -> tuple[dict, RecordingSysctls, TimestampProbe]:
    probe, sysctls = TimestampProbe("test"), RecordingSysctls()
    probe.prepare(sysctls, make_spec(**topology))  # type: ignore[arg-type]
    return probe.end([30_000, 40_000], 0, 2), sysctls, probe


@pytest.mark.parametrize(
    "qdisc", ["netem delay 50ms 1ms", "netem delay 5ms", "netem rate 10mbit", "netem loss 1% delay 1ms"]
)
def test_netem_that_orphans_at_enqueue_gives_no_number(qdisc):
    w, sysctls, probe = _end(qdisc=qdisc)
    assert w["p50_us"] is None and w["p99_us"] is None and w["max_us"] is None and w["count"] is None, w
    assert "skb_orphan_partial() in netem_enqueue()" in w["unavailable"] and qdisc in w["unavailable"]
    assert w["method"] == w["unavailable"] and w["backend"] == "timestamp"
    assert "--udpsend-backend bpf" in w["unavailable"]  # the fix
    # nothing asked of the kernel or the receiver for a figure that cannot be taken
    assert sysctls.written == {} and probe.receiver_timestamps is False


@pytest.mark.parametrize("link", ["vmxnet3", "virtio", "e1000e"])
def test_nic_links_release_at_tx_completion(link):
    w, _, _ = _end(link=link)
    assert w["p50_us"] is None and "TX completion" in w["unavailable"] and link in w["unavailable"], w


@pytest.mark.parametrize(
    "topology",
    [
        {},
        {"qdisc": "netem loss 50%"},
        {"qdisc": "tbf rate 100mbit burst 32kb latency 20ms"},
        {"rps_cpus": [0]},
        {"gro": True, "threaded_napi": True},
    ],
)
def test_where_the_receiver_releases_the_estimate_stands(topology):
    w, sysctls, probe = _end(**topology)
    assert "unavailable" not in w and w["p50_us"] == 30.0 and w["count"] == 2, w
    assert sysctls.written == {"net.core.netdev_tstamp_prequeue": 0} and probe.receiver_timestamps


def test_the_probe_is_per_session_so_each_run_decides_afresh():
    probe, sysctls = TimestampProbe("test"), RecordingSysctls()
    probe.prepare(sysctls, make_spec(qdisc="netem delay 5ms"))  # type: ignore[arg-type]
    probe.prepare(sysctls, make_spec())  # type: ignore[arg-type]
    assert probe.receiver_timestamps and "unavailable" not in probe.end([1000], 0, 1)


def test_a_bound_on_the_unmeasurable_figure_fails_with_the_reason():
    w, _, _ = _end(qdisc="netem delay 50ms 1ms")
    result = SendResult(wfree=w, kernel="6.1.0-56-amd64", topology="veth qdisc='netem delay 50ms 1ms'").to_dict()
    bounds, _ = wfree_bounds(p99_us=1e9)
    rows = check(bounds, result)
    assert rows and not any(ok for _, _, ok in rows), rows  # never a silent pass
    table = failure_table(rows, result)
    assert "not measured" in table and "skb_orphan_partial() in netem_enqueue()" in table, table
    assert "not measured: sock_wfree timing not measurable" in SendResult(wfree=w).summary()

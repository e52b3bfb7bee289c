"""Pure functions: parsers and statistics, no kernel needed."""

from __future__ import annotations

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import qdisc
from pytest_udpsend.measure import counters, probes

SOFTNET_15 = """\
00000010 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000000 00000000 00000000 00000000 00000000
00000020 00000000 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000
"""
SOFTNET_13 = """\
0000000a 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
0000000b 00000000 00000004 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002
"""
SOFTNET_11 = "00000001 00000000 00000007 0 0 0 0 0 0 0 0\n00000002 00000000 00000008 0 0 0 0 0 0 0 0\n"


def test_softnet_15_columns_uses_cpu_column():
    stats = counters.parse_softnet(SOFTNET_15)
    assert stats == {0: {"processed": 16, "dropped": 1, "time_squeeze": 2}, 1: {"processed": 32, "dropped": 0, "time_squeeze": 3}}


def test_softnet_13_columns_skips_offline_cpus():
    assert sorted(counters.parse_softnet(SOFTNET_13)) == [0, 2]
    assert counters.parse_softnet(SOFTNET_13)[2]["time_squeeze"] == 4


def test_softnet_old_layout_counts_lines():
    assert counters.parse_softnet(SOFTNET_11)[1]["time_squeeze"] == 8


def test_softnet_delta():
    before = counters.parse_softnet(SOFTNET_15)
    after = {0: {"processed": 20, "dropped": 1, "time_squeeze": 5}, 1: {"processed": 32, "dropped": 0, "time_squeeze": 3}}
    assert counters.softnet_delta(before, after) == {
        "0": {"processed": 4, "dropped": 0, "time_squeeze": 3},
        "1": {"processed": 0, "dropped": 0, "time_squeeze": 0},
    }


def test_snmp_names_like_nstat():
    text = "Ip: Forwarding OutDiscards\nIp: 2 7\nUdp: InDatagrams SndbufErrors\nUdp: 1 9\n"
    assert counters.parse_snmp(text) == {"IpForwarding": 2, "IpOutDiscards": 7, "UdpInDatagrams": 1, "UdpSndbufErrors": 9}
    assert counters.parse_snmp("Udp6SndbufErrors                 4\nUdp6OutDatagrams 10\n") == {
        "Udp6SndbufErrors": 4,
        "Udp6OutDatagrams": 10,
    }


@pytest.mark.parametrize(
    ("text", "kind", "params"),
    [
        ("tbf rate 200mbit burst 32kb latency 50ms", "tbf", {"rate": 25_000_000, "burst": 32768, "latency": 50_000}),
        ("htb rate 1gbit ceil 2gbit", "htb", {"rate": 125_000_000, "ceil": 250_000_000}),
        ("pfifo limit 10", "pfifo", {"limit": 10}),
        ("fq_codel target 5ms interval 100ms", "fq_codel", {"fqc_target": 5000, "fqc_interval": 100_000}),
    ],
)
def test_qdisc_parse(text, kind, params):
    spec = qdisc.parse(text)
    assert spec.kind == kind and spec.params == params


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown or missing qdisc kind"),
        ("netem delay 10ms", "unknown or missing qdisc kind"),
        ("tbf rate", "needs a value"),
        ("tbf rate 1mbit burst 1kb lat 5ms", "tbf has no parameter 'lat'; accepted: rate, burst, latency, limit, mtu"),
        ("pfifo limit many", "'many' is not a whole number"),
        ("htb ceil 1mbit", "htb needs rate"),
    ],
)
def test_qdisc_parse_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        qdisc.parse(text)


def test_latency_stats_nearest_rank():
    stats = probes.latency_stats([i * 1000 for i in range(1, 101)])  # 1..100 us
    assert (stats["count"], stats["p50_us"], stats["p90_us"], stats["p99_us"], stats["max_us"]) == (100, 50.0, 90.0, 99.0, 100.0)
    assert sum(stats["histogram"]["counts"]) == 100
    assert probes.latency_stats([])["count"] == 0

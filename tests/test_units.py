"""Pure functions: parsers and statistics, no kernel needed."""

from __future__ import annotations

import os

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
    assert stats == {
        0: {"processed": 16, "dropped": 1, "time_squeeze": 2},
        1: {"processed": 32, "dropped": 0, "time_squeeze": 3},
    }


def test_softnet_13_columns_skips_offline_cpus():
    assert sorted(counters.parse_softnet(SOFTNET_13)) == [0, 2]
    assert counters.parse_softnet(SOFTNET_13)[2]["time_squeeze"] == 4


def test_softnet_old_layout_counts_lines():
    assert counters.parse_softnet(SOFTNET_11)[1]["time_squeeze"] == 8


def test_softnet_delta():
    before = counters.parse_softnet(SOFTNET_15)
    after = {
        0: {"processed": 20, "dropped": 1, "time_squeeze": 5},
        1: {"processed": 32, "dropped": 0, "time_squeeze": 3},
    }
    assert counters.softnet_delta(before, after) == {
        "0": {"processed": 4, "dropped": 0, "time_squeeze": 3},
        "1": {"processed": 0, "dropped": 0, "time_squeeze": 0},
    }


def test_snmp_names_like_nstat():
    text = "Ip: Forwarding OutDiscards\nIp: 2 7\nUdp: InDatagrams SndbufErrors\nUdp: 1 9\n"
    assert counters.parse_snmp(text) == {
        "IpForwarding": 2,
        "IpOutDiscards": 7,
        "UdpInDatagrams": 1,
        "UdpSndbufErrors": 9,
    }
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
        ("wred limit 10", "unknown or missing qdisc kind"),
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
    assert (stats["count"], stats["p50_us"], stats["p90_us"], stats["p99_us"], stats["max_us"]) == (
        100,
        50.0,
        90.0,
        99.0,
        100.0,
    )
    assert sum(stats["histogram"]["counts"]) == 100
    assert probes.latency_stats([])["count"] == 0


# --- CPU sets: the forms rps_cpus / cpu_pressure(cpus=...) / --rps-cpus accept (host/cpus.py) ---

from pytest_udpsend.host import cpus  # noqa: E402


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1, (1,)),
        ([2, 0, 2], (0, 2)),  # CPU numbers
        ("2", (1,)),
        ("0x2", (1,)),
        ("ff", tuple(range(8))),
        ("0X3", (0, 1)),  # hex masks as sysfs takes them
        ("1,00000000", (32,)),
        ("80000000,00000001", (0, 63)),
        ("1,00000000,00000000", (64,)),  # > 32 CPUs
        ("1-3,5", (1, 2, 3, 5)),
        ("0,2", (0, 2)),
        ("10-10", (10,)),
        (" 4-5 ", (4, 5)),  # taskset -c lists
    ],
)
def test_cpu_forms(given, expected):
    assert cpus.parse(given, "rps_cpus") == expected


@pytest.mark.parametrize("bad", ["", "0", "zz", "3-1", "1-", "0x", "1,,2", True, [True], [], 1.5, "1-99999"])
def test_cpu_forms_refused_with_the_accepted_ones(bad):
    with pytest.raises(ConfigError, match=r"rps_cpus=.*taskset -c.*hex mask as sysfs"):
        cpus.parse(bad, "rps_cpus")


@pytest.mark.parametrize(
    ("cpu_set", "mask"),
    [
        ((0,), "1"),
        ((1,), "2"),
        ((0, 1, 2, 3), "f"),
        ((31,), "80000000"),
        ((32,), "1,00000000"),
        ((1, 63, 64), "1,80000000,00000002"),
    ],
)
def test_mask_written_in_sysfs_groups(cpu_set, mask):
    assert cpus.format_mask(cpu_set) == mask
    assert cpus.parse(mask, "m") == tuple(sorted(cpu_set))  # and read back the same


def test_cpu_list_form():
    assert cpus.format_list((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"


@pytest.mark.skipif(4 in os.sched_getaffinity(0), reason="needs a host where CPU 4 is not available")
def test_a_lone_number_string_is_a_mask_and_the_error_says_so():
    with pytest.raises(ConfigError, match=r"rps_cpus='10' \(read as CPU\(s\) 4\).*hex mask: write \[N\] or 'N-N'"):
        cpus.check_online(cpus.parse("10", "rps_cpus"), "10", "rps_cpus")


def test_cli_takes_the_marker_forms():
    from pytest_udpsend.command import run

    assert run._cpu_list("2") == [1] and run._cpu_list("1-1") == [1]
    assert run._pressure("0x2:3") == ([1], 3) and run._pressure("1-1") == ([1], 2)


# --- the bpf probe: built once per session, falls back under auto, fails once under bpf ---


def test_bpf_probe_build_failure_is_kept_and_auto_falls_back(monkeypatch):
    import bcc

    from pytest_udpsend.errors import PrivilegeError
    from pytest_udpsend.measure import bpfprobe

    calls = []

    class FailingBPF:
        @staticmethod
        def support_kfunc() -> bool:
            return False

        def __init__(self, **kw: object) -> None:
            calls.append(kw)
            raise Exception("error: incomplete type 'struct bpf_wq'")

    monkeypatch.setattr(bcc, "BPF", FailingBPF)
    monkeypatch.setattr(probes, "bpf_unavailable", lambda: None)
    chosen = probes.select("auto")
    assert chosen.backend == "timestamp" and "fell back to the timestamp estimate" in chosen.reason
    with pytest.raises(PrivilegeError, match="--udpsend-backend bpf: the bcc probe could not be built"):
        probes.select("bpf")
    probe = bpfprobe.BpfProbe("test")
    for _ in range(3):
        with pytest.raises(PrivilegeError):
            probe.build()
    assert len(calls) == 3  # one compile for each select() above and one for this probe: never retried

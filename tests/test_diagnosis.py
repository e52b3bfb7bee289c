"""SendResult.diagnosis: each finding appears from a real measurement, and not where its evidence is absent."""

from __future__ import annotations

import pytest

from pytest_udpsend.measure.diagnosis import diagnose
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.results.bounds import Bound, failure_table


def kinds(r: SendResult) -> list[str]:
    """A short name per finding, from its opening words."""
    names = {
        "SO_SNDBUF clamped": "clamp",
        "sock_wfree deferred": "deferral",
        "NET_RX budget": "budget",
        "the send buffer was full": "full",
        "ENOBUFS": "enobufs",
        "the receiver dropped": "rcvbuf",
        "the input backlog dropped": "backlog",
    }
    return [next(v for k, v in names.items() if k in d["finding"]) for d in r.diagnosis]


def test_plain_veth_has_no_clamp_and_no_deferral(udp_sender, wfree_probe):
    """Plain veth: sock_wfree runs inside send(); a size under wmem_max is not clamped."""
    r = udp_sender.run(duration=0.3, cpu=0, sndbuf=65536)
    assert r.wfree["count"] > 0  # the release timing was measured, and shows no deferral
    assert "clamp" not in kinds(r) and "deferral" not in kinds(r), r.diagnosis
    assert r.diagnosis == diagnose(r)  # what the sender stored is what the measurement gives


def test_clamp_is_named_with_the_remedy(udp_sender, sysctl):
    sysctl.set("net.core.wmem_max", 4608)
    clamped = udp_sender.run(duration=0.3, cpu=0, sndbuf=8 << 20)
    forced = udp_sender.run(duration=0.3, cpu=0, sndbuf=8 << 20, force_sndbuf=True)
    (finding,) = [d for d in clamped.diagnosis if "clamped" in d["finding"]]
    assert "8388608 B requested, 9216 B effective" in finding["finding"]
    assert "net.core.wmem_max=4608" in finding["finding"] and "SO_SNDBUFFORCE" in finding["finding"]
    assert "getsockopt(SO_SNDBUF)" in finding["evidence"]
    assert "clamp" not in kinds(forced)
    assert "diagnosis: SO_SNDBUF clamped" in clamped.summary()  # what `udpsend run` prints


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
def test_time_squeeze_names_the_budget(udp_sender):
    r = udp_sender.run(duration=0.5, cpu=0, receiver_cpu=1, sndbuf=4 << 20, force_sndbuf=True)
    assert r.time_squeeze > 0
    (finding,) = [d for d in r.diagnosis if "budget exhausted" in d["finding"]]
    assert "net.core.netdev_budget=8" in finding["finding"] and "CPU 1:" in finding["finding"]
    assert "softnet_stat column 3" in finding["evidence"]


@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
def test_a_full_buffer_is_named(udp_sender):
    """A starved NAPI kthread keeps skbs charged: the buffer fills, EAGAIN follows."""
    r = udp_sender.run(duration=0.3, cpu=0, receiver_cpu=1, sndbuf=4096)
    assert r.eagain > 0
    (finding,) = [d for d in r.diagnosis if "send buffer was full" in d["finding"]]
    assert f"against sndbuf {r.sndbuf_effective} B effective" in finding["finding"]
    assert "SIOCOUTQ" in finding["evidence"]


@pytest.mark.topology(qdisc="tbf rate 20mbit burst 4kb limit 3000")
def test_qdisc_drops_are_named(udp_sender):
    r = udp_sender.run(duration=0.3, cpu=0, sndbuf=4 << 20, force_sndbuf=True)
    assert r.enobufs > 0
    assert "enobufs" in kinds(r) and "full" not in kinds(r), r.diagnosis
    assert "tbf" in next(d["finding"] for d in r.diagnosis if "ENOBUFS" in d["finding"])


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_max_backlog": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
def test_backlog_drops_are_named(udp_sender):
    # 1 s: on a loaded machine (xdist) a slowed sender may not overrun an 8-packet backlog within 0.3 s
    r = udp_sender.run(duration=1.0, cpu=0, receiver_cpu=1, sndbuf=4 << 20, force_sndbuf=True)
    assert sum(c["dropped"] for c in r.softnet.values()) > 0
    assert "backlog" in kinds(r) and "netdev_max_backlog=8" in " ".join(d["finding"] for d in r.diagnosis)


def test_bpf_contexts_are_reported_as_shares():
    """The wording of the exact backend (no kprobes on this host: its figures are given here)."""
    r = SendResult(
        wfree={
            "backend": "bpf",
            "count": 100,
            "p99_us": 3800.0,
            "contexts": {"inline": 30, "softirq": 8, "ksoftirqd": 62, "napi_thread": 0},
        }
    )
    (finding,) = diagnose(r)
    assert "62% of releases ran in ksoftirqd, 8% of releases ran in softirq, p99 3.8 ms" in finding["finding"]
    assert (
        diagnose(SendResult(wfree={"backend": "bpf", "count": 100, "p99_us": 20.0, "contexts": {"inline": 100}})) == []
    )


def test_the_failure_table_ends_with_the_diagnosis():
    r = SendResult(
        sndbuf_requested=8 << 20, sndbuf_effective=9216, sysctls={"net.core.wmem_max": "4608"}, kernel="6.18"
    )
    r.diagnosis = diagnose(r)
    text = failure_table([(Bound("eagain_rate", "eagain_rate", None, 0.01), 0.5, False)], r.to_dict())
    assert text.splitlines()[-3] == "  diagnosis:" and "SO_SNDBUF clamped" in text.splitlines()[-2]

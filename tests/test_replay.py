"""Replay (issue 28): a capture's UDP datagrams through the scenario's socket, with per-burst results.

Reading first (pcaps built with scapy in tmp_path, nothing measured), then what a user sees for a
bad capture, then real runs on real namespaces with wide bounds (20/20 on a loaded 2-core VM)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("scapy")

from scapy.layers.inet import IP, TCP, UDP, fragment  # noqa: E402
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import PcapNgWriter, PcapWriter  # noqa: E402

from pytest_udpsend import cli  # noqa: E402
from pytest_udpsend.command import run  # noqa: E402
from pytest_udpsend.errors import ConfigError  # noqa: E402
from pytest_udpsend.measure import replay  # noqa: E402
from pytest_udpsend.measure.params import make_params  # noqa: E402
from pytest_udpsend.results import store  # noqa: E402

pytest_plugins = ["pytester"]

SIZES = (64, 300, 900, 1400)
T0 = 1_700_000_000 * 10**9  # captures start at a real epoch, in ns


def udp(size: int, src: str = "10.1.0.1", dst: str = "10.1.0.2", sport: int = 5000, dport: int = 53) -> Any:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(bytes(size))


def write(path: Path, records: list[tuple[int, Any]], wirelen: dict[int, int] | None = None, ng: bool = False) -> Path:
    """(ns from T0, frame or bytes) records; ``wirelen``: record index -> original length (a snaplen cut)."""
    writer = PcapNgWriter(str(path)) if ng else PcapWriter(str(path), linktype=1, nano=True)
    if not ng:
        writer.write_header(None)  # write_packet() below writes records only
    for i, (t, frame) in enumerate(records):
        data, at = bytes(frame), T0 + t
        if ng:
            pkt = Ether(data)
            pkt.time = at / 1e9
            writer.write(pkt)
        else:
            writer.write_packet(data, sec=at // 10**9, usec=at % 10**9, wirelen=(wirelen or {}).get(i))
    writer.close()
    return path


def bursts_capture(
    path: Path,
    gap_ns: int = 20_000,
    bursts: int = 3,
    per: int = 200,
    apart_ns: int = 200_000_000,
    sizes: tuple[int, ...] = SIZES,
) -> tuple[Path, list[int], list[int]]:
    """``bursts`` x ``per`` datagrams of mixed sizes, ``gap_ns`` apart inside a burst, bursts ``apart_ns`` apart."""
    rng = random.Random(28)
    times = [b * apart_ns + i * gap_ns for b in range(bursts) for i in range(per)]
    chosen = [rng.choice(sizes) for _ in times]
    return write(path, [(t, udp(s)) for t, s in zip(times, chosen)]), chosen, times


# ------------------------------------------------------------------------------------------- reading


def test_three_bursts_keep_each_datagram_its_size_and_time(tmp_path):
    path, sizes, times = bursts_capture(tmp_path / "b.pcap")
    s = replay.read(path)
    assert list(s.sizes) == sizes and list(s.times_ns) == times
    assert list(s.burst_ends) == [200, 400, 600]
    assert [b["bytes"] for b in s.burst_table()] == [sum(sizes[i : i + 200]) for i in (0, 200, 400)]
    assert s.span_ns == 400_000_000 + 199 * 20_000
    assert s.expected_s(2.0, 1) == pytest.approx(s.span_ns / 2e9) and s.expected_s(0, 3) == 0
    assert list(s.due_ns(0.5))[:2] == [0, 40_000] and len(s.due_ns(0)) == 0


def test_burst_rule_even_stream_is_one_burst_paced_frames_are_many():
    even = replay.make_schedule([(i * 1_000_000, 100) for i in range(100)], "even", {})  # 1 ms apart: the median
    assert list(even.burst_ends) == [100]
    frames = replay.make_schedule(
        [(f * 33_000_000 + i * 10_000, 1200) for f in range(5) for i in range(6)], "media", {}
    )
    assert list(frames.burst_ends) == [6, 12, 18, 24, 30]


def test_pcapng_and_a_filter_pick_one_flow(tmp_path):
    records = [(i * 1000, udp(100 + i, dport=53 if i % 2 else 123)) for i in range(20)]
    path = write(tmp_path / "two.pcapng", records, ng=True)
    assert len(replay.read(path).sizes) == 20
    dns = replay.read(path, "dst=10.1.0.2, dport=53")
    assert list(dns.sizes) == [100 + i for i in range(1, 20, 2)]
    assert dns.notes["filtered_out"] == 10
    with pytest.raises(ConfigError) as info:
        replay.read(path, "port=9999")
    assert "matches none of the 20 UDP datagrams" in str(info.value) and "\n" not in str(info.value)


def test_ip_fragments_are_one_datagram_sized_from_the_udp_header(tmp_path):
    big4 = fragment(IP(src="10.1.0.1", dst="10.1.0.2", id=7) / UDP(sport=1, dport=2) / Raw(bytes(4000)), fragsize=1480)
    big6 = fragment6(
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(id=9) / UDP(sport=1, dport=2) / Raw(bytes(3000)), 1280
    )
    assert len(big4) == 3 and len(big6) == 3
    records = [(0, udp(100))]
    records += [(1000 + i, Ether() / f) for i, f in enumerate(reversed(big4))]  # the last fragment first
    records += [(5000 + i, Ether() / f) for i, f in enumerate(big6)]
    s = replay.read(write(tmp_path / "frag.pcap", records))
    assert list(s.sizes) == [100, 4000, 3000]
    assert list(s.times_ns) == [0, 1000, 5000]  # at the earliest fragment
    assert s.notes["fragments"] == 6 and s.notes["fragmented_datagrams"] == 2


def test_gro_super_packet_is_split_into_the_flows_segments(tmp_path):
    records = [(0, udp(1200)), (1000, udp(10 * 1200 + 500)), (2000, udp(700))]
    records += [(3000, udp(3000, sport=7777))]  # a flow with nothing that fits the MTU: MTU-sized segments
    s = replay.read(write(tmp_path / "gro.pcap", records))
    assert list(s.sizes) == [1200] + [1200] * 10 + [500] + [700] + [1472, 1472, 56]
    assert s.notes["super_packets"] == 2 and s.notes["segments"] == 14
    assert set(s.times_ns[1:12]) == {1000}
    assert list(replay.read(tmp_path / "gro.pcap", "sport=7777", mtu=9000).sizes) == [
        3000
    ]  # a jumbo link: one datagram


def test_a_record_beyond_64k_is_sized_from_its_wire_length(tmp_path):
    frame = bytes(
        Ether() / IP(src="10.1.0.1", dst="10.1.0.2", len=0) / UDP(sport=1, dport=2, len=0) / Raw(bytes(70_000))
    )
    s = replay.read(write(tmp_path / "big.pcap", [(0, frame)]))
    assert sum(s.sizes) == 70_000 and max(s.sizes) == 1472


def test_truncated_records_are_sized_from_their_length_fields(tmp_path):
    whole = bytes(udp(1000))
    cut_payload, cut_udp_header = whole[:96], whole[: 14 + 20 + 4]
    path = write(
        tmp_path / "snap.pcap", [(0, cut_payload), (10, cut_udp_header)], wirelen={0: len(whole), 1: len(whole)}
    )
    s = replay.read(path)
    assert list(s.sizes) == [1000, 1000]
    assert s.notes["truncated_records"] == 2


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello, this is text\n" * 10, "is not a pcap or pcapng capture"),
        (b"", "is not a pcap or pcapng capture"),
        (None, "no such file"),
    ],
)
def test_what_cannot_be_read_is_refused_in_one_sentence(tmp_path, content, says):
    path = tmp_path / "x.pcap"
    if content is not None:
        path.write_bytes(content)
    for check in (lambda: make_params(replay=str(path)), lambda: replay.read(path)):
        with pytest.raises(ConfigError) as info:
            check()
        assert says in str(info.value) and "\n" not in str(info.value)


def test_a_capture_without_udp_is_refused(tmp_path):
    path = write(tmp_path / "tcp.pcap", [(0, Ether() / IP() / TCP())])
    with pytest.raises(ConfigError, match="holds no UDP datagrams"):
        replay.read(path)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"speed": 2.0}, "speed=2.0 applies to replay= only"),
        ({"replay_filter": "dport=53"}, "replay_filter='dport=53' applies to replay= only"),
        ({"replay": "shape:dns", "duration": 1.0}, "duration=1.0 does not apply with replay="),
        ({"replay": "shape:dns", "rate": 1000}, "rate=1000 does not apply with replay="),
        ({"replay": "shape:dns", "mode": "sendmmsg"}, "mode='sendmmsg' does not apply with replay="),
        ({"replay": "shape:dns", "speed": -1}, "speed=-1: must be a number from 0 to 1000"),
        ({"replay": "shape:dns", "loop": 0}, "loop=0: must be an integer from 1"),
        ({"replay": "shape:dns", "replay_filter": "proto=udp"}, "'proto=udp' is not one of src=, dst="),
        ({"replay": "shape:nope"}, "no such built-in shape; accepted: 'shape:telemetry'"),
    ],
)
def test_bad_replay_arguments_are_one_sentence(kwargs, says):
    with pytest.raises(ConfigError) as info:
        make_params(**kwargs)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_params_round_trip_and_built_in_shapes():
    p = make_params(replay=Path("shape:telemetry"), speed=0, loop=2)
    assert p.replay == "shape:telemetry" and make_params(**p.as_dict()) == p  # udpsend_result re-validates
    for name in replay.SHAPES:
        s = replay.read("shape:" + name)
        assert len(s.sizes) > 100 and len(s.burst_ends) >= 1
    assert len(replay.read("shape:telemetry").burst_ends) == 10
    assert len(replay.read("shape:media").burst_ends) == 60


def test_marker_with_a_non_capture_is_a_collection_error(pytester):
    pytester.path.joinpath("notes.txt").write_text("not a capture\n")
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.udpsend(replay="notes.txt")
        def test_m(udpsend_result):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*@pytest.mark.udpsend: replay='notes.txt' is not a pcap or pcapng capture*"])
    assert "Traceback" not in result.stdout.str()


def test_cli_takes_the_replay_options():
    args = cli.build_parser().parse_args(
        ["run", "--replay", "x.pcap", "--speed", "0", "--loop", "2", "--replay-filter", "dport=53"]
    )
    assert run.replay_args(args) == {
        "replay": "x.pcap",
        "speed": 0.0,
        "loop": 2,
        "replay_filter": "dport=53",
        "replay_mtu": 1500,
    }
    args.exec_argv = ["./mine"]
    with pytest.raises(ConfigError, match="use one of them"):
        run.replay_args(args)


# ------------------------------------------------------------------------------------ real sends


def test_three_bursts_replayed_once_each_with_its_size_on_time(udp_sender, tmp_path):
    path, sizes, _ = bursts_capture(tmp_path / "b.pcap")
    r = udp_sender.run(replay=str(path), cpu=0)
    assert (r.attempts, r.sent, r.calls) == (600, 600, 600)
    assert all(c.endswith("ok") for c in r.checks), r.checks  # sent == UdpOutDatagrams: each datagram once
    rp = r.replay
    assert [b["attempts"] for b in rp["bursts"]] == [200, 200, 200]
    assert [b["sent_bytes"] for b in rp["bursts"]] == [sum(sizes[i : i + 200]) for i in (0, 200, 400)]
    span = 400e-3 + 199 * 20e-6
    assert rp["expected_s"] == pytest.approx(span)
    assert abs(r.duration_s - span) <= 0.1 * span, r.summary()
    assert "replay" in r.summary() and "3 bursts" in r.summary()
    doc = store.document(store.environment("timestamp"), {"t": {"outcome": "passed", "samples": [r.to_dict()]}})
    path_json = tmp_path / "r.json"
    path_json.write_text(json.dumps(doc))
    assert store.load(path_json)["tests"]["t"]["samples"][0]["replay"]["bursts"][2]["attempts"] == 200


def test_speed_zero_ignores_the_gaps_and_loop_repeats(udp_sender, tmp_path):
    path, _, _ = bursts_capture(tmp_path / "b.pcap")
    r = udp_sender.run(replay=str(path), speed=0, loop=2, cpu=0)
    assert (r.attempts, r.sent) == (1200, 1200)
    assert r.duration_s < 0.1 * 0.4  # the 200 ms gaps were not kept
    assert [(b["loop"], b["burst"]) for b in r.replay["bursts"]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert r.replay["timing_error"] is None


@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
def test_a_starved_receive_path_gives_eagain_per_burst(udp_sender, tmp_path):
    """As examples/test_eagain_story.py's starved NAPI thread: a small buffer fills inside each burst."""
    path, _, _ = bursts_capture(tmp_path / "b.pcap", gap_ns=1000, sizes=(1000, 1400))
    r = udp_sender.run(replay=str(path), cpu=0, receiver_cpu=1, sndbuf=4096)
    bursts = r.replay["bursts"]
    assert (
        r.attempts == 600 and r.sent + r.eagain + r.enobufs + r.other_errors == 600
    )  # counted and dropped, never retried
    assert sum(b["eagain"] for b in bursts) == r.eagain
    assert all(b["eagain"] > 0 for b in bursts), bursts
    assert max(b["outq_max"] for b in bursts) >= r.sndbuf_effective // 2, bursts
    worst = bursts[r.replay["worst_burst"]]
    assert worst["eagain_rate"] == max(b["eagain_rate"] for b in bursts)

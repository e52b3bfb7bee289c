"""A traffic shape, not a send rate, decides EAGAIN: replay a sender's bursts through the socket.

A metrics agent flushes every 200 ms: 300 datagrams of 200-1400 bytes, 5 us apart
(``replay="shape:telemetry"``, built in: no capture file needed; ``replay=PATH`` takes
your own pcap or pcapng).  Its average, about 10 Mbit/s, fits a 20 Mbit/s link twice;
each flush does not.  A tbf qdisc holds every queued skb still charged to the socket
(``sock_wfree`` runs only when tbf dequeues it), so a flush of about 240 KB (500 KB of
skb truesize) overflows a send buffer of 32 or 256 KB, whatever the machine: the link
drains about 2.5 KB per millisecond while the sender fills the buffer in microseconds.
Spread the same datagrams evenly over the same two seconds and the buffer never holds
more than a datagram or two.

Every claim here is fixed by that arithmetic with a wide margin (docs/calibration.md):
a flush is several times the send buffer, an evenly paced datagram drains before the
next one is sent.  A per-burst bound (``per="burst"``) holds for every burst of the
replay; a failure names the worst burst, its start time in the capture and its counts.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pytest_udpsend.measure import replay

# 20 Mbit/s: a 240 KB flush takes about 100 ms to drain, half the flush interval, so flushes do not pile up.
# latency 50 ms: the queue (about 125 KB) holds more than the send buffer, so the buffer fills first (EAGAIN),
# not the queue (silent drops).
TBF = "tbf rate 20mbit burst 16kb latency 50ms"
# Falling this far behind, the sender catches up with 30 datagrams at once: still far from filling the buffer,
# so below it the even replay must see no EAGAIN at all.
LATE_US = 20_000


def even_capture(path: Path, schedule: replay.Schedule) -> Path:
    """The schedule's datagrams, same sizes and order, evenly spread over its period, as a pcap whose
    records carry headers only (a snaplen of 42: the reader sizes each from its UDP length field)."""
    gap_ns = schedule.period_ns() // len(schedule.sizes)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 42, 1)]  # pcap, microseconds, Ethernet
    for i, size in enumerate(schedule.sizes):
        t_us = 1_700_000_000_000_000 + i * gap_ns // 1000
        frame = (
            b"\x02" * 6
            + b"\x04" * 6
            + b"\x08\x00"
            + struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                28 + size,
                i & 0xFFFF,
                0,
                64,
                17,
                0,
                bytes([10, 0, 0, 1]),
                bytes([10, 0, 0, 2]),
            )
            + struct.pack("!HHHH", 40000, 8125, 8 + size, 0)
        )
        out.append(struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame) + size) + frame)
    path.write_bytes(b"".join(out))
    return path


@pytest.mark.topology(qdisc=TBF)
@pytest.mark.udpsend(replay="shape:telemetry", sndbuf=16384, cpu=0)
@pytest.mark.eagain_rate(min=0.2, per="burst")
def test_every_flush_overflows_a_small_buffer(udpsend_result):
    """16384 requested is 32 KB effective: a flush is about eight times that.  Every burst, the worst one
    included, loses at least a fifth of its datagrams (it takes a stall of over 100 ms in the middle of a
    flush for the link to drain that much)."""
    r = udpsend_result
    assert r.attempts == r.replay["datagrams"] == 3000  # each datagram once, an EAGAIN dropped, never retried
    assert len(r.replay["bursts"]) == 10
    assert sum(b["eagain"] for b in r.replay["bursts"]) == r.eagain


@pytest.mark.topology(qdisc=TBF)
def test_the_same_datagrams_evenly_paced_never_fill_it(udp_sender, tmp_path):
    """Both runs send the same 3000 datagrams over the same two seconds into the same link and buffer
    (131072 requested, 256 KB effective, about 150 datagrams' truesize); only the timing differs.  Each
    flush (about 500 KB of truesize) overflows it; about 670 us between datagrams (a 1400-byte one leaves a
    20 Mbit/s link in 560 us) never does while the sender keeps the schedule.  A sender that falls behind
    sends what is due at once, a burst of its own: on a loaded machine a 100 ms stall does that, and
    ``late_max_us`` says so."""
    telemetry = replay.shape("telemetry")
    bursts = udp_sender.run(replay="shape:telemetry", sndbuf=131072, cpu=0)
    even = udp_sender.run(replay=str(even_capture(tmp_path / "even.pcap", telemetry)), sndbuf=131072, cpu=0)
    assert even.attempts == bursts.attempts == 3000
    assert len(even.replay["bursts"]) == 1 and even.replay["bytes"] == bursts.replay["bytes"]
    assert all(b["eagain"] > 0 for b in bursts.replay["bursts"]), bursts.summary()
    assert even.eagain_rate < bursts.eagain_rate / 10, (even.summary(), bursts.summary())
    if even.replay["late_max_us"] < LATE_US:  # it kept its schedule: then not a single EAGAIN
        assert even.eagain == 0, even.summary()

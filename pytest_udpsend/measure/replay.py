"""Replay: a capture's UDP datagrams as a schedule for the C send loop (sizes and send times).

A capture record is not an application datagram, so sizes come from the length fields:

* a plain record: the UDP length field minus its 8-byte header, also when a snaplen cut the record
  (then from the IP length field if even the UDP header was cut);
* IP fragments (IPv4, or IPv6 with a fragment header): one datagram, sized from the UDP length field
  of its first fragment, sent at the time of its earliest fragment (any order; a datagram whose
  first fragment is missing cannot be sized and is skipped, and counted);
* a GSO/GRO super-packet: an unfragmented record whose UDP payload exceeds the capture link's MTU
  (``replay_mtu``, default 1500), or whose length field is 0 (larger than 64 KB, sized from the wire
  length): split into segments of the flow's largest datagram that fits the MTU (or the MTU's
  payload, if the flow has none), the last one shorter, all at the record's time.  They are replayed
  as that many plain datagrams, so each is charged on its own, not once per super-send as a GSO
  sender's is.

Bursts (per-burst results): a gap between two datagrams starts a new burst when it is longer than
both ``BURST_GAP_MIN_NS`` (1 ms) and ``BURST_GAP_FACTOR`` (10) times the capture's median gap.
An even stream is one burst; a paced stream's frames are one burst each.

``replay_filter`` picks datagrams by keywords, all of which must hold: ``src=ADDR``, ``dst=ADDR``,
``host=ADDR`` (either end), ``sport=N``, ``dport=N``, ``port=N`` (either end), separated by spaces or
commas, e.g. ``"dst=10.0.0.2 dport=53"``.  No BPF: nothing to compile.

Built-in shapes (``replay="shape:NAME"``, ``SHAPES``) are generated here, no file and no scapy needed.
"""

from __future__ import annotations

import ipaddress
import os
import random
import statistics
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure.shapes import BurstShape, ScheduleSummary

BURST_GAP_MIN_NS = 1_000_000
BURST_GAP_FACTOR = 10
BURST_RULE = (
    f"a gap longer than both {BURST_GAP_MIN_NS / 1e6:g} ms and {BURST_GAP_FACTOR}x the capture's median "
    "gap starts a new burst"
)
UDP_HEADER = 8
SHAPE_PREFIX = "shape:"
FILTER_KEYS = ("src", "dst", "host", "sport", "dport", "port")


@dataclass(frozen=True)
class Filter:
    """What ``replay_filter`` asks for; None: any."""

    src: str | None = None
    dst: str | None = None
    host: str | None = None
    sport: int | None = None
    dport: int | None = None
    port: int | None = None

    def matches(self, src: str, dst: str, sport: int, dport: int) -> bool:
        return (
            (self.src is None or self.src == src)
            and (self.dst is None or self.dst == dst)
            and (self.host is None or self.host in (src, dst))
            and (self.sport is None or self.sport == sport)
            and (self.dport is None or self.dport == dport)
            and (self.port is None or self.port in (sport, dport))
        )


def parse_filter(text: str | None) -> Filter:
    """``"dst=10.0.0.2 dport=53"`` -> Filter; ConfigError names the bad word and what is accepted."""
    if text is None:
        return Filter()
    if not isinstance(text, str):
        raise ConfigError(f"replay_filter={text!r}: must be a string of KEY=VALUE words, e.g. 'dst=10.0.0.2 dport=53'")
    values: dict[str, Any] = {}
    for word in text.replace(",", " ").split():
        key, sep, value = word.partition("=")
        if not sep or key not in FILTER_KEYS or key in values:
            raise ConfigError(
                f"replay_filter={text!r}: {word!r} is not one of {', '.join(k + '=' for k in FILTER_KEYS)} "
                "(each at most once), e.g. 'dst=10.0.0.2 dport=53'"
            )
        values[key] = _port(text, word, value) if key.endswith("port") else _address(text, word, value)
    return Filter(**values)


def _port(text: str, word: str, value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ConfigError(f"replay_filter={text!r}: {word!r}: a port is a number from 0 to 65535")
    return int(value)


def _address(text: str, word: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"replay_filter={text!r}: {word!r}: an address is an IPv4 or IPv6 address") from None


@dataclass(frozen=True)
class Schedule:
    """The datagrams to send, in order: sizes (bytes of UDP payload) and send times (ns from the first
    datagram, on the capture's clock); ``burst_ends``: one past each burst's last datagram."""

    sizes: array[int]
    times_ns: array[int]
    burst_ends: array[int]
    source: str
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def span_ns(self) -> int:
        return self.times_ns[-1] if self.times_ns else 0

    def median_gap_ns(self) -> int:
        gaps = [b - a for a, b in zip(self.times_ns, self.times_ns[1:])]
        return int(statistics.median(gaps)) if gaps else 0

    def period_ns(self) -> int:
        """One pass's length on the capture's clock when looped: its span plus one median gap."""
        return self.span_ns + self.median_gap_ns()

    def due_ns(self, speed: float) -> array[int]:
        """Send times on the wall clock: the capture's scaled by 1/speed; empty for speed 0 (no pacing)."""
        if speed == 0:
            return array("Q")
        return array("Q", (int(t / speed) for t in self.times_ns))

    def expected_s(self, speed: float, loops: int) -> float:
        """The wall time the schedule asks for (0 at speed 0)."""
        return 0.0 if speed == 0 else ((loops - 1) * self.period_ns() + self.span_ns) / speed / 1e9

    def burst_table(self) -> list[BurstShape]:
        """Each burst as the capture has it: first and last datagram, start and span on its clock, bytes."""
        table: list[BurstShape] = []
        first = 0
        for end in self.burst_ends:
            table.append(
                {
                    "first": first,
                    "datagrams": end - first,
                    "bytes": sum(self.sizes[first:end]),
                    "start_s": round(self.times_ns[first] / 1e9, 6),
                    "span_s": round((self.times_ns[end - 1] - self.times_ns[first]) / 1e9, 6),
                }
            )
            first = end
        return table

    def describe(self) -> ScheduleSummary:
        return {
            "source": self.source,
            "datagrams": len(self.sizes),
            "bytes": sum(self.sizes),
            "span_s": round(self.span_ns / 1e9, 6),
            "bursts": len(self.burst_ends),
            "burst_rule": BURST_RULE,
            "notes": dict(self.notes),
        }


def burst_ends(times_ns: array[int]) -> array[int]:
    """Where bursts end (BURST_RULE): one past each burst's last datagram."""
    gaps = [b - a for a, b in zip(times_ns, times_ns[1:])]
    if not gaps:
        return array("I", [len(times_ns)] if times_ns else [])
    cut = max(BURST_GAP_MIN_NS, BURST_GAP_FACTOR * statistics.median(gaps))
    ends = array("I", (i + 1 for i, gap in enumerate(gaps) if gap > cut))
    ends.append(len(times_ns))
    return ends


def make_schedule(pairs: list[tuple[int, int]], source: str, notes: dict[str, int]) -> Schedule:
    """(time_ns, size) in any order -> a Schedule starting at 0 (stable for equal times)."""
    pairs.sort(key=lambda p: p[0])
    t0 = pairs[0][0]
    times = array("Q", (t - t0 for t, _ in pairs))
    return Schedule(array("I", (s for _, s in pairs)), times, burst_ends(times), source, notes)


# ------------------------------------------------------------------------------------------ reading


@dataclass
class _Datagram:
    time_ns: int
    size: int
    flow: tuple[str, str, int, int]  # src, dst, sport, dport
    payload_limit: int  # the UDP payload the capture link's MTU allows for this record (0: a fragment)
    zero_length: bool = False  # a length field of 0: larger than 64 KB (sized from the wire length)


@dataclass
class _Fragments:
    time_ns: int
    head: _Datagram | None = None  # from the first fragment, which carries the UDP header


CAPTURE_MAGICS = {bytes.fromhex(m) for m in ("a1b2c3d4", "d4c3b2a1", "a1b23c4d", "4d3cb2a1", "0a0d0d0a")}


def check_source(path: str) -> None:
    """A cheap check at validation time (collection): a built-in shape's name, or a file that starts
    like a pcap or pcapng; the records are read when the run starts."""
    if path.startswith(SHAPE_PREFIX):
        if path[len(SHAPE_PREFIX) :] not in SHAPES:
            shape(path[len(SHAPE_PREFIX) :])  # raises, naming the accepted ones
        return
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ConfigError(f"replay={path!r}: no such file: give the path of a pcap or pcapng capture") from None
    except IsADirectoryError:
        raise ConfigError(f"replay={path!r} is a directory: give the path of a pcap or pcapng capture") from None
    except OSError as exc:
        raise ConfigError(f"replay={path!r} cannot be read ({exc.strerror}): give a readable capture file") from None
    if magic not in CAPTURE_MAGICS:
        raise ConfigError(
            f"replay={path!r} is not a pcap or pcapng capture: give a file written by tcpdump, tshark or scapy"
        )


def read(path: str | os.PathLike[str], replay_filter: str | None = None, mtu: int = 1500) -> Schedule:
    """The schedule of a pcap/pcapng's UDP datagrams (see the module docstring), or a built-in shape.

    ConfigError in one sentence for what cannot be replayed: not a capture, no UDP datagrams, a
    filter matching nothing, scapy missing."""
    text = os.fspath(path)
    if text.startswith(SHAPE_PREFIX):
        return shape(text[len(SHAPE_PREFIX) :], replay_filter)
    wanted = parse_filter(replay_filter)
    notes = {
        "records": 0,
        "udp_records": 0,
        "fragments": 0,
        "fragmented_datagrams": 0,
        "unsized_fragments": 0,
        "truncated_records": 0,
        "super_packets": 0,
        "segments": 0,
        "filtered_out": 0,
    }
    found = list(_datagrams(text, mtu, notes))
    if not found:
        raise ConfigError(
            f"replay={text!r} holds no UDP datagrams over IPv4 or IPv6 ({notes['records']} records): "
            "give a capture of the UDP traffic to replay"
        )
    chosen = [d for d in found if wanted.matches(*d.flow)]
    notes["filtered_out"] = len(found) - len(chosen)
    if not chosen:
        flows = sorted({d.flow for d in found})[:3]
        raise ConfigError(
            f"replay_filter={replay_filter!r} matches none of the {len(found)} UDP datagrams in {text!r} "
            f"(flows such as {', '.join(f'{s}:{sp} > {d}:{dp}' for s, d, sp, dp in flows)}): "
            "widen the filter"
        )
    return make_schedule(_split_super_packets(chosen, notes), text, notes)


def _split_super_packets(found: list[_Datagram], notes: dict[str, int]) -> list[tuple[int, int]]:
    """GSO/GRO super-packets into their segments: of the flow's largest datagram that fits the MTU."""
    fits: dict[tuple[str, str, int, int], int] = {}
    for d in found:
        if not d.zero_length and (d.payload_limit == 0 or d.size <= d.payload_limit):
            fits[d.flow] = max(fits.get(d.flow, 0), d.size)
    pairs: list[tuple[int, int]] = []
    for d in found:
        if d.zero_length or (d.payload_limit and d.size > d.payload_limit):
            segment = fits.get(d.flow) or d.payload_limit
            whole, rest = divmod(d.size, segment)
            sizes = [segment] * whole + ([rest] if rest else [])
            notes["super_packets"] += 1
            notes["segments"] += len(sizes)
            pairs += [(d.time_ns, s) for s in sizes]
        else:
            pairs.append((d.time_ns, d.size))
    return pairs


def _reader(path: str) -> Any:
    try:
        from scapy.error import Scapy_Exception
        from scapy.utils import PcapReader
    except ImportError:
        raise ConfigError(
            "replay= reads captures with scapy, which is not installed: pip install 'pytest-udpsend[pcap]'"
        ) from None
    try:
        return PcapReader(path)
    except FileNotFoundError:
        raise ConfigError(f"replay={path!r}: no such file: give the path of a pcap or pcapng capture") from None
    except IsADirectoryError:
        raise ConfigError(f"replay={path!r} is a directory: give the path of a pcap or pcapng capture") from None
    except (Scapy_Exception, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, PermissionError):
            raise ConfigError(
                f"replay={path!r} cannot be read ({exc.strerror}): give a readable capture file"
            ) from None
        raise ConfigError(
            f"replay={path!r} is not a pcap or pcapng capture: give a file written by tcpdump, tshark or scapy"
        ) from None


def _datagrams(path: str, mtu: int, notes: dict[str, int]) -> Iterator[_Datagram]:
    """Every UDP datagram of the capture, fragments put together (in the order they complete)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment

    pending: dict[tuple[Any, ...], _Fragments] = {}
    reader = _reader(path)
    try:
        for pkt in _records(reader, path):
            notes["records"] += 1
            time_ns = int(pkt.time * 1_000_000_000)
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is None:
                continue
            caplen, wirelen = len(pkt.original or b""), pkt.wirelen or len(pkt.original or b"")
            notes["truncated_records"] += caplen < wirelen
            frag: Any = ip.getlayer(IPv6ExtHdrFragment) if ip.version == 6 else ip
            if (ip.flags.MF or ip.frag > 0) if ip.version == 4 else frag is not None:
                if (ip.proto if ip.version == 4 else frag.nh) != 17:
                    continue
                notes["fragments"] += 1
                yield from _fragment(pending, pkt, ip, frag, time_ns, notes)
                continue
            if not _is_udp(ip):
                continue
            notes["udp_records"] += 1
            yield _plain(pkt, ip, pkt.getlayer(UDP), time_ns, mtu, wirelen)
    finally:
        reader.close()
    for group in pending.values():
        yield from _fragment_done(group, notes)


def _records(reader: Any, path: str) -> Iterator[Any]:
    number = 0
    while True:
        try:
            pkt = reader.read_packet()
        except EOFError:
            return
        except Exception as exc:  # scapy raises struct.error, Scapy_Exception, ... on a damaged record
            raise ConfigError(
                f"replay={path!r}: record {number + 1} cannot be read ({type(exc).__name__}): "
                "the capture is damaged; cut it before that record (editcap -r)"
            ) from None
        if pkt is None:
            return
        number += 1
        yield pkt


def _is_udp(ip: Any) -> bool:
    return bool(ip.proto == 17) if ip.version == 4 else _ipv6_next(ip) == 17


def _ipv6_next(ip: Any) -> int:
    """The protocol after IPv6 extension headers (hop-by-hop, routing, destination options)."""
    layer, nh = ip, ip.nh
    while nh in (0, 43, 60) and layer.payload is not None and hasattr(layer.payload, "nh"):
        layer = layer.payload
        nh = layer.nh
    return int(nh)


def _ip_payload(ip: Any) -> int:
    """Bytes after the IP header by the IP length field (0: the field says nothing, e.g. > 64 KB)."""
    if ip.version == 4:
        return max(int(ip.len or 0) - 4 * int(ip.ihl or 5), 0)
    return int(ip.plen or 0)


def _plain(pkt: Any, ip: Any, udp: Any, time_ns: int, mtu: int, wirelen: int) -> _Datagram:
    header = 4 * int(ip.ihl or 5) if ip.version == 4 else 40
    limit = mtu - header - UDP_HEADER
    if udp is None:  # the snaplen cut into the UDP header: the IP length field still holds
        return _Datagram(time_ns, max(_ip_payload(ip) - UDP_HEADER, 0), (ip.src, ip.dst, -1, -1), limit)
    flow = (ip.src, ip.dst, int(udp.sport), int(udp.dport))
    if not udp.len or not _ip_payload(ip):  # a length field of 0: larger than 64 KB, so from the wire length
        before = len(pkt.original) - len(bytes(udp))  # link and IP headers in front of the UDP header
        return _Datagram(time_ns, max(wirelen - before - UDP_HEADER, 0), flow, limit, zero_length=True)
    return _Datagram(time_ns, int(udp.len) - UDP_HEADER, flow, limit)


def _fragment(
    pending: dict[tuple[Any, ...], _Fragments], pkt: Any, ip: Any, frag: Any, time_ns: int, notes: dict[str, int]
) -> Iterator[_Datagram]:
    """Collect one fragment; a datagram is sized from its first fragment's UDP length field."""
    from scapy.layers.inet import UDP

    ident = ip.id if ip.version == 4 else frag.id
    offset = ip.frag if ip.version == 4 else frag.offset
    key = (ip.src, ip.dst, ident)
    group = pending.get(key)
    if group is not None and offset == 0 and group.head is not None:  # the id wrapped: a new datagram
        yield from _fragment_done(pending.pop(key), notes)
        group = None
    if group is None:
        group = pending[key] = _Fragments(time_ns)
    group.time_ns = min(group.time_ns, time_ns)
    udp = pkt.getlayer(UDP)
    if offset == 0 and udp is not None and udp.len:
        group.head = _Datagram(0, int(udp.len) - UDP_HEADER, (ip.src, ip.dst, int(udp.sport), int(udp.dport)), 0)


def _fragment_done(group: _Fragments, notes: dict[str, int]) -> Iterator[_Datagram]:
    if group.head is None:
        notes["unsized_fragments"] += 1
        return
    notes["fragmented_datagrams"] += 1
    group.head.time_ns = group.time_ns
    yield group.head


# ----------------------------------------------------------------------------------- built-in shapes


def _telemetry() -> list[tuple[int, int]]:
    """A metrics agent's flush: every 200 ms a burst of 300 datagrams of 200-1400 bytes, 5 us apart."""
    rng = random.Random(28)
    return [
        (flush * 200_000_000 + i * 5_000, rng.choice((200, 400, 800, 1200, 1400)))
        for flush in range(10)
        for i in range(300)
    ]


def _media() -> list[tuple[int, int]]:
    """A paced video stream: 30 frames/s for 2 s, a key frame of 40 packets every 30 frames, else 6, 1200 bytes."""
    return [(frame * 33_333_333 + i * 20_000, 1200) for frame in range(60) for i in range(40 if frame % 30 == 0 else 6)]


def _dns() -> list[tuple[int, int]]:
    """A resolver's mix: 2000 queries of 40-80 bytes and responses up to 1232 (EDNS), 500 us apart on average."""
    rng = random.Random(53)
    t, out = 0, []
    for _ in range(2000):
        t += int(rng.expovariate(1 / 500_000))
        out.append((t, rng.choice((rng.randint(40, 80), rng.randint(100, 512), 1232))))
    return out


SHAPES: dict[str, Callable[[], list[tuple[int, int]]]] = {"telemetry": _telemetry, "media": _media, "dns": _dns}


def shape(name: str, replay_filter: str | None = None) -> Schedule:
    """A built-in shape by name (``replay="shape:telemetry"``); no flows to filter."""
    if name not in SHAPES:
        raise ConfigError(
            f"replay='{SHAPE_PREFIX}{name}': no such built-in shape; accepted: "
            + ", ".join(f"'{SHAPE_PREFIX}{n}'" for n in SHAPES)
        )
    if replay_filter is not None:
        raise ConfigError(
            f"replay_filter= applies to captures; the built-in shape '{SHAPE_PREFIX}{name}' has one flow: drop it"
        )
    return make_schedule(SHAPES[name](), SHAPE_PREFIX + name, {})

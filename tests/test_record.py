"""``udpsend record`` (issue 28 item 3): a live process's UDP sends as a payload-free shape that replay= reads.

Real programs, real BPF: a C sender of ours that uses every send call (sendto, send, write,
writev, sendmsg, sendmsg with UDP_SEGMENT, sendmmsg), started in a network namespace of its own
(``unshare -n``) and released by a byte on stdin once the probe is attached; the same sender
non-blocking behind a slow tbf so that sends fail with EAGAIN; and iperf3, which no one here wrote.
Each recording is compared with what the program says it did (its own counts, sizes, clock),
then read by replay.py and replayed through the scenario's socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_udpsend import cli
from pytest_udpsend.measure import record, replay

pytest.importorskip("scapy")
if record.unavailable() is not None:
    pytest.skip(f"cannot record here: {record.unavailable()}", allow_module_level=True)

SENDER = r"""
/* argv[1] "shape": 3 bursts of 200 datagrams 200 ms apart, every send call, sizes 64..3000;
   "pressure": the same bursts with send() on a non-blocking socket with a 4 KB buffer.
   Waits for a byte on stdin first; prints its own counts (JSON) at the end. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
static unsigned long hist[4000], datagrams, failed, calls;
static unsigned long long first_ns[3], last_ns;
static char buf[65536];
static unsigned seed = 28;
static unsigned long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ULL + t.tv_nsec; }
static int pick(const int *sizes, int n) { seed = seed * 1103515245 + 12345; return sizes[(seed >> 16) % n]; }
static void count(long ret, int size) {
    calls++;
    if (ret < 0) { if (errno != EAGAIN) { perror("send"); _exit(3); } failed++; }
    hist[size]++; datagrams++;
}
int main(int argc, char **argv) {
    int pressure = strcmp(argv[1], "pressure") == 0;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9999)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int rx = socket(AF_INET, SOCK_DGRAM, 0), big = 1 << 24;
    setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
    if (bind(rx, (struct sockaddr *)&to, sizeof(to))) { perror("bind"); return 1; }
    int con = socket(AF_INET, SOCK_DGRAM, 0), free_ = socket(AF_INET, SOCK_DGRAM, 0);
    connect(con, (struct sockaddr *)&to, sizeof(to));
    int null = open("/dev/null", O_WRONLY);
    if (pressure) {
        int small = 4096;
        setsockopt(con, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
        fcntl(con, F_SETFL, O_NONBLOCK);
    }
    char go;
    if (read(0, &go, 1) != 1) return 2;
    static const int mixed[] = {64, 300, 900, 1400, 3000}, small_sizes[] = {300, 900, 1400};
    for (int b = 0; b < 3; b++) {
        if (b) usleep(200000);
        first_ns[b] = now();
        write(null, buf, 100);  /* not a socket: not recorded */
        for (int n = 0, kind = 0; n < 200; kind = (kind + 1) % 7) {
            long r;
            if (pressure) {
                int s = pick(small_sizes, 3);
                r = send(con, buf, s, 0); count(r, s); n++;
                continue;
            }
            int s = pick(mixed, 5);
            if (kind == 0) { r = sendto(free_, buf, s, 0, (struct sockaddr *)&to, sizeof(to)); count(r, s); n++; }
            else if (kind == 1) { r = send(con, buf, s, 0); count(r, s); n++; }
            else if (kind == 2) { r = write(con, buf, s); count(r, s); n++; }
            else if (kind == 3) {
                struct iovec iov[2] = {{buf, s / 2}, {buf, s - s / 2}};
                r = writev(con, iov, 2); count(r, s); n++;
            } else if (kind == 4) {
                struct iovec iov[3] = {{buf, 10}, {buf, s - 20}, {buf, 10}};
                struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof(to), .msg_iov = iov, .msg_iovlen = 3};
                r = sendmsg(free_, &m, 0); count(r, s); n++;
            } else if (kind == 5 && n + 3 <= 200) {  /* GSO: 2500 bytes in segments of 1000 */
                struct iovec iov = {buf, 2500};
                char control[CMSG_SPACE(sizeof(unsigned short))] = {0};
                struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
                struct cmsghdr *c = CMSG_FIRSTHDR(&m);
                c->cmsg_level = SOL_UDP; c->cmsg_type = UDP_SEGMENT; c->cmsg_len = CMSG_LEN(sizeof(unsigned short));
                *(unsigned short *)CMSG_DATA(c) = 1000;
                r = sendmsg(con, &m, 0);
                calls++;
                if (r < 0) { perror("gso"); return 3; }
                hist[1000] += 2; hist[500]++; datagrams += 3; n += 3;
            } else if (kind == 6 && n + 4 <= 200) {
                struct mmsghdr mm[4] = {0};
                struct iovec iov[4];
                int sizes[4];
                for (int i = 0; i < 4; i++) {
                    sizes[i] = pick(mixed, 5);
                    iov[i].iov_base = buf; iov[i].iov_len = sizes[i];
                    mm[i].msg_hdr.msg_name = &to; mm[i].msg_hdr.msg_namelen = sizeof(to);
                    mm[i].msg_hdr.msg_iov = &iov[i]; mm[i].msg_hdr.msg_iovlen = 1;
                }
                r = sendmmsg(free_, mm, 4, 0);
                calls++;
                if (r != 4) { perror("sendmmsg"); return 3; }
                for (int i = 0; i < 4; i++) { hist[sizes[i]]++; datagrams++; }
                n += 4;
            }
        }
        last_ns = now();
    }
    printf("{\"datagrams\": %lu, \"failed\": %lu, \"calls\": %lu, \"first_ns\": [%llu, %llu, %llu], \"last_ns\": %llu, \"hist\": {",
           datagrams, failed, calls, first_ns[0], first_ns[1], first_ns[2], last_ns);
    for (int i = 0, comma = 0; i < 4000; i++)
        if (hist[i]) { printf("%s\"%d\": %lu", comma ? ", " : "", i, hist[i]); comma = 1; }
    printf("}}\n");
    return 0;
}
"""

TBF = "tc qdisc add dev lo root tbf rate 2mbit burst 4kb latency 200ms"


@pytest.fixture(scope="module")
def sender_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc): apt-get install gcc")
    d = tmp_path_factory.mktemp("record")
    (d / "sender.c").write_text(SENDER)
    subprocess.run(["cc", "-O2", "-o", str(d / "sender"), str(d / "sender.c")], check=True)
    return d / "sender"


def record_program(script: str, out: Path, duration: float = 30.0) -> tuple[record.Recording, str]:
    """Run ``sh -c script`` in a network namespace of its own (loopback up); it must wait for a byte on
    stdin before sending; record it from the first syscall after the probe is attached until it exits."""
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && " + script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None

    def go() -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"g\n")
        proc.stdin.flush()

    try:
        rec = record.record(proc.pid, str(out), duration=duration, ready=go)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr.decode()
    return rec, stdout.decode()


def long_gaps(s: replay.Schedule) -> list[int]:
    """Where the schedule pauses over 100 ms: the 200 ms between the bursts (a shorter pause of a
    preempted sender on a loaded host is recorded too, and may split a burst by the replay's rule)."""
    return [i for i in range(1, len(s.times_ns)) if s.times_ns[i] - s.times_ns[i - 1] > 100_000_000]


def failed_comments(path: Path) -> list[str]:
    from scapy.utils import PcapNgReader

    with PcapNgReader(str(path)) as reader:
        return [c.decode() for pkt in reader for c in (pkt.comments or [])]


# ------------------------------------------------------------------------------------ real programs


def test_every_send_call_recorded_with_its_size_and_time(sender_bin, tmp_path):
    rec, out = record_program(f"exec {sender_bin} shape", tmp_path / "shape.pcapng")
    own = json.loads(out)
    assert (rec.datagrams, rec.lost, sum(rec.failed.values())) == (600, 0, 0)
    assert own["calls"] < rec.sends < 600  # a sendmmsg call is one send per message, a GSO send one for its segments
    s = replay.read(tmp_path / "shape.pcapng")
    assert len(s.sizes) == own["datagrams"] == 600
    assert Counter(s.sizes) == Counter({int(k): v for k, v in own["hist"].items()})  # GSO segments, sendmmsg messages
    assert long_gaps(s) == [200, 400]
    span = own["last_ns"] - own["first_ns"][0]
    assert abs(s.span_ns - span) <= 0.1 * span, (s.span_ns, span)
    starts = [s.times_ns[i] for i in (0, 200, 400)]
    assert all(abs((a - starts[0]) - (b - own["first_ns"][0])) <= 0.1 * span for a, b in zip(starts, own["first_ns"]))
    assert s.notes["fragmented_datagrams"] > 0 and s.notes["super_packets"] == 0  # 3000 bytes: fragments, never split
    assert failed_comments(tmp_path / "shape.pcapng") == []


def test_failed_sends_keep_their_size_are_marked_and_replayed(sender_bin, tmp_path):
    """Non-blocking, 4 KB buffer, behind a 2 Mbit/s tbf: most sends of each burst get EAGAIN (-11, no size)."""
    path = tmp_path / "pressure.pcapng"
    rec, out = record_program(f"{TBF} && exec {sender_bin} pressure", path)
    own = json.loads(out)
    assert own["failed"] > 0 and own["failed"] < 600, own
    assert rec.failed == Counter({11: own["failed"]}) and rec.datagrams == 600 and rec.lost == 0
    comments = failed_comments(path)
    assert comments == ["udpsend: send failed: EAGAIN (errno 11)"] * own["failed"]
    s = replay.read(path)
    assert len(s.sizes) == 600  # the failed ones are in the shape: what the application wanted to send
    assert Counter(s.sizes) == Counter({int(k): v for k, v in own["hist"].items()})
    assert long_gaps(s) == [200, 400]


def test_a_recording_replays_through_the_socket(sender_bin, tmp_path, udp_sender):
    path = tmp_path / "shape.pcapng"
    rec, out = record_program(f"exec {sender_bin} shape", path)
    own = json.loads(out)
    r = udp_sender.run(replay=str(path), cpu=0)
    assert (r.attempts, r.sent) == (600, 600)
    assert long_gaps(replay.read(path)) == [200, 400]
    assert sum(b["attempts"] for b in r.replay["bursts"]) == 600
    span = (own["last_ns"] - own["first_ns"][0]) / 1e9
    assert abs(r.duration_s - span) <= 0.1 * span, r.summary()


def test_iperf3_recorded_and_replayed(tmp_path, udp_sender):
    """A program no one here wrote: iperf3 -u at 8 Mbit/s, 1200-byte datagrams, for 1 s (its data
    socket's sends are write(2)); its own JSON report says how many it sent and for how long."""
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed: apt-get install iperf3")
    path = tmp_path / "iperf3.pcapng"
    script = (
        "iperf3 -s -1 -p 5201 >/dev/null 2>&1 & sleep 0.5; read go; "
        "exec iperf3 -c 127.0.0.1 -p 5201 -u -b 8M -l 1200 -t 1 -J"
    )
    rec, out = record_program(script, path)
    report: dict[str, Any] = json.loads(out)
    packets, seconds = report["end"]["sum"]["packets"], report["end"]["sum"]["seconds"]
    s = replay.read(path)
    sizes = Counter(s.sizes)
    assert sizes[1200] == packets and sum(rec.failed.values()) == 0, (sizes, packets)
    assert set(sizes) <= {1200, 4}  # 4: the UDP "connect" datagram iperf3 sends before the test
    data = [t for t, size in zip(s.times_ns, s.sizes) if size == 1200]
    assert abs((data[-1] - data[0]) / 1e9 - seconds) <= 0.1 * seconds, (data[-1] - data[0], seconds)
    r = udp_sender.run(replay=str(path), replay_filter="dport=5201", cpu=0)
    assert r.attempts == len(s.sizes) and r.sent == r.attempts
    assert abs(r.duration_s - s.span_ns / 1e9) <= 0.1 * s.span_ns / 1e9, r.summary()


PY_THREADS = r"""
import socket, sys, threading
sys.stdin.read(1)
rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
rx.bind(("::1", 7777))
def v6():  # another thread of the process; unconnected, to ::1
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for n in (100, 1452, 1453, 9000):
        s.sendto(bytes(n), ("::1", 7777))
t = threading.Thread(target=v6)
t.start()
t.join()
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
c.connect(("::ffff:127.0.0.1", 7778))  # a v4-mapped peer: written as IPv4
c.send(bytes(500))
"""


def test_threads_ipv6_and_v4_mapped_peers(tmp_path):
    """All threads of the process; IPv6 datagrams larger than a 1500-byte link as IPv6 fragments."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapNgReader

    (tmp_path / "s.py").write_text(PY_THREADS)
    path = tmp_path / "t.pcapng"
    rec, _ = record_program(f"exec python3 {tmp_path / 's.py'}", path)
    s = replay.read(path)
    assert sorted(s.sizes) == [100, 500, 1452, 1453, 9000] and rec.datagrams == 5
    assert s.notes["fragmented_datagrams"] == 2 and s.notes["super_packets"] == 0
    with PcapNgReader(str(path)) as reader:
        packets = list(reader)
    assert {(p[IPv6].dst if IPv6 in p else p[IP].dst) for p in packets} == {"::1", "127.0.0.1"}


# ------------------------------------------------------------------------------------- the command


def test_refusals_are_one_sentence(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "x.pcapng")
    assert cli.main(["record", "--pid", "999999999", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "no such process" in err and err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setattr(record.os, "geteuid", lambda: 1000)
    assert cli.main(["record", "--pid", "1", "-o", out]) == 2
    assert "needs root: run it with sudo" in capsys.readouterr().err
    monkeypatch.undo()
    from pytest_udpsend.measure import tploader

    monkeypatch.setattr(tploader, "BTF_PATH", tmp_path / "no-btf")
    assert cli.main(["record", "--pid", "1", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "tracing cannot be loaded" in err and "BTF" in err and err.count("\n") == 1
    monkeypatch.undo()
    import bcc

    real = bcc.BPF.attach_raw_tracepoint

    def older_kernel(self: Any, tp: bytes = b"", fn_name: bytes = b"") -> None:  # 6.1: no sock_send_length
        if tp == b"sock_send_length":
            raise Exception("Failed to attach BPF to raw tracepoint")
        real(self, tp=tp, fn_name=fn_name)

    monkeypatch.setattr(bcc.BPF, "attach_raw_tracepoint", older_kernel)
    assert cli.main(["record", "--pid", "1", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "no sock:sock_send_length tracepoint" in err and "6.3 or newer" in err and err.count("\n") == 1
    assert not Path(out).exists()


def test_the_command_writes_the_file_and_says_what_it_saw(sender_bin, tmp_path, capsys):
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {sender_bin} shape"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )

    def go_once_attached() -> None:  # the output's temporary file exists once the probe is attached
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".s.pcapng.*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.close()

    helper = threading.Thread(target=go_once_attached)
    helper.start()
    try:
        code = cli.main(["record", "--pid", str(proc.pid), "--duration", "20", "-o", str(tmp_path / "s.pcapng")])
        proc.wait(timeout=30)
    finally:
        helper.join()
        proc.kill()
        proc.wait()
    assert code == 0
    line = capsys.readouterr().out
    assert f"of pid {proc.pid} (600 datagram(s), 0 failed)" in line and str(tmp_path / "s.pcapng") in line
    assert len(replay.read(tmp_path / "s.pcapng").sizes) == 600


def test_sigterm_ends_a_recording_and_keeps_the_file(tmp_path):
    """Without --duration the command records until the process exits or it is told to stop."""
    import signal
    import sys

    forever = (
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nwhile True:\n"
        "    s.sendto(bytes(321), ('127.0.0.1', 9))\n    time.sleep(0.005)\n"
    )
    (tmp_path / "forever.py").write_text(forever)
    app = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec python3 {tmp_path / 'forever.py'}"]
    )
    out = tmp_path / "f.pcapng"
    cmd = subprocess.Popen(
        [sys.executable, "-m", "pytest_udpsend.cli", "record", "--pid", str(app.pid), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".f.pcapng.*")) and time.monotonic() < deadline:  # attached
            time.sleep(0.01)
        time.sleep(0.5)
        cmd.send_signal(signal.SIGTERM)
        stdout, stderr = cmd.communicate(timeout=30)
    finally:
        cmd.kill()
        app.kill()
        app.wait()
    assert cmd.returncode == 0, stderr
    s = replay.read(out)
    assert len(s.sizes) > 10 and set(s.sizes) == {321} and "recorded" in stdout

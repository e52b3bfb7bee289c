#!/usr/bin/env python3
"""Benchmark: what ``udpsend record`` costs a full-speed sender, and every other task.

A C sender (blocking ``send()`` of 1400-byte datagrams on a connected socket to a socket of its
own, on the loopback of a namespace of its own, pinned to CPU 0) runs ``--duration`` seconds and
prints its own packets/s.  Three arms, in rotating order from round to round (a drifting load hits
all alike): not recorded; another process recorded (an idle ``sleep``: the raw ``sys_enter``
tracepoint alone, which every syscall of every task passes through while a recording runs); the
sender itself recorded (one ring-buffer event per send, read on CPU 1).  Prints each arm's
median, the overheads, and the events the recorder lost.  Needs root, bcc and kernel BTF.  Run it
alone: ``flock /work/notes/heavy.lock .venv/bin/python ci/bench_record.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from pytest_udpsend.measure import record

SENDER = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9999)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int rx = socket(AF_INET, SOCK_DGRAM, 0), tx = socket(AF_INET, SOCK_DGRAM, 0);
    bind(rx, (struct sockaddr *)&to, sizeof(to));
    connect(tx, (struct sockaddr *)&to, sizeof(to));
    char go, buf[1400] = {0};
    if (read(0, &go, 1) != 1) return 2;
    double end = now() + atof(argv[1]), t0 = now();
    unsigned long n = 0;
    while ((n & 255) || now() < end)
        if (send(tx, buf, sizeof(buf), 0) >= 0) n++;
    printf("%.0f\n", n / (now() - t0));
    return 0;
}
"""


def run_sender(binary: Path, duration: float, recorded: str, out: Path) -> tuple[float, int]:
    """packets/s of one sender run, and the events lost; ``recorded``: none, other, sender."""
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec taskset -c 0 {binary} {duration}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None

    def go() -> None:
        assert proc.stdin is not None
        proc.stdin.write("g")
        proc.stdin.flush()

    lost = 0
    if recorded == "sender":
        lost = record.record(proc.pid, str(out), duration=duration + 5, ready=go).lost
    elif recorded == "other":
        idle = subprocess.Popen(["sleep", str(duration + 5)])
        try:
            record.record(idle.pid, str(out), duration=duration + 0.5, ready=go)
        finally:
            idle.kill()
            idle.wait()
    else:
        go()
    stdout, _ = proc.communicate(timeout=duration + 30)
    return float(stdout.strip()), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args()
    reason = record.unavailable()
    if reason is not None:
        raise SystemExit(reason)
    os.sched_setaffinity(0, {1})  # the recorder reads on CPU 1, the sender sends on CPU 0
    arms = ["not recorded", "other recorded", "sender recorded"]
    pps: dict[str, list[float]] = {a: [] for a in arms}
    lost: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp, "sender")
        Path(tmp, "sender.c").write_text(SENDER)
        subprocess.run(["cc", "-O2", "-o", str(binary), str(Path(tmp, "sender.c"))], check=True)
        for i in range(args.rounds):
            for arm in arms[i % 3 :] + arms[: i % 3]:
                rate, n = run_sender(
                    binary, args.duration, arm.split()[0].replace("not", "none"), Path(tmp, "r.pcapng")
                )
                pps[arm].append(rate)
                if arm == "sender recorded":
                    lost.append(n)
    med = {k: statistics.median(v) for k, v in pps.items()}
    for k, v in pps.items():
        print(f"{k:>16}: median {med[k]:>9,.0f} pps  ({', '.join(f'{x:,.0f}' for x in v)})")
    base = med["not recorded"]
    print(
        f"overhead (kernel {os.uname().release}): {1 - med['other recorded'] / base:.1%} fewer packets/s for a task "
        f"that is not recorded (sys_enter attached), {1 - med['sender recorded'] / base:.1%} for the recorded sender; "
        f"events lost per recorded round: {', '.join(map(str, lost))}"
    )


if __name__ == "__main__":
    main()

"""Programs no one here wrote, as the sender: sockperf, iperf3 -u and the DogStatsD client.

``sender_process`` measures any program from outside, so the programs a team already
runs can go under the same backpressure as the plugin's own sender.  Each test
compares the program's own report with the kernel's counts in the sender namespace
(``UdpOutDatagrams``, ``UdpSndbufErrors``: only the program sends from there), and
reads its ``busy_wait``: the share of a CPU it used while its send buffer was full.

* sockperf (``--nonblocked``) retries at once when a send fails and reports those
  sends as "messages skipped": skipped = the kernel's EAGAIN, sent = its sent, and it
  spins (busy_wait about 1).  sockperf 3.7 sleeps 2 s before every test and runs whole
  seconds, so this test takes about 3 s.
* iperf3 -u writes on a blocking socket: a full buffer puts it to sleep, so the kernel
  refuses nothing (EAGAIN 0) and busy_wait is about 0.  Its server runs in the
  receiver namespace for the one test (``--one-off``), killed at teardown whatever
  happened.  The kernel counts one datagram more than iperf3 reports: the 4-byte
  datagram that opens an iperf3 UDP test.
* The DogStatsD client (``datadog`` on PyPI) sends on a non-blocking socket and, when
  the buffer is full, drops the metric and counts it in its telemetry
  (``packets_dropped``): its counts equal the kernel's.

Every claim is an equality of counts the kernel fixes, or a consequence of the
program's design (blocks or spins) read against the project's 0.5 busy_wait line
(examples/ and the issue that added busy_wait use it).  Seen on this project's 6.18
host (10 runs each, all passed): sockperf 1760 sent / 3.1 million skipped, busy_wait 1.0;
iperf3 1000 packets, 1001 datagrams, EAGAIN 0, busy_wait 0.0 to 0.001; DogStatsD 369
sent / 130011 dropped, busy_wait 1.0.  A program that is not installed is skipped with
the command that installs it (``bash ci/setup-debian.sh`` installs all three).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

# Shaping that keeps a small buffer full on any machine: the token bucket holds the skbs,
# still charged to the socket, and releases them at a rate fixed by the qdisc.
SHAPED = "tbf rate 20mbit burst 32kb latency 50ms"
BUSY = 0.5  # busy_wait above: the program spun while the buffer was full; below: it slept


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed: apt-get install {program} (bash ci/setup-debian.sh installs it)")
    return path


@pytest.mark.topology(qdisc=SHAPED)
def test_sockperf_counts_its_skipped_messages_as_the_kernel_does(sender_process):
    need("sockperf")
    # The destination comes from the environment sender_process sets: a fixed shell text expands it,
    # the program's own arguments pass through as positional parameters.
    r = sender_process.run(
        [
            "sh",
            "-c",
            'exec sockperf "$@" -i "$UDPSEND_DST" -p "$UDPSEND_PORT"',
            "sockperf",
            "tp",
            "--nonblocked",
            "--buffer-size",
            "4096",
            "-m",
            "1400",
            "-t",
            "1",
            "--dontwarmup",
        ],
        cpu=0,
    )
    found = re.search(
        r"Total of (\d+) messages sent in [\d.]+ sec(?: \((\d+) messages skipped\))?", r.process["stdout"]
    )
    assert found, "sockperf printed no total"
    sent, skipped = int(found.group(1)), int(found.group(2) or 0)
    assert sent == r.sent  # UdpOutDatagrams
    assert skipped == r.eagain > sent  # UdpSndbufErrors; a 4 KB buffer behind the shaper fails most sends
    assert r.busy_wait is not None and r.busy_wait > BUSY  # it retries at once: it spins while the buffer is full
    if r.errno is not None:  # its failed send calls, counted from outside
        assert r.errno == {"EAGAIN": skipped}


@pytest.fixture
def iperf3_server(sender_process) -> Iterator[subprocess.Popen[bytes]]:
    """``iperf3 --server --one-off`` in the receiver namespace, running once it listens.

    It leads its own process group and is killed with it at teardown; ``setpriv
    --pdeathsig KILL`` ends it should this test's process die first."""
    need("iperf3")
    ns = sender_process.topology.receiver.ns.path
    server = subprocess.Popen(
        [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "nsenter",
            f"--net={ns}",
            "--",
            "iperf3",
            "--server",
            "--one-off",
            "--forceflush",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        said, deadline = b"", time.monotonic() + 10
        while b"Server listening" not in said and server.poll() is None and time.monotonic() < deadline:
            if select.select([server.stdout], [], [], deadline - time.monotonic())[0]:
                said += os.read(server.stdout.fileno(), 4096)
        if b"Server listening" not in said:
            pytest.fail(f"the iperf3 server did not start in the receiver namespace: {said.decode(errors='replace')!r}")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


@pytest.mark.topology(qdisc=SHAPED)
def test_iperf3_blocks_instead_of_failing(sender_process, iperf3_server):
    r = sender_process.run(
        [
            "sh",
            "-c",
            'exec iperf3 "$@" --client "$UDPSEND_DST"',
            "iperf3",
            "--udp",
            "--bitrate",
            "0",
            "--length",
            "1400",
            "--blockcount",
            "1000",
            "--window",
            "8K",
            "--json",
        ],
        cpu=0,
    )
    end = json.loads(r.process["stdout"])["end"]
    packets = end.get("sum_sent", end["sum"])["packets"]  # what the client says it sent
    assert packets == 1000  # --blockcount
    assert r.sent == packets + 1  # UdpOutDatagrams: its datagrams and the one that opens the test
    assert r.eagain == 0  # a blocking write waits for room: the kernel refused nothing
    assert r.busy_wait is not None  # the buffer was full (a blocking write waits only then)...
    assert r.busy_wait < BUSY  # ...and it slept through it
    if r.errno is not None:
        assert r.errno == {}  # no send call failed


# A metrics loop with the DogStatsD client as a service would use it (non-blocking socket,
# no buffering); at exit it prints the client's own telemetry counters.
DOGSTATSD = textwrap.dedent(
    """
    import os, sys, time
    from datadog.dogstatsd import DogStatsd

    client = DogStatsd(host=os.environ["UDPSEND_DST"], port=int(os.environ["UDPSEND_PORT"]),
                       socket_timeout=0,  # its default: a non-blocking socket
                       telemetry_min_flush_interval=3600)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        client.increment("checkout.requests", tags=["service:checkout", "env:test"])
    print(f"packets_sent {client.packets_sent} packets_dropped {client.packets_dropped}")
    client.close_socket()
    """
)


# 100 kbit/s drains about 140 metrics a second; the queue limit holds whatever a send
# buffer holds, so the qdisc never drops (which a socket without IP_RECVERR would not see).
@pytest.mark.topology(qdisc="tbf rate 100kbit burst 4kb limit 1mb")
def test_dogstatsd_drop_telemetry_matches_the_kernel(sender_process, tmp_path):
    pytest.importorskip("datadog", reason="the DogStatsD client is not installed: pip install -e '.[examples]'")
    script = tmp_path / "metrics.py"
    script.write_text(DOGSTATSD)
    r = sender_process.run([sys.executable, str(script), "0.5"], cpu=0)
    words = r.process["stdout"].split()
    own = {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}
    assert own["packets_sent"] == r.sent  # UdpOutDatagrams
    assert own["packets_dropped"] == r.eagain > 0  # UdpSndbufErrors: every EAGAIN the client counted, no more
    assert r.busy_wait is not None and r.busy_wait > BUSY  # it drops and goes on: it never waits for room
    if r.errno is not None:
        assert r.errno == {"EAGAIN": own["packets_dropped"]}

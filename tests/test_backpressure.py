"""The application under backpressure (issue 27): errno counts, busy-wait, checksum offload off.

Real namespaces for what the kernel does, pytester for what a user sees.  The
starved receive path is the one of examples/test_eagain_story.py: the receiver's
NAPI poll runs in a kthread pinned to CPU 1, which two CPU hogs starve, so a small
send buffer stays full.  Two C senders meet it: one retries at once on EAGAIN (a
busy loop), one waits in poll() for POLLOUT.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.host import nicport, topology
from pytest_udpsend.measure import backpressure, sendtrace
from pytest_udpsend.results.bounds import kernel_matches

SENDER = r"""
/* a non-blocking UDP sender for argv[2] seconds, 4 KB SO_SNDBUF; argv[1] "busy": retry at once on
   EAGAIN, "poll": wait in poll() for POLLOUT.  Prints its own counts. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(getenv("UDPSEND_PORT")))};
    inet_pton(AF_INET, getenv("UDPSEND_DST"), &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0), sndbuf = 4096, polling = strcmp(argv[1], "poll") == 0;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) { perror("connect"); return 1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char buf[1400];
    unsigned long sent = 0, eagain = 0, other = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        if (send(fd, buf, sizeof(buf), 0) >= 0) {
            sent++;
        } else if (errno == EAGAIN) {
            eagain++;
            if (polling) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                poll(&p, 1, 50);
            }
        } else {
            other++;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < atof(argv[2]));
    printf("sent %lu eagain %lu other %lu\n", sent, eagain, other);
    return 0;
}
"""


def build_sender(where: Path) -> Path:
    """The two-mode C sender, built in ``where`` (skips without a C compiler)."""
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler (gcc) to build the test's senders: apt-get install gcc")
    (where / "sender.c").write_text(SENDER)
    subprocess.run(["gcc", "-O2", "-o", str(where / "sender"), str(where / "sender.c")], check=True)
    return where / "sender"


# --- item 5 of the issue: checksum offload off on the sender link -------------------------------


def test_tx_checksum_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"^tx_checksum='off': must be True or False"):
        topology.make_spec(tx_checksum="off")
    assert "tx_checksum=False" in topology.make_spec(tx_checksum=False).describe()
    assert "tx_checksum" not in topology.make_spec().describe()


def _checksum_features(end: topology.Endpoint) -> dict[str, bool]:
    def body() -> dict[str, bool]:
        from pyroute2.ethtool import Ethtool

        with Ethtool() as ethtool:
            features = ethtool.get_features(end.ifname).features
        return {name: f.enable for name, f in features.items() if name.startswith("tx-checksum-") and f.available}

    result: dict[str, bool] = end.run(body)
    return result


@pytest.mark.topology(tx_checksum=False)
def test_tx_checksum_off_turns_offload_off_on_the_sender_link_only(veth):
    sender, receiver = _checksum_features(veth.sender), _checksum_features(veth.receiver)
    assert sender and not any(sender.values()), sender
    assert any(receiver.values()), receiver


def test_a_borrowed_port_gets_its_checksum_offload_back(veth):
    """A NIC port keeps its features across namespace moves, so give-back (nicport.restore) puts
    the journaled ones back; here on the sender veth, the same ethtool calls."""

    def body() -> tuple[dict[str, bool], dict[str, bool], dict[str, bool]]:
        before = nicport.tx_checksum(veth.sender.ifname)
        off = nicport.set_tx_checksum(veth.sender.ifname, False)
        return before, off, nicport.set_tx_checksum(veth.sender.ifname, before)

    before, off, back = veth.sender.run(body)
    assert any(before.values()) and not any(off.values()) and back == before
    old = nicport.PortState("eth9", "02:00:00:00:00:09", 1500, True)
    journaled_before = {k: v for k, v in json.loads(old.to_json()).items() if k != "tx_checksum"}
    assert nicport.PortState.from_json(json.dumps(journaled_before)).tx_checksum == {}  # nothing to restore


@pytest.mark.topology(tx_checksum=False)
@pytest.mark.udpsend(mode="gso", payload=14000, gso_size=1400, duration=0.3, cpu=0)
def test_udp_gso_without_checksum_offload(udpsend_result):
    """Commit 10154dbded6d (6.11) lets UDP GSO fall back to software checksums; before it
    every GSO send on a link without checksum offload fails with EIO (quic-go #3911)."""
    r = udpsend_result
    print(f"GSO, checksum offload off: sent {r.sent} ({r.segments} segments) errno {r.errno} on {r.kernel}")
    if kernel_matches(">=6.11", r.kernel):
        assert r.errno.get("EIO", 0) == 0 and r.sent > 0, (r.errno, r.sent)
    else:  # the lane's 6.1
        assert r.errno["EIO"] > 0 and r.sent == 0, (r.errno, r.sent)
    assert sum(r.errno.values()) == r.eagain + r.enobufs + r.other_errors


# --- item 1 (the plugin's own loop) and item 2: errno and busy_wait ------------------------------


def test_errno_names_every_errno_and_keeps_unknown_numbers():
    assert backpressure.errno_names({11: 3, 105: 2, 5: 1, 100000: 4}) == {
        "EAGAIN": 3,
        "ENOBUFS": 2,
        "EIO": 1,
        "errno 100000": 4,
    }


def test_busy_wait_counts_cpu_only_while_the_buffer_was_full():
    ms = 1_000_000
    # (time ns, full at that sample, the sender's CPU ns so far, asleep at that sample): full for 20 ms,
    # asleep at the first sample and running 1 ms in its interval, then 3 ms of CPU in the next (the
    # rest of it waiting for a CPU: neither); then not full for 10 ms using 10 ms of CPU (sending flat
    # out is not busy-waiting)
    samples = [
        (0, True, 0, True),
        (10 * ms, True, 1 * ms, False),
        (20 * ms, False, 4 * ms, False),
        (30 * ms, False, 14 * ms, False),
    ]
    assert backpressure.full_time(samples) == (20 * ms, 4 * ms, 10 * ms)
    assert backpressure.busy_wait(samples) == round(4 / 14, 4)
    assert backpressure.fraction(10 * ms, 0, 0) == 1.0  # waited for a CPU throughout: it never slept
    busy, found = backpressure.loop_busy_wait(10 * ms, 4 * ms, 6 * ms)  # the C loop: ran or waited, never slept
    assert busy == 1.0 and found["asleep_s"] == 0.0 and found["waiting_s"] == 0.006
    assert backpressure.busy_wait([(0, False, 0, 0), (10 * ms, False, 10 * ms, 0)]) is None
    assert backpressure.busy_wait([]) is None


def test_sock_diag_reads_occupancy_and_size(veth):
    """The outside reading of sk_wmem_alloc and sk_sndbuf that busy_wait of a program relies on."""

    def body() -> tuple[list[tuple[int, int]], int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.bind(("0.0.0.0", 0))  # in the socket table (an unbound UDP socket is in none)
        reader = backpressure.SockDiag()
        try:
            return reader.read(), sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        finally:
            reader.close()
            sock.close()

    seen, sndbuf = veth.sender.run(body)
    assert (0, sndbuf) in seen


@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(duration=0.5, cpu=0, receiver_cpu=1, sndbuf=4096)
def test_own_loop_errno_and_busy_wait(udpsend_result):
    r = udpsend_result
    print(f"own loop: errno {r.errno} eagain {r.eagain} busy_wait {r.busy_wait} {r.busy_wait_detail}")
    assert r.errno.get("EAGAIN", 0) == r.eagain > 0
    assert sum(r.errno.values()) == r.eagain + r.enobufs + r.other_errors
    assert r.busy_wait is not None and r.busy_wait >= 0.7  # the plugin's loop retries at once


def test_busy_wait_marker_fails_a_busy_sender_and_passes_a_polling_one(pytester):
    binary = build_sender(pytester.path)
    traced = sendtrace.unavailable() is None  # without bcc the errno is "not measured", and says so
    pytester.makepyfile(
        f"""
        import pytest
        BIN = {str(binary)!r}
        TRACED = {traced!r}
        @pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])  # the starved receive path
        @pytest.mark.cpu_pressure(cpus=[1], workers=2)
        @pytest.mark.busy_wait(max=0.5)
        @pytest.mark.parametrize("how", ["busy", "poll"])
        def test_sender(sender_process, how):
            r = sender_process.run([BIN, how, "0.5"], cpu=0)
            own = dict(zip(r.process["stdout"].split()[::2], map(int, r.process["stdout"].split()[1::2])))
            print(f"NUMBERS {{how}}: busy_wait {{r.busy_wait}} {{r.busy_wait_detail}} own {{own}} "
                  f"UdpSndbufErrors {{r.eagain}} errno {{r.errno}} ({{r.errno_method}})")
            assert own["eagain"] > 0, "the buffer never filled: the scenario did not starve the path"
            assert own["eagain"] <= r.eagain  # UdpSndbufErrors also counts ENOBUFS: an upper bound
            if TRACED:
                assert r.errno is not None and r.errno.get("EAGAIN", 0) == own["eagain"], (r.errno, r.errno_method)
            else:
                assert r.errno is None and r.errno_method.startswith("not measured"), r.errno_method
        """
    )
    result = pytester.runpytest_subprocess("-s", "-rA")
    out = result.stdout.str()
    print("\n".join(line for line in out.splitlines() if "NUMBERS" in line or "busy_wait " in line))
    result.assert_outcomes(passed=1, failed=1)
    assert re.search(r"^PASSED \S+::test_sender\[poll\]$", out, re.M)
    assert re.search(r"^FAILED \S+::test_sender\[busy\]", out, re.M)
    assert "udpsend bounds violated" in out and "busy_wait" in out and "<= 0.5" in out and " NO" in out
    assert "Traceback" not in out


def test_busy_wait_marker_arguments(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.busy_wait(max="lots")
        def test_a(sender_process):
            pass
        @pytest.mark.busy_wait()
        def test_b(sender_process):
            pass
        """
    )
    out = pytester.runpytest_subprocess().stdout.str()
    assert "@pytest.mark.busy_wait: max='lots'" in out
    assert "@pytest.mark.busy_wait: give max= and/or min=" in out

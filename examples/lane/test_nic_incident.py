"""The original incident on the NIC it happened on (SPEC.md's user story): run in the kernel lane.

A vmxnet3 pair (the guest boots with two emulated vmxnet3 NICs wired back to back).  The
application asks for an 8 MB SO_SNDBUF, which ``net.core.wmem_max`` silently clamps
(set to 32768 here, so the clamp bites at 64 KB under TCG's slow emulated NIC the way
the default 212992 bites on a fast one).  Its sending thread runs on CPU 0; the NIC's
interrupts land on CPU 1 (``irq_cpus=[1]``), which the application's other work (two
CPU hogs) keeps busy.  vmxnet3 frees a sent skb, and so runs ``sock_wfree``, in TX
completion: ``vmxnet3_tq_tx_complete`` from its NAPI poll in the NET_RX softirq that the
interrupt raised on CPU 1.

What the lane measured (TCG, 1 s runs, sock_wfree stacks from the bpf probe; with the
default wmem_max, 425984 B effective):

- 6.1: up to 99.98 % of releases in ``vmxnet3_tq_tx_complete <- vmxnet3_poll_rx_only <-
  __napi_poll <- net_rx_action <- handle_softirqs <- run_ksoftirqd``: the softirq was
  deferred to ksoftirqd, which the hogs starve, and 76 % of sends failed with EAGAIN
  (wfree p99 36 ms).  Emulation makes it vary: other runs of the same scenario kept
  86 % at interrupt exit, or went to ksoftirqd at a lower send rate that never filled
  the 416 KB buffer, hence the smaller clamp and the loose bounds below.
- 6.12: about half the releases or more run at interrupt exit (``__irq_exit_rcu``), the
  rest in ksoftirqd; EAGAIN 24 % (p99 22 ms) in the same run as 6.1's 76 %.
- With this example's 64 KB clamp: 88-93 % EAGAIN on 6.1 and 84-93 % on 6.12, 70-81 % of
  the releases at interrupt exit and the rest in ksoftirqd on both.
- The sender on the interrupt's CPU instead: TX completion runs inside its own
  ``send()`` (``__local_bh_enable_ip <- __dev_queue_xmit``, the "inline" context) on
  both kernels, and no send fails.  Where the interrupt lands decides the story.

Run it with ``ci/lane.sh`` (or ``--udpsend-kernel IMAGE --udpsend-backend bpf``); on a host
without an emulated vmxnet3 pair it skips, saying so.
"""

from __future__ import annotations

import pytest

EIGHT_MB = 8 << 20
WMEM_MAX = 32768
TX_COMPLETION = "vmxnet3_tq_tx_complete"

pytestmark = [
    pytest.mark.topology(link="vmxnet3", irq_cpus=[1]),
    pytest.mark.cpu_pressure(cpus=[1], workers=2),
    pytest.mark.wfree_latency(backend="bpf"),
    pytest.mark.usefixtures("clamped"),
]


@pytest.fixture
def clamped(sysctl):
    sysctl.set("net.core.wmem_max", WMEM_MAX)


def _share(r, context: str) -> float:
    contexts = r.wfree["contexts"]
    return contexts.get(context, 0) / max(1, sum(contexts.values()))


def _top_stack(r) -> list[str]:
    return r.wfree["stacks"][0]["frames"] if r.wfree.get("stacks") else []


@pytest.mark.udpsend(duration=1.0, cpu=0, receiver_cpu=0, sndbuf=EIGHT_MB)
@pytest.mark.eagain_rate(min=0.01)  # a release waits for an interrupt and its softirq on the busy CPU
def test_tx_completion_on_a_busy_cpu_fills_the_clamped_buffer(udpsend_result):
    r = udpsend_result
    print("\n" + r.summary())
    assert r.sndbuf_requested == EIGHT_MB and r.sndbuf_effective == 2 * WMEM_MAX  # silently clamped
    assert abs(r.wfree["count"] - r.sent) <= 0.05 * r.sent  # every datagram released once, in the driver
    assert any(TX_COMPLETION in frame for frame in _top_stack(r)), r.wfree["stacks"][:1]
    per_cpu = [sum(col) for col in zip(*[counts for port in r.irqs.values() for counts in port.values()])]
    assert per_cpu[1] >= 0.95 * sum(per_cpu) > 0, r.irqs  # the NIC's interrupts on CPU 1, as pinned


def test_where_tx_completion_ran_is_what_the_upgrade_changed(udp_sender):
    """Three runs, judged by the most telling one.  Under TCG both vCPUs share one host thread,
    so how long a softirq runs (what sends 6.1 to ksoftirqd) varies from run to run: 6.1 put
    14-100 % of the releases in ksoftirqd, 6.12 kept 49-82 % at interrupt exit.  The bounds
    claim only the side each kernel is on; ``--udpsend-gate-against`` compares the two."""
    runs = [udp_sender.run(duration=1.0, cpu=0, receiver_cpu=0, sndbuf=EIGHT_MB) for _ in range(3)]
    for r in runs:
        assert any(TX_COMPLETION in f for f in _top_stack(r)), _top_stack(r)
    if runs[0].kernel.split(".")[:2] == ["6", "1"]:
        assert max(_share(r, "ksoftirqd") for r in runs) >= 0.05, [r.wfree["contexts"] for r in runs]  # 14-100 % seen
    else:  # 6.12: interrupt exit runs the softirq (49-75 % of releases seen)
        assert max(_share(r, "softirq") for r in runs) >= 0.3, [r.wfree["contexts"] for r in runs]


@pytest.mark.udpsend(duration=1.0, cpu=1, receiver_cpu=0, sndbuf=EIGHT_MB)
@pytest.mark.eagain_rate(max=0.05)
def test_a_sender_on_the_interrupts_cpu_completes_its_own_sends(udpsend_result):
    r = udpsend_result
    assert _share(r, "inline") >= 0.9, r.wfree["contexts"]  # TX completion ran in its own send()
    assert "__local_bh_enable_ip" in _top_stack(r), _top_stack(r)

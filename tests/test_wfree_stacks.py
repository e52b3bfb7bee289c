"""Where sock_wfree ran: ranking, trimming and wording of the bpf probe's release stacks
(no bpf needed: the stack ids and their frames are given here), and how results carry them."""

from __future__ import annotations

import pytest

from pytest_udpsend.measure.bpfprobe import caller_frames, stack_text, top_stacks
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.results import report, store

VMXNET3 = [
    "vmxnet3_tq_tx_complete",
    "vmxnet3_poll_rx_only",
    "net_rx_action",
    "handle_softirqs",
    "run_ksoftirqd",
    "smpboot_thread_fn",
    "kthread",
    "ret_from_fork",
    "ret_from_fork_asm",
]
VETH = [
    "ip_rcv_core",
    "ip_rcv",
    "__netif_receive_skb_one_core",
    "process_backlog",
    "__napi_poll",
    "net_rx_action",
    "__do_softirq",
    "do_softirq",
    "__local_bh_enable_ip",
    "__dev_queue_xmit",
    "ip_finish_output2",
]


def test_the_probe_s_own_frames_are_dropped_so_the_first_is_the_caller_that_freed():
    fentry = ["bpf_prog_6deef7357e7b4530_kfunc__vmlinux__sock_wfree", "bpf_trampoline_6442510403", "sock_wfree", *VETH]
    assert caller_frames(fentry) == VETH
    assert caller_frames(["sock_wfree", "skb_release_head_state", "consume_skb"]) == [
        "skb_release_head_state",
        "consume_skb",
    ]
    assert caller_frames(["[unknown]", "sock_wfree", "ip_rcv_core"]) == ["ip_rcv_core"]
    # 6.12: the JIT code resolved to the kallsyms name before it; sock_wfree still marks the cut
    assert caller_frames(["handshake_exit", "handshake_exit", "sock_wfree", *VETH]) == VETH
    assert caller_frames(["bpf_prog_1_x", "[unknown]", *VETH]) == VETH  # no sock_wfree seen: names decide
    assert caller_frames(VETH) == VETH  # nothing of the probe's: kept whole
    assert caller_frames(["sock_wfree", *VETH, "sock_wfree"]) == [
        *VETH,
        "sock_wfree",
    ]  # only the top few are the probe's


def test_a_release_at_gro_entry_starts_at_napi_gro_receive():
    """Under GRO a datagram's release is taken at the raw tracepoint napi_gro_receive_entry: its stack
    starts in the tracepoint's runner, which is the probe's own, not where the datagram went."""
    gro = ["napi_gro_receive", "veth_xdp_rcv", "veth_poll", "__napi_poll", "napi_threaded_poll", "kthread"]
    raw_tp = ["bpf_prog_0e1f_on_gro_entry", "bpf_trace_run1", "__bpf_trace_napi_gro_receive_entry", *gro]
    assert caller_frames(raw_tp) == gro
    assert caller_frames(["bpf_get_stackid_raw_tp", "bpf_prog_0e1f_on_gro_entry", "bpf_trace_run1", *gro]) == gro
    # seen in the 6.1 lane: the JIT code resolved to a module's kallsyms name; the runner still marks the cut
    assert caller_frames(["mpls_gso_exit", "bpf_trace_run1", *gro]) == gro
    assert stack_text(0.97, gro).endswith("__napi_poll <- napi_threaded_poll")


def test_the_text_ends_at_the_frame_that_says_who_ran_the_release():
    assert stack_text(0.81, VMXNET3) == (
        "81 % of releases: vmxnet3_tq_tx_complete <- vmxnet3_poll_rx_only <- net_rx_action <- handle_softirqs <- run_ksoftirqd"
    )
    assert stack_text(0.5, VETH).endswith("net_rx_action <- __do_softirq <- do_softirq")
    assert stack_text(0.5, ["ip_rcv_core", "handle_softirqs", "do_softirq.part.0", "__local_bh_enable_ip"]) == (
        "50 % of releases: ip_rcv_core <- handle_softirqs <- do_softirq.part.0"
    )
    deep = [f"f{i}" for i in range(30)]
    assert stack_text(0.004, deep) == "0 % of releases: " + " <- ".join(deep[:10]) + " <- ..."
    assert stack_text(1.0, []) == "100 % of releases: (no frames)"


def test_top_stacks_per_context_symbolizes_only_the_most_frequent_and_merges_same_names():
    frames = {
        1: ["sock_wfree", *VETH],
        2: ["sock_wfree", *VETH],
        3: ["sock_wfree", "kfree_skb_reason"],
        4: VMXNET3,
        5: ["a"],
        6: ["b"],
        7: ["c"],
    }
    frames.update({100 + i: [f"rare{i}"] for i in range(20)})
    counts = {
        ("inline", 1): 500,
        ("inline", 2): 300,
        ("inline", 3): 10,
        ("ksoftirqd", 4): 150,
        ("softirq", 5): 9,
        ("softirq", 6): 8,
        ("softirq", 7): 7,
        ("softirq", 8): 0,
    }
    counts.update({("softirq", 100 + i): 1 for i in range(20)})  # softirq: 44 samples in all
    contexts = {"inline": 8100, "ksoftirqd": 1500, "softirq": 440, "napi_thread": 0}  # every release, exact
    asked: list[int] = []

    def frames_of(stack_id: int) -> list[str]:
        asked.append(stack_id)
        return frames[stack_id]

    stacks = top_stacks(counts, frames_of, contexts)
    assert [(s["context"], s["count"], s["samples"]) for s in stacks] == [
        ("inline", 8000, 800),
        ("ksoftirqd", 1500, 150),
        ("inline", 100, 10),
        ("softirq", 90, 9),
        ("softirq", 80, 8),
        ("softirq", 70, 7),
    ]
    assert stacks[0]["frames"] == VETH and stacks[1]["frames"][0] == "vmxnet3_tq_tx_complete"
    assert stacks[0]["share"] == 0.7968 and stacks[0]["text"].startswith("80 % of releases: ip_rcv_core <- ip_rcv")
    assert sum(s["share"] for s in stacks) <= 1
    assert len([i for i in asked if i >= 100]) == 10 - 3 and 8 not in asked  # the rare ones: at most 10 per context
    thirds = top_stacks({("inline", i): 1 for i in range(3)}, lambda i: [f"f{i}"], {"inline": 3})
    assert sum(s["share"] for s in thirds) <= 1  # rounded down: never more than all releases
    assert top_stacks({}, frames_of, {"inline": 0}) == []


def test_results_carry_the_stacks_through_the_schema_the_terminal_and_the_report():
    stacks = top_stacks(
        {("ksoftirqd", 4): 81, ("inline", 1): 19},
        lambda i: VMXNET3 if i == 4 else VETH,
        {"ksoftirqd": 81, "inline": 19},
    )
    wfree = {
        "backend": "bpf",
        "count": 100,
        "p50_us": 1.0,
        "p99_us": 2.0,
        "max_us": 2.0,
        "contexts": {"inline": 19, "ksoftirqd": 81},
        "stacks": stacks,
        "stacks_lost": 0,
        "stacks_sampled": 100,
        "stack_every": 8,
    }
    top = "sock_wfree top stack (ksoftirqd): 81 % of releases: vmxnet3_tq_tx_complete <- vmxnet3_poll_rx_only"
    assert top in SendResult(wfree=wfree).summary()
    sample = {"eagain_rate": 0.0, "pps": 1e5, "kernel": "6.1", "wfree": wfree}
    doc = store.document({"kernel": "6.1"}, {"t::x": {"outcome": "passed", "samples": [sample]}})
    assert store.validate(doc, "r.json") is doc
    page = report.render(doc)
    assert "ksoftirqd: 81 % of releases: vmxnet3_tq_tx_complete &lt;- vmxnet3_poll_rx_only" in page
    assert "inline: 19 % of releases: ip_rcv_core" in page
    bad = {**wfree, "stacks": [{**stacks[0], "share": 1.5}]}
    doc["tests"]["t::x"]["samples"][0]["wfree"] = bad
    with pytest.raises(ValueError, match=r"field 'tests.t::x.samples.0.wfree.stacks.0.share': 1.5 is greater than"):
        store.validate(doc, "r.json")

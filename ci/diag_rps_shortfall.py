#!/usr/bin/env python3
"""Diagnosis: under RPS, does every datagram reach the BPF programs on net:netif_receive_skb?

The tracepoint backend counts up to 1.3 % fewer releases than datagrams sent when RPS moves the
receive path to CPU 1 (docs/explanation/measurement.md).  Each run here (0.5 s, RPS to CPU 1,
16 KB buffer, the plugin's loop on CPU 0) prints, beside the backend's own counts:

* the kernel's ``run_cnt`` of the backend's program on net:netif_receive_skb
  (``kernel.bpf_stats_enabled`` set through the session's journal, restored), outside any map;
* a second, independent program on the same tracepoint counting every hit atomically, per CPU,
  and those whose skb still has the sock_wfree destructor;
* the same program's hits at net:netif_rx and net:netif_rx_entry (the sender's CPU, before the
  backlog) and at skb:consume_skb / skb:kfree_skb with sock_wfree still set.

Needs root, bcc and kernel BTF; take the host lock like any measurement:
``flock /work/notes/heavy.lock .venv/bin/python ci/diag_rps_shortfall.py 8``.

2026-12-04, 6.18 host, 20 runs (12 with the hits at netif_rx): 12 short, by 188 to 2,858
datagrams (up to 1.08 %).  In every run the backend's count = its program's run_cnt = the
independent program's hits (all on CPU 1, all with sock_wfree), recursion misses 0; where
counted, netif_rx = netif_rx_entry = sent = received, and consume/kfree with sock_wfree 0 or 1.
So the missing datagrams went into the backlog and were received, but no BPF program on
net:netif_receive_skb ran for them: not our counting.

2026-12-04 afternoon, added: the summed ``work`` of net:napi_poll (equal to the hits: the programs
there missed the same datagrams), the hits 1 s after the run (unchanged: not late), the independent
program's own recursion misses (0), and the datagrams seen at netif_rx and never at
netif_receive_skb by the time netif_rx saw them: all in one or two 10 ms windows, 130 to 300 ms
into the run.  With tracefs mounted by hand, ``perf stat -e net:netif_receive_skb -a`` around
six runs counted 530,850 hits, exactly the datagrams sent, while the BPF programs counted
527,839: the tracepoint fired, and for a few milliseconds the kernel ran no BPF program there.
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

from pytest_udpsend.frontend.session import standalone
from pytest_udpsend.host import topology
from pytest_udpsend.measure import sender, tploader, tpprobe
from pytest_udpsend.measure.params import make_params
from pytest_udpsend.measure.tpprobe import EVENTS, TracepointProbe

COUNTER = r"""
BPF_PERCPU_ARRAY(hits, u64, 2);
BPF_PERCPU_ARRAY(others, u64, 6);
static inline __attribute__((always_inline)) void add(u32 k) { u64 *n = others.lookup(&k); if (n) __sync_fetch_and_add(n, 1); }
static inline __attribute__((always_inline)) int wfree(u64 skb) {
    u64 d = 0; bpf_probe_read_kernel(&d, 8, (void *)(skb + OFF_D)); return d == WFREE; }
BPF_HASH(pending, u64, u64, 262144);  /* skb -> when netif_rx saw it, until netif_receive_skb does */
BPF_ARRAY(first, u64, 1);
int on_netif_rx(struct bpf_raw_tracepoint_args *ctx) {
    add(0); u64 skb = ctx->args[0], now = bpf_ktime_get_ns(); pending.update(&skb, &now);
    u32 z = 0; u64 *f = first.lookup(&z); if (f && *f == 0) *f = now; return 0; }
int on_rx_entry(struct bpf_raw_tracepoint_args *ctx) { add(1); return 0; }
int on_consume(struct bpf_raw_tracepoint_args *ctx) { if (wfree(ctx->args[0])) add(2); return 0; }
int on_kfree(struct bpf_raw_tracepoint_args *ctx) { if (wfree(ctx->args[0])) add(3); return 0; }
/* napi_poll(napi, work, budget): the skbs a poll handled, process_backlog's included */
int on_napi_poll(struct bpf_raw_tracepoint_args *ctx) {
    u32 k = 4; u64 *n = others.lookup(&k); if (n) __sync_fetch_and_add(n, (u64)(int)ctx->args[1]); return 0; }
int on_copy(struct bpf_raw_tracepoint_args *ctx) { add(5); return 0; }
int on_hit(struct bpf_raw_tracepoint_args *ctx) {
    u64 skb = ctx->args[0]; pending.delete(&skb);
    u32 k = 0; u64 *n = hits.lookup(&k); if (n) __sync_fetch_and_add(n, 1);
    if (wfree(ctx->args[0])) { k = 1; n = hits.lookup(&k); if (n) __sync_fetch_and_add(n, 1); }
    return 0;
}
"""
ATTACH = (
    (b"netif_receive_skb", b"on_hit"),
    (b"netif_rx", b"on_netif_rx"),
    (b"netif_rx_entry", b"on_rx_entry"),
    (b"consume_skb", b"on_consume"),
    (b"kfree_skb", b"on_kfree"),
    (b"napi_poll", b"on_napi_poll"),
    (b"skb_copy_datagram_iovec", b"on_copy"),
)


def run_counts(fds: list[int], offset: int) -> list[int]:
    """bpf_prog_info.run_cnt of each program (the reader of recursion_misses, at run_cnt's offset)."""
    return [tpprobe.recursion_misses([fd], offset) or 0 for fd in fds]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    info = tploader.btf_offsets("bpf_prog_info", ("run_cnt", "recursion_misses"))
    run_cnt = info["run_cnt"]
    off_d = tploader.btf_offsets("sk_buff", ("destructor",))["destructor"]
    kallsyms = Path("/proc/kallsyms").read_text().splitlines()
    sock_wfree = next(int(line.split()[0], 16) for line in kallsyms if line.split()[2] == "sock_wfree")
    counter = tploader.load(COUNTER, [f"-DOFF_D={off_d}", f"-DWFREE={sock_wfree}ULL"], [f.decode() for _, f in ATTACH])
    for tp, fn in ATTACH:
        counter.attach_raw_tracepoint(tp=tp, fn_name=fn)
    hits, others = counter.get_table("hits"), counter.get_table("others")
    pending, first = counter.get_table("pending"), counter.get_table("first")
    hit_fd = counter.load_func(b"on_hit", counter.RAW_TRACEPOINT).fd  # bcc's cache: the attached program
    with standalone() as ctx:
        ctx.exclusive()
        ctx.sysctls.set("kernel.bpf_stats_enabled", 1)  # journaled, restored on exit
        topo = topology.build(topology.TopologySpec(rps_cpus=[1]), ctx.undo, ctx.session.subnets, "rps")
        probe = TracepointProbe("diagnosis")
        probe.prepare(ctx.sysctls)
        rx = [fn for _, fn in EVENTS].index("on_rx")
        for i in range(runs):
            hits.clear()
            others.clear()
            pending.clear()
            first.clear()
            before = run_counts(probe._fds, run_cnt)
            r = sender.run(topo, make_params(duration=0.5, cpu=0, sndbuf=16384), ctx.sysctls, probe)
            ran = run_counts(probe._fds, run_cnt)[rx] - before[rx]
            per_cpu = [int(v) for v in hits[ctypes.c_int(0)]][:2]
            h = [hits.sum(ctypes.c_int(k)).value for k in range(2)]
            o = [others.sum(ctypes.c_int(k)).value for k in range(6)]
            own_misses = tpprobe.recursion_misses([hit_fd], info["recursion_misses"])
            time.sleep(1.0)  # a datagram the receive path handled only after the run would show up here
            later = hits.sum(ctypes.c_int(0)).value
            w = r.wfree
            t0 = first[ctypes.c_int(0)].value
            left = sorted((v.value - t0) // 10_000_000 for v in pending.values())
            bins = {b: left.count(b) for b in sorted(set(left))}
            print(f"  seen at netif_rx, never at netif_receive_skb: {len(left)}, per 10 ms after the first: {bins}")
            print(
                f"run {i + 1}: sent {r.sent} received {r.received} | backend released {w['count']} "
                f"charges {w['charges']} recursion misses {w['missed_events']} run_cnt {ran} | "
                f"netif_receive_skb hits {h[0]} (CPU 0, 1: {per_cpu}) with sock_wfree {h[1]} | netif_rx {o[0]} "
                f"netif_rx_entry {o[1]} consume/kfree with sock_wfree {o[2]}/{o[3]} napi_poll work {o[4]} "
                f"skb_copy_datagram_iovec {o[5]} | 1 s later: netif_receive_skb hits {later}, its recursion misses {own_misses} | short {r.sent - w['count']}",
                flush=True,
            )
        probe.close()


if __name__ == "__main__":
    main()

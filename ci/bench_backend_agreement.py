#!/usr/bin/env python3
"""Benchmark: do the tracepoint backend (measure/tpprobe.py) and the kprobe/fentry backend
(measure/bpfprobe.py) agree, in the kernel lane (issue 26, item 4)?

One guest boot per kernel image (TCG, the lane's two vCPUs and an emulated vmxnet3 pair), seven
scenarios, each run once with BOTH probes attached to the same run, so that they observe the same
datagrams and a difference is the backends', not the runs' (if the two cannot be attached together
the scenario falls back to two back-to-back runs, and the table says so):

  plain veth              no RPS, no NAPI: released inline
  RPS to a busy CPU       rps_cpus=[1], two CPU hogs on CPU 1
  starved NAPI thread     gro, threaded_napi, napi_cpus=[1], two hogs on CPU 1, sndbuf 64 KB
  tbf 20mbit              tbf rate 20mbit burst 32kb latency 50ms on the sender's veth
  GRO threaded NAPI       gro, threaded_napi, napi_cpus=[1], no hogs (merged skbs: calls < datagrams)
  vmxnet3 TX completion   link='vmxnet3', irq_cpus=[1], two hogs on CPU 1
  full NAPI ring          the starved NAPI thread with 64-byte datagrams and a 4 MB forced buffer: more
                          skbs in flight than veth's ring holds (256); before 6.3 its drops were
                          reported as skb:consume_skb, which the tracepoint backend attaches there

Printed per kernel x scenario: datagrams sent; per backend datagrams released, sock_wfree calls,
context shares, p50/p99; the latency difference tracepoint - bpf with its sign (the tracepoint
interval starts at net_dev_queue, later than the bpf charge at skb_set_owner_w, and ends at the
release event just before sock_wfree: expected negative, a few us); then whether counts agree within
1 % and context shares within 2 points.  ``--overhead ROUNDS`` adds the backends' cost to the sender
in the guest: plain veth pps without a probe, with the tracepoint backend alone and with the bpf
backend alone, the arms rotated from round to round (TCG inflates every instruction alike, but not
every kind of work alike: a figure for this lane, not a prediction for KVM); ``--only "plain veth"
--overhead 6`` is its cheap form.

  flock /work/notes/heavy.lock .venv/bin/python ci/bench_backend_agreement.py \\
      .kernels/6.1.0-56-amd64/root/boot/vmlinuz-6.1.0-56-amd64 [IMAGE ...] [--json out.json]

Run as root on the host; it boots each image itself (``--guest`` is the half that runs inside).
Not a test: it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COUNT_TOLERANCE = 0.01  # counts within 1 %
SHARE_TOLERANCE = 2.0  # context shares within 2 percentage points
HOGS_ON_1 = {"cpus": [1], "workers": 2}

SCENARIOS: dict[str, dict[str, Any]] = {
    "plain veth": {"topology": {}, "params": {}, "pressure": None},
    "RPS to a busy CPU": {"topology": {"rps_cpus": [1]}, "params": {"receiver_cpu": 1}, "pressure": HOGS_ON_1},
    "starved NAPI thread": {
        "topology": {"gro": True, "threaded_napi": True, "napi_cpus": [1]},
        "params": {"receiver_cpu": 1, "sndbuf": 65536},
        "pressure": HOGS_ON_1,
    },
    "tbf 20mbit": {"topology": {"qdisc": "tbf rate 20mbit burst 32kb latency 50ms"}, "params": {}, "pressure": None},
    "GRO threaded NAPI": {
        "topology": {"gro": True, "threaded_napi": True, "napi_cpus": [1]},
        "params": {"receiver_cpu": 1},
        "pressure": None,
    },
    "vmxnet3 TX completion": {"topology": {"link": "vmxnet3", "irq_cpus": [1]}, "params": {}, "pressure": HOGS_ON_1},
    # more small skbs in flight than veth's NAPI ring holds (256): before 6.3 its drops were reported as consumes
    "full NAPI ring": {
        "topology": {"gro": True, "threaded_napi": True, "napi_cpus": [1]},
        "params": {"receiver_cpu": 1, "payload": 64, "sndbuf": 4194304, "force_sndbuf": True},
        "pressure": HOGS_ON_1,
    },
}
CONTEXT_ORDER = (
    "inline",
    "softirq",
    "ksoftirqd",
    "napi_thread",
)  # bpfprobe.CONTEXTS (not imported: the host half needs no bcc)
KEPT = ("count", "calls", "charges", "released_at", "contexts", "p50_us", "p90_us", "p99_us", "max_us", "unavailable")


# ---------------------------------------------------------------- the guest's half


class BothBackends:
    """The bpf and the tracepoint probe attached to the same run (a WfreeProbe: the sender sees the
    bpf figures, with the tracepoint backend's under "tracepoint")."""

    backend = "bpf"
    receiver_timestamps = False
    reason = method = "bpf and tracepoint backends on the same datagrams"

    def __init__(self, bpf: Any, tp: Any) -> None:
        self.bpf, self.tp = bpf, tp

    def prepare(self, sysctls: Any, path: Any = None, largest: int | None = None) -> None:
        self.bpf.prepare(sysctls, path, largest)
        self.tp.prepare(sysctls, path, largest)

    def begin(self, fd: int, tgid: int) -> None:
        self.bpf.begin(fd, tgid)
        try:
            self.tp.begin(fd, tgid)
        except BaseException:
            self.bpf.end([], 0, 0)  # disarm and detach the one that was attached
            raise

    def end(self, lat: Sequence[int], lost: int, sent: int) -> dict[str, Any]:
        out: dict[str, Any] = self.bpf.end(lat, lost, sent)
        out["tracepoint"] = self.tp.end(lat, lost, sent)
        return out

    def close(self) -> None:
        pass


def _figures(w: dict[str, Any]) -> dict[str, Any]:
    return {k: w.get(k) for k in KEPT if k in w}


def _run_scenario(
    ctx: Any, name: str, sc: dict[str, Any], duration: float, bpf: Any, tp: Any, both_ok: list[bool]
) -> dict[str, Any]:
    from pytest_udpsend.errors import PrivilegeError
    from pytest_udpsend.host import topology
    from pytest_udpsend.measure import load, sender
    from pytest_udpsend.measure.params import make_params

    spec = topology.make_spec(**sc["topology"])
    hint = "".join(c for c in name if c.isalnum())[:8]
    if spec.is_nic:
        ports = ctx.session.nic_pair(spec.link)
        topo = topology.build_nic(spec, ctx.undo, ctx.session.subnets, ports, ctx.session.port_journal, hint=hint)
    else:
        topo = topology.build(spec, ctx.undo, ctx.session.subnets, hint=hint)
    params = make_params(duration=duration, cpu=0, **sc["params"])
    pressure = load.make_spec(**sc["pressure"]) if sc["pressure"] else None
    row: dict[str, Any] = {
        "scenario": name,
        "topology": topo.describe(),
        "pressure": pressure.describe() if pressure else "",
    }
    if both_ok[0]:
        try:
            r = sender.run(topo, params, ctx.sysctls, BothBackends(bpf, tp), pressure)
        except PrivilegeError as exc:  # the two cannot be attached together: back-to-back from now on
            both_ok[0] = False
            row["why_not_same_run"] = str(exc)
        else:
            row.update(
                mode="same run",
                sent=r.sent,
                eagain_rate=r.eagain_rate,
                pps=r.pps,
                checks=r.checks,
                bpf=_figures(r.wfree),
                tracepoint=_figures(r.wfree["tracepoint"]),
            )
            return row
    rb = sender.run(topo, params, ctx.sysctls, bpf, pressure)
    rt = sender.run(topo, params, ctx.sysctls, tp, pressure)
    row.update(
        mode="back-to-back",
        sent=rb.sent,
        sent_tracepoint=rt.sent,
        eagain_rate=rb.eagain_rate,
        pps=rb.pps,
        checks=rb.checks + rt.checks,
        bpf=_figures(rb.wfree),
        tracepoint=_figures(rt.wfree),
    )
    return row


def overhead(ctx: Any, duration: float, rounds: int, bpf: Any, tp: Any) -> dict[str, list[float]]:
    """Sender pps on plain veth without a probe and with each backend alone, the arms in rotating order
    from round to round (a drift of the guest's speed falls on every arm alike)."""
    from pytest_udpsend.host import topology
    from pytest_udpsend.measure import sender
    from pytest_udpsend.measure.params import make_params

    plain = topology.build(topology.make_spec(), ctx.undo, ctx.session.subnets, hint="overhead")
    params = make_params(duration=duration, cpu=0)
    arms: list[tuple[str, Any]] = [("none", None), ("tracepoint", tp), ("bpf", bpf)]
    pps: dict[str, list[float]] = {name: [] for name, _ in arms}
    for i in range(rounds):
        shift = i % len(arms)
        for name, probe in arms[shift:] + arms[:shift]:
            pps[name].append(sender.run(plain, params, ctx.sysctls, probe).pps)
    return pps


def guest(out: Path, duration: float, only: Sequence[str], rounds: int = 0) -> int:
    """Inside the guest: every scenario with both backends (and the overhead arms if ``rounds``); the rows as
    JSON in ``out``."""
    import os

    from pytest_udpsend.errors import PrivilegeError
    from pytest_udpsend.frontend.session import standalone
    from pytest_udpsend.measure.bpfprobe import BpfProbe
    from pytest_udpsend.measure.tpprobe import TracepointProbe

    doc: dict[str, Any] = {"kernel": os.uname().release, "duration": duration, "rows": []}
    bpf, tp = BpfProbe("benchmark"), TracepointProbe("benchmark")
    both_ok = [True]
    try:
        with standalone() as ctx:
            ctx.exclusive()  # the host lock (the guest's own), and before any NIC port is borrowed
            started = time.monotonic()
            try:
                bpf.build()  # compile both before anything is timed
                tp.build()
            except PrivilegeError as exc:
                doc["error"] = str(exc)
                out.write_text(json.dumps(doc, indent=1))
                return 1
            doc["compile_s"] = round(time.monotonic() - started, 1)
            doc["tp_programs"] = "typed (tp_btf)" if tp.typed_refused is None else f"raw ({tp.typed_refused})"
            doc["bpf_attach"] = bpf.attach
            for name, sc in SCENARIOS.items():
                if only and name not in only:
                    continue
                try:
                    row = _run_scenario(ctx, name, sc, duration, bpf, tp, both_ok)
                except Exception as exc:  # one scenario that cannot run here does not lose the others
                    row = {
                        "scenario": name,
                        "error": f"{type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc()[-1500:],
                    }
                doc["rows"].append(row)
                out.write_text(json.dumps(doc, indent=1))
            if rounds:
                doc["overhead"] = overhead(ctx, duration, rounds, bpf, tp)
    finally:
        bpf.close()
        tp.close()
    out.write_text(json.dumps(doc, indent=1))
    return 0


# ---------------------------------------------------------------- the host's half: agreement


def _share(w: dict[str, Any], context: str) -> float:
    contexts = w.get("contexts") or {}
    total = sum(contexts.values())
    return 100.0 * contexts.get(context, 0) / total if total else 0.0


def _rel(a: float | None, b: float | None) -> float | None:
    """a against b, relative (0.01 = 1 %); None if either is missing."""
    if a is None or b is None:
        return None
    return (a - b) / max(b, 1)


def agreement(row: dict[str, Any]) -> dict[str, Any]:
    """The verdicts of one row: counts within COUNT_TOLERANCE, shares within SHARE_TOLERANCE points."""
    b, t = row["bpf"], row["tracepoint"]
    seen = set(b.get("contexts") or {}) | set(t.get("contexts") or {})
    contexts = [c for c in CONTEXT_ORDER if c in seen] + sorted(seen - set(CONTEXT_ORDER))
    share_diff = {c: round(_share(t, c) - _share(b, c), 2) for c in contexts}
    released, calls = _rel(t.get("count"), b.get("count")), _rel(t.get("calls"), b.get("calls"))
    sent = row["sent"]
    lat = {p: (None if t.get(p) is None or b.get(p) is None else round(t[p] - b[p], 2)) for p in ("p50_us", "p99_us")}
    out = {
        "released_diff": released,
        "calls_diff": calls,
        "share_diff_points": share_diff,
        "latency_diff_us": lat,  # tracepoint - bpf
        "released_vs_sent": {
            "bpf": _rel(b.get("count"), sent),
            "tracepoint": _rel(t.get("count"), row.get("sent_tracepoint", sent)),
        },
        "counts_agree": released is not None
        and calls is not None
        and abs(released) <= COUNT_TOLERANCE
        and abs(calls) <= COUNT_TOLERANCE,
        "shares_agree": bool(contexts) and all(abs(d) <= SHARE_TOLERANCE for d in share_diff.values()),
    }
    out["agree"] = out["counts_agree"] and out["shares_agree"]
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.2f} %"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:g}"


def table(kernel: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        head = f"{kernel} / {row['scenario']}"
        if "error" in row:
            lines += [f"{head}: could not run: {row['error']}", ""]
            continue
        a = row["agreement"] = agreement(row)
        sent = f"sent {row['sent']:,}" + (
            f" (tracepoint run {row['sent_tracepoint']:,})" if "sent_tracepoint" in row else ""
        )
        lines.append(f"{head} [{row['mode']}]: {sent}, EAGAIN {row['eagain_rate']:.1%}, {row['pressure'] or 'no hogs'}")
        contexts = list(a["share_diff_points"])
        lines.append(
            f"  {'backend':<11}{'released':>10}{'vs sent':>10}{'calls':>9}{'p50 us':>9}{'p99 us':>10}  shares %: "
            + " ".join(f"{c:>11}" for c in contexts)
        )
        for backend in ("bpf", "tracepoint"):
            w = row[backend]
            if w.get("unavailable"):
                lines.append(f"  {backend:<11}not measured: {w['unavailable']}")
                continue
            lines.append(
                f"  {backend:<11}{_num(w.get('count')):>10}{_pct(a['released_vs_sent'][backend]):>10}"
                f"{_num(w.get('calls')):>9}{_num(w.get('p50_us')):>9}{_num(w.get('p99_us')):>10}            "
                + " ".join(f"{_share(w, c):>11.2f}" for c in contexts)
            )
        lat = a["latency_diff_us"]
        lines.append(
            f"  tracepoint - bpf: released {_pct(a['released_diff'])}, calls {_pct(a['calls_diff'])}, shares "
            + ", ".join(f"{c} {d:+.2f} pt" for c, d in a["share_diff_points"].items())
            + f"; latency p50 {_num(lat['p50_us'])} us, p99 {_num(lat['p99_us'])} us"
        )
        if row["tracepoint"].get("released_at"):
            lines.append(f"  tracepoint released at: {row['tracepoint']['released_at']}")
        lines.append(
            f"  counts within {COUNT_TOLERANCE:.0%}: {'yes' if a['counts_agree'] else 'NO'}; shares within "
            f"{SHARE_TOLERANCE:g} points: {'yes' if a['shares_agree'] else 'NO'}"
        )
        lines.append("")
    return lines


def overhead_lines(kernel: str, pps: dict[str, list[float]]) -> list[str]:
    base = statistics.median(pps["none"])
    lines = [f"{kernel} / overhead on plain veth ({len(pps['none'])} rounds, arms rotated), sender pps:"]
    for arm, values in pps.items():
        med = statistics.median(values)
        lines.append(
            f"  {arm:<11} median {med:>9,.0f}  {1 - med / base:6.1%} fewer than without  "
            f"(rounds {', '.join(f'{v:,.0f}' for v in values)})"
        )
    return [*lines, ""]


# ---------------------------------------------------------------- the host's half: booting


def boot(
    image: Path, duration: float, timeout: float, only: Sequence[str], rounds: int = 0
) -> tuple[dict[str, Any] | None, str]:
    """One guest boot of ``image`` running the guest half: (its document or None, what went wrong)."""
    from pytest_udpsend.host import nics
    from pytest_udpsend.host.state import state_dir
    from pytest_udpsend.lane import vm

    image = image.resolve()
    release = vm.kernel_release(image)
    problems = vm.preconditions(image, release, "bpf")
    if problems:
        return None, "; ".join(problems)
    outdir = Path(tempfile.mkdtemp(prefix="udpsend-bench-agree-", dir=str(state_dir("lanes"))))
    try:
        q = shlex.quote
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--guest",
            str(outdir / "rows.json"),
            "--duration",
            str(duration),
            *(f"--only={name}" for name in only),
            f"--overhead={rounds}",
        ]
        (outdir / "run.sh").write_text(
            f"modprobe {q(nics.MODELS['vmxnet3'].driver)}\n"
            "udevadm settle -t 10 2>/dev/null || sleep 2\n"
            f"cd {q(str(REPO))}\n"
            + (f"export PYTHONPATH={q(os.environ['PYTHONPATH'])}\n" if os.environ.get("PYTHONPATH") else "")
            + f"export {nics.LANE_NICS_ENV}={q(nics.encode_lane_env({'vmxnet3'}))}\n"
            f"{' '.join(q(a) for a in argv)} > {q(str(outdir / 'guest.log'))} 2>&1\n"
            f"echo $? > {q(str(outdir / 'rc'))}\n"
        )
        kvm, note = vm.kvm_works(image)
        started = time.monotonic()
        rc, trouble = vm._boot(
            image,
            f"sh {q(str(outdir / 'run.sh'))}",
            outdir,
            kvm,
            timeout,
            outdir / "console.log",
            qemu_extra=vm.nic_qemu_args(["vmxnet3"]),
        )
        wall = time.monotonic() - started
        rows = outdir / "rows.json"
        if not rows.exists():
            return None, (
                f"{release}: the guest wrote no rows (exit {rc}{f', it {trouble}' if trouble else ''}); guest log:\n"
                f"{vm.tail(outdir / 'guest.log')}\nconsole:\n{vm.tail(outdir / 'console.log', 20)}"
            )
        doc: dict[str, Any] = json.loads(rows.read_text())
        doc.update(image=str(image), wall_s=round(wall, 1), accel=note, guest_exit=rc, trouble=trouble)
        if rc != 0 or trouble:
            doc["guest_log_tail"] = vm.tail(outdir / "guest.log")
        return doc, ""
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("images", nargs="*", type=Path, help="kernel images (vmlinuz) to boot, one guest each")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per scenario (default 1.0)")
    ap.add_argument("--timeout", type=float, default=1500.0, help="deadline per guest boot, seconds")
    ap.add_argument(
        "--only", action="append", default=[], choices=list(SCENARIOS), help="run only this scenario (repeatable)"
    )
    ap.add_argument(
        "--overhead",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also the backends' cost to the sender: plain veth pps without a probe and with each backend, ROUNDS rounds",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every kernel's rows and verdicts here")
    ap.add_argument("--guest", type=Path, default=None, help=argparse.SUPPRESS)  # the half that runs inside the guest
    args = ap.parse_args()
    if args.guest is not None:
        return guest(args.guest, args.duration, args.only, args.overhead)
    if not args.images:
        ap.error("name at least one kernel image")
    docs, failed = [], False
    for image in args.images:
        doc, problem = boot(image, args.duration, args.timeout, args.only, args.overhead)
        if doc is None:
            print(problem, file=sys.stderr)
            failed = True
            continue
        if doc.get("error"):
            print(f"== {doc['kernel']}: the probes could not be built: {doc['error']}", file=sys.stderr)
            failed = True
            continue
        print(
            f"== {doc['kernel']}: probes compiled in {doc.get('compile_s')} s, bpf attached with {doc.get('bpf_attach')}, "
            f"tracepoint programs {doc.get('tp_programs')}, "
            f"{doc['accel']}, boot and run {doc['wall_s']:.0f} s, guest exit {doc['guest_exit']}{' ' + doc['trouble'] if doc['trouble'] else ''}"
        )
        print("\n".join(table(doc["kernel"], doc["rows"])))
        if doc.get("overhead"):
            print("\n".join(overhead_lines(doc["kernel"], doc["overhead"])))
        if doc.get("guest_log_tail"):
            print(doc["guest_log_tail"])
        docs.append(doc)
        if args.json:  # after every kernel: a later boot that fails loses nothing
            args.json.write_text(json.dumps({"kernels": docs}, indent=1))
    verdicts = [r["agreement"]["agree"] for d in docs for r in d["rows"] if "agreement" in r]
    print(
        f"agreement: {sum(verdicts)} of {len(verdicts)} scenario x kernel rows within {COUNT_TOLERANCE:.0%} (counts) and "
        f"{SHARE_TOLERANCE:g} points (context shares)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark: the one-command upgrade gate (--udpsend-kernel twice, --udpsend-gate-against), as a user runs it.

    ci/bench_upgrade_gate.py host-aa [--reps 20]          this host's kernel against itself
    ci/bench_upgrade_gate.py vm-aa [--budget-s 1800]      6.1 against 6.1 in the lane, reps until the budget is spent
    ci/bench_upgrade_gate.py held-out                     6.1 against 6.12: RPS + low netdev_budget + CPU hogs

A/A: a 3-test suite (plain veth; RPS to CPU 1 with netdev_budget 8 and two hogs there; a
tbf-shaped link) written to a temporary directory, run as one pytest command per repetition:

    pytest --udpsend-kernel K --udpsend-kernel K --udpsend-gate-against K --udpsend-repeat 6 --udpsend-json out.json

Nothing differs between the two runs of K, so any test the gate fails is a false alarm.
Held-out: RPS to CPU 1 with two hogs there, netdev_budget 8, the default send buffer; 6.1 booted
5 times and 6.12 twice, interleaved, in one command gated against the first 6.1 boot (bpf backend);
then every ordered pair of boots judged as its own two-kernel command would judge it: 20 + 2
A/A pairs (same kernel) and 10 held-out pairs (6.1 then 6.12).  Prints where sock_wfree ran.

VM parts boot qemu: run them under the team's VM lock (flock /tmp/team/vm.lock ...).
Run as root; not a test (it reports figures).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW = "6.1.0-56-amd64", "6.12.95+deb12-amd64"
VM_LOCK = "/tmp/team/vm.lock"  # the team's one-VM-at-a-time lock; a host repetition holds it too
SUITE = """
import pytest

SEND = dict(duration=0.5, cpu=0, receiver_cpu=1)


@pytest.mark.udpsend(**SEND)
def test_plain(udpsend_result, wfree_probe):
    pass


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(sndbuf=16384, **SEND)
def test_rps_low_budget_hogs(udpsend_result, wfree_probe):
    pass


@pytest.mark.topology(qdisc="tbf rate 100mbit burst 32kb latency 20ms")
@pytest.mark.udpsend(sndbuf=16384, **SEND)
def test_shaped(udpsend_result, wfree_probe):
    pass
"""

# The held-out scenario: RPS to a CPU that two hogs keep busy, a low netdev_budget, the default send
# buffer (never tuned against the gate).  3 s per sample: under TCG a 1 s sample lands in one of two
# phases (EAGAIN near 0 or near 0.7, both kernels), which a longer sample averages out.
HELD_OUT = """
import pytest


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(duration=3.0, cpu=0, receiver_cpu=1)
def test_rps_hogs_low_budget(udpsend_result, wfree_probe):
    pass
"""


def image(version: str) -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "ci" / "prepare-kernel.sh"), version], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def wait_for_quiet(limit_s: float = 600) -> None:
    """A host measurement beside a TCG guest measures the guest: wait while one runs (RULES: poll 30 s, 10 min)."""
    waited = 0.0
    while waited < limit_s and subprocess.run(["pgrep", "-x", "qemu-system-x86"], capture_output=True).returncode == 0:
        time.sleep(30)
        waited += 30
    if waited:
        print(f"    (waited {waited:.0f} s for a VM to finish)", flush=True)


def gate_run(workdir: Path, args: list[str], out: Path, lock: bool = False) -> tuple[float, dict[str, Any], str]:
    """One pytest command (``lock``: holding the team's VM lock, so no VM runs beside it); (wall time, its
    --udpsend-json document, what went wrong or "")."""
    out.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--udpsend-require-privileges",
        "--udpsend-json",
        str(out),
        *args,
    ]
    with open(VM_LOCK if lock and os.path.exists(VM_LOCK) else os.devnull) as held:
        if lock:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        started = time.monotonic()
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True)
        wall = time.monotonic() - started
    if not out.exists() or done.returncode not in (0, 1):
        return wall, {}, f"exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"
    doc = json.loads(out.read_text())
    return wall, doc, ""


def regressions(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r
        for run in doc.get("runs", [])
        for r in (run.get("gate") or {}).get("rows", [])
        if r["verdict"] == "regression"
    ]


def spoiled(doc: dict[str, Any], tests: int, repeat: int) -> str:
    """Why a repetition says nothing about the gate (a test without its samples), or ""."""
    problems = []
    for run in doc.get("runs", []):
        counts = {k.split("::")[-1]: len(v.get("samples", [])) for k, v in run["tests"].items()}
        if len(counts) != tests or any(n != repeat for n in counts.values()):
            problems.append(f"{run['source']}: samples {counts}")
    return "; ".join(problems)


def aa(kernel: str, reps: int, budget_s: float, repeat: int, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-gate-") as tmp:
        workdir = Path(tmp)
        (workdir / "test_suite.py").write_text(SUITE)
        release = OLD if kernel != "host" else os.uname().release
        args = [
            "test_suite.py",
            f"--udpsend-kernel={kernel}",
            f"--udpsend-kernel={kernel}",
            "--udpsend-gate-against",
            release,
            "--udpsend-repeat",
            str(repeat),
        ]
        walls: list[float] = []
        flagged = judged = 0
        started = time.monotonic()
        for rep in range(reps):
            if time.monotonic() - started > budget_s:
                break
            if kernel == "host":
                wait_for_quiet()
            wall, doc, problem = gate_run(workdir, args, workdir / "out.json", lock=kernel == "host")
            problem = problem or spoiled(doc, 3, repeat)
            walls.append(wall)
            if problem:
                print(f"  {tag} {rep + 1}: {wall:.0f} s, spoiled: {problem}", flush=True)
                continue
            judged += 1
            bad = regressions(doc)
            flagged += bool(bad)
            what = (
                ", ".join(
                    f"{r['test'].split('::')[-1]} {r['metric']} {r['base_median']:.4g} -> {r['new_median']:.4g} "
                    f"p {r['p_value']:.2g}"
                    for r in bad
                )
                or "none"
            )
            print(f"  {tag} {rep + 1}: {wall:.0f} s, flagged {what}", flush=True)
        print(
            f"{tag}: runs with any test flagged {flagged}/{judged} (3 tests x 6 metrics, {repeat} samples a side, "
            f"{len(walls) - judged} spoiled); wall time per repetition: median {statistics.median(walls):.0f} s, "
            f"min {min(walls):.0f} s, max {max(walls):.0f} s",
            flush=True,
        )


def contexts(samples: list[dict[str, Any]]) -> str:
    total: dict[str, int] = {}
    for s in samples:
        for k, v in ((s.get("wfree") or {}).get("contexts") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    n = sum(total.values())
    return ", ".join(f"{k} {v / n:.0%}" for k, v in sorted(total.items()) if v) if n else "-"


def boots_order(old: str, new: str, old_boots: int, new_boots: int) -> list[str]:
    """The --udpsend-kernel values, the kernels interleaved (so drift over the run falls on both), 6.1 first:
    5 and 2 boots give 6.1, 6.1, 6.12, 6.1, 6.1, 6.12, 6.1."""
    total = old_boots + new_boots
    at_new = {round(k * total / (new_boots + 1)) for k in range(1, new_boots + 1)}
    return [new if i in at_new else old for i in range(total)]


def judge_pair(base: dict[str, Any], new: dict[str, Any]) -> list[Any]:
    """``new``'s regressions against ``base`` as a two-kernel command's gate gives them (its family, its rule)."""
    from pytest_udpsend.results import compare

    return [r for r in compare.compare_docs(base, new, compare.Settings(one_command=True)) if r.regressed]


def pairs(doc: dict[str, Any]) -> None:
    """Every ordered pair of boots judged as if it were its own two-kernel command: same kernel, A/A; 6.1 then
    6.12, the held-out upgrade.  The pairs share boots, so they are not independent repetitions."""
    runs = doc["runs"]
    print(f"{'boot':<24} {'test':<32} {'EAGAIN':>7} {'pps':>7} {'wfree p99':>9}  where sock_wfree ran")
    for run in runs:
        for test, entry in sorted(run["tests"].items()):
            s = entry.get("samples", [])
            med = {m: statistics.median([float(x[m]) for x in s]) for m in ("eagain_rate", "pps")} if s else {}
            p99 = [float(x["wfree"]["p99_us"]) for x in s if (x.get("wfree") or {}).get("p99_us") is not None]
            name, _, suffix = test.split("::")[-1].partition("@")
            print(
                f"{suffix:<24} {name:<32} {med.get('eagain_rate', 0):>7.1%} {med.get('pps', 0):>7.0f} "
                f"{statistics.median(p99) if p99 else 0:>9.0f}  {contexts(s)}"
            )
    kernel = [run["environment"]["kernel"] for run in runs]
    tally: dict[str, list[int]] = {"A/A": [0, 0], "held-out": [0, 0]}
    for i, base in enumerate(runs):
        for j, new in enumerate(runs):
            if i == j or (kernel[i] != kernel[j] and kernel[i] != OLD):
                continue
            kind = "A/A" if kernel[i] == kernel[j] else "held-out"
            bad = judge_pair(base, new)
            tally[kind][0] += bool(bad)
            tally[kind][1] += 1
            what = (
                "; ".join(
                    f"{r.test.split('::')[-1]} {r.metric} {r.base_median:.3g} -> {r.new_median:.3g} p {r.p_value:.2g}"
                    for r in bad
                )
                or "none"
            )
            print(f"  {kind:<8} boot {i + 1} ({kernel[i]}) -> boot {j + 1} ({kernel[j]}): flagged {what}")
    for kind, (flagged, judged) in tally.items():
        print(f"{kind}: {flagged} of {judged} ordered pairs of boots flagged")


def held_out(repeat: int, old_boots: int, new_boots: int, stored: str | None) -> None:
    """One command booting 6.1 and 6.12 several times, interleaved, each test gated against the first 6.1 boot;
    then every pair of boots judged as its own two-kernel command (``pairs``)."""
    if stored:
        pairs(json.loads(Path(stored).read_text()))
        return
    order = boots_order(image(OLD), image(NEW), old_boots, new_boots)
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-gate-") as tmp:
        workdir = Path(tmp)
        (workdir / "test_held_out.py").write_text(HELD_OUT)
        out = Path(os.environ.get("BENCH_HELD_OUT_JSON", workdir / "out.json"))
        args = [
            "test_held_out.py",
            *(f"--udpsend-kernel={k}" for k in order),
            "--udpsend-gate-against",
            OLD,
            "--udpsend-backend",
            "bpf",
            "--udpsend-repeat",
            str(repeat),
        ]
        wall, doc, problem = gate_run(workdir, args, out, lock=True)
        if problem:
            sys.exit(f"held-out run failed: {problem}")
        print(
            f"held-out: {old_boots} boots of {OLD} and {new_boots} of {NEW}, interleaved, in one command; {repeat} "
            f"samples per test and boot, bpf backend; {wall:.0f} s wall ({wall / len(order):.0f} s per boot)"
        )
        pairs(doc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("host-aa", "vm-aa", "held-out"))
    p.add_argument("--reps", type=int, default=20, help="A/A repetitions (default 20)")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="vm-aa: stop starting repetitions after this")
    p.add_argument("--repeat", type=int, default=None, help="samples per test and kernel (default 6; held-out 12)")
    p.add_argument("--old-boots", type=int, default=5, help="held-out: boots of 6.1 (default 5: 20 ordered A/A pairs)")
    p.add_argument("--new-boots", type=int, default=2, help="held-out: boots of 6.12 (default 2)")
    p.add_argument("--from", dest="stored", help="held-out: judge the pairs of a stored --udpsend-json document")
    a = p.parse_args()
    if a.part == "host-aa":
        aa("host", a.reps, a.budget_s, a.repeat or 6, "A/A host-host")
    elif a.part == "vm-aa":
        aa(image(OLD), a.reps, a.budget_s, a.repeat or 6, f"A/A {OLD} twice (TCG)")
    else:
        held_out(a.repeat or 12, a.old_boots, a.new_boots, a.stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())

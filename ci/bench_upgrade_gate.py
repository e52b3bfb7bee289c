#!/usr/bin/env python3
"""Benchmark: the one-command upgrade gate (--udpsend-kernel twice, --udpsend-gate-against), as a user runs it.

    ci/bench_upgrade_gate.py host-aa [--reps 20]          this host's kernel against itself
    ci/bench_upgrade_gate.py vm-aa [--budget-s 1800]      6.1 against 6.1 in the lane, reps until the budget is spent
    ci/bench_upgrade_gate.py held-out                     6.1 against 6.12: RPS + low netdev_budget + CPU hogs

A/A: a 3-test suite (plain veth; RPS to CPU 1 with netdev_budget 8 and two hogs there; a
tbf-shaped link) written to a temporary directory, run as one pytest command per repetition:

    pytest --udpsend-kernel K --udpsend-kernel K --udpsend-gate-against K --udpsend-repeat 6 --udpsend-json out.json

Nothing differs between the two runs of K, so any test the gate fails is a false alarm.
Held-out: examples/upgrade_gate (RPS to CPU 1, netdev_budget 4 or the default, two hogs on
the RPS CPU or none; sndbuf 16384) through 6.1 and 6.12 in one command, gated against 6.1,
bpf backend; prints the gate's rows and where sock_wfree ran per kernel.

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

# The held-out scenario: RPS to a CPU that two hogs keep busy, the default send buffer, the default
# and a low netdev_budget (README, "Which scenarios mean something on which kernel": 6.1 parks a third
# of the releases in ksoftirqd here, 6.12 about a sixth).
HELD_OUT = """
import pytest

SEND = dict(duration=1.0, cpu=0, receiver_cpu=1)


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(**SEND)
def test_rps_hogs_default_budget(udpsend_result, wfree_probe):
    pass


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.cpu_pressure(cpus=[1], workers=2)
@pytest.mark.udpsend(**SEND)
def test_rps_hogs_low_budget(udpsend_result, wfree_probe):
    pass
"""


def image(version: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "ci" / "prepare-kernel.sh"), version], capture_output=True, text=True, check=True)
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
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--udpsend-require-privileges",
            "--udpsend-json", str(out), *args]  # fmt: skip
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
    return [r for run in doc.get("runs", []) for r in (run.get("gate") or {}).get("rows", []) if r["verdict"] == "regression"]


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
        args = ["test_suite.py", f"--udpsend-kernel={kernel}", f"--udpsend-kernel={kernel}", "--udpsend-gate-against", release,
                "--udpsend-repeat", str(repeat)]  # fmt: skip
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
            what = ", ".join(f"{r['test'].split('::')[-1]} {r['metric']} {r['base_median']:.4g} -> {r['new_median']:.4g} "
                             f"p {r['p_value']:.2g}" for r in bad) or "none"  # fmt: skip
            print(f"  {tag} {rep + 1}: {wall:.0f} s, flagged {what}", flush=True)
        print(f"{tag}: runs with any test flagged {flagged}/{judged} (3 tests x 6 metrics, {repeat} samples a side, "
              f"{len(walls) - judged} spoiled); wall time per repetition: median {statistics.median(walls):.0f} s, "
              f"min {min(walls):.0f} s, max {max(walls):.0f} s", flush=True)  # fmt: skip


def contexts(samples: list[dict[str, Any]]) -> str:
    total: dict[str, int] = {}
    for s in samples:
        for k, v in ((s.get("wfree") or {}).get("contexts") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    n = sum(total.values())
    return ", ".join(f"{k} {v / n:.0%}" for k, v in sorted(total.items()) if v) if n else "-"


def held_out(repeat: int) -> None:
    old, new = image(OLD), image(NEW)
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-gate-") as tmp:
        workdir = Path(tmp)
        (workdir / "test_held_out.py").write_text(HELD_OUT)
        out = Path(os.environ.get("BENCH_HELD_OUT_JSON", workdir / "out.json"))
        args = ["test_held_out.py", f"--udpsend-kernel={old}", f"--udpsend-kernel={new}",
                "--udpsend-gate-against", OLD, "--udpsend-backend", "bpf", "--udpsend-repeat", str(repeat)]  # fmt: skip
        wall, doc, problem = gate_run(workdir, args, out)
        if problem:
            sys.exit(f"held-out run failed: {problem}")
        print(f"held-out: {OLD} -> {NEW}, {repeat} samples a side, bpf backend, one command, {wall:.0f} s wall")
        print(f"{'kernel':<22} {'test':<46} {'EAGAIN':>7} {'pps':>7} {'wfree p99':>9}  where sock_wfree ran")
        for run in doc["runs"]:
            for test, entry in sorted(run["tests"].items()):
                s = entry.get("samples", [])
                med = {m: statistics.median([float(x[m]) for x in s]) for m in ("eagain_rate", "pps")} if s else {}
                p99 = [float(x["wfree"]["p99_us"]) for x in s if (x.get("wfree") or {}).get("p99_us") is not None]
                print(f"{run['environment']['kernel']:<22} {test.split('::')[-1].split('@')[0]:<46} "
                      f"{med.get('eagain_rate', 0):>7.1%} {med.get('pps', 0):>7.0f} "
                      f"{statistics.median(p99) if p99 else 0:>9.0f}  {contexts(s)}")  # fmt: skip
        rows = [r for run in doc["runs"] for r in (run.get("gate") or {}).get("rows", [])]
        print("gate rows that are not 'ok':")
        for r in rows:
            if r["verdict"] != "ok":
                print(f"  {r['test'].split('::')[-1]:<46} {r['metric']:<13} {r['base_median']} -> {r['new_median']} "
                      f"p {r['p_value']} {r['verdict']}")  # fmt: skip
        bad = regressions(doc)
        print(f"held-out: {'FLAGGED' if bad else 'not flagged'}: {len(bad)} regression row(s) in "
              f"{len({r['test'] for r in bad})} test(s)")  # fmt: skip
        reverse(doc)


def reverse(doc: dict[str, Any]) -> None:
    """The other direction from the same samples (6.1 judged against 6.12: a kernel that brings the old
    behaviour back), by the same rule and family, and each EAGAIN change before its noise floor."""
    from pytest_udpsend.results import compare

    old, new = ({compare.base_key(k): v["samples"] for k, v in run["tests"].items()} for run in doc["runs"])
    gate = doc["runs"][1]["gate"]
    settings, family = compare.Settings.from_dict(gate["settings"]), gate["family"]
    for test in sorted(old):
        rows = compare.compare_test(test, new.get(test), old[test], settings, family)
        flagged = [f"{r.metric} {r.verdict}" for r in rows if r.verdict != "ok"]
        x, y = ([s["eagain_rate"] for s in side[test]] for side in (old, new))
        raw = compare.p_greater(y, x, compare.level(settings, family))
        print(f"  {test.split('::')[-1]:<46} 6.1 against 6.12: {', '.join(flagged) or 'all ok'}; "
              f"EAGAIN 6.12 above 6.1 with no allowed change: p {raw:.2g} (level {compare.level(settings, family):.2g})")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("host-aa", "vm-aa", "held-out"))
    p.add_argument("--reps", type=int, default=20, help="A/A repetitions (default 20)")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="vm-aa: stop starting repetitions after this")
    p.add_argument("--repeat", type=int, default=6, help="samples per test and kernel (default 6)")
    a = p.parse_args()
    if a.part == "host-aa":
        aa("host", a.reps, a.budget_s, a.repeat, "A/A host-host")
    elif a.part == "vm-aa":
        aa(image(OLD), a.reps, a.budget_s, a.repeat, f"A/A {OLD} twice (TCG)")
    else:
        held_out(a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the README's main job (ci/examples.sh) N times and print what each example measured.

    python3 ci/repeat_examples.py [N] [extra pytest args...]

Prints, per run, the outcome, and per test the range of its EAGAIN rate and the kernel:
the evidence behind each example's bounds.  Exit 1 if any run failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    extra = sys.argv[2:]
    rates: dict[str, list[float]] = {}
    passed = 0
    kernel = "?"
    with tempfile.TemporaryDirectory(prefix="udpsend-examples-") as tmp:
        for i in range(runs):
            out = Path(tmp) / f"run{i}.json"
            started = time.monotonic()
            proc = subprocess.run(["bash", str(ROOT / "ci" / "examples.sh"), "-q", "--udpsend-json", str(out), *extra],
                                  capture_output=True, text=True)  # fmt: skip
            took = time.monotonic() - started
            last = (proc.stdout.strip().splitlines() or ["?"])[-1]
            passed += proc.returncode == 0
            print(f"run {i + 1:2d}: exit {proc.returncode}  {took:5.1f} s  {last}", flush=True)
            if proc.returncode:
                print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "E "))))
            if out.exists():
                doc = json.loads(out.read_text())
                kernel = doc["environment"].get("kernel", kernel)
                for test, entry in doc["tests"].items():
                    samples = entry.get("samples", [])
                    for k, sample in enumerate(samples):  # a test that measures twice gets a row per run
                        name = test.split("/")[-1] + (f" run {k + 1}" if len(samples) > 1 else "")
                        rates.setdefault(name, []).append(sample["eagain_rate"])
    print(f"\n{passed} of {runs} runs passed (kernel {kernel})")
    print(f"{'test':<76} {'samples':>7} {'EAGAIN min':>11} {'median':>8} {'max':>8}")
    for test, values in sorted(rates.items()):
        values.sort()
        print(f"{test:<76} {len(values):>7} {values[0]:>11.2%} {values[len(values) // 2]:>8.2%} {values[-1]:>8.2%}")
    return 0 if passed == runs else 1


if __name__ == "__main__":
    sys.exit(main())

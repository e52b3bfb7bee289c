"""Print what each test of a --udpsend-json document measured: the evidence behind its bounds.

    python3 ci/summarize.py RESULTS.json...

One line per sample: kernel, test, EAGAIN rate, pps, SIOCOUTQ max against the effective
send buffer, time_squeeze, and where sock_wfree ran (bpf backend) or its p99.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def line(kernel: str, test: str, s: dict) -> str:
    w = s.get("wfree") or {}
    where = ", ".join(f"{k} {v}" for k, v in (w.get("contexts") or {}).items() if v) or (
        f"p99 {w['p99_us']} us" if w.get("p99_us") is not None else "-"
    )
    return (
        f"{kernel:<22} {test:<64} {s['eagain_rate']:>8.2%} {s['pps']:>9.0f} "
        f"{s['wmem'].get('max_bytes', 0):>8.0f}/{s['sndbuf_effective']:<8} {s['time_squeeze']:>7}  {where}"
    )


def main(paths: list[str]) -> int:
    print(f"{'kernel':<22} {'test':<64} {'EAGAIN':>8} {'pps':>9} {'SIOCOUTQ/sndbuf':>17} {'squeeze':>7}  sock_wfree")
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for test, entry in sorted(doc["tests"].items()):
            for s in entry.get("samples", []):
                print(line(s.get("kernel", "?"), test.split("/")[-1][-64:], s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

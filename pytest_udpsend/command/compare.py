"""``udpsend compare``, ``udpsend merge``, ``udpsend report``: the judgements printed, their exit statuses.

The rule itself is results/compare.py's (two sides), results/fanin.py's (groups of many files) and
results/paired.py's (the arms of one --udpsend-interleave document).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.frontend import options
from pytest_udpsend.results.compare import Judgement, Status
from pytest_udpsend.results.fanin import Sides


def cmd_compare(args: argparse.Namespace) -> int:
    from pytest_udpsend.results import fanin

    options.gate_settings(
        args.tolerance, args.alpha, args.metrics, args.allow_mixed, where="udpsend compare"
    )  # validate
    base, new = args.baseline, args.new
    if not new and len(base) == 1:  # one --udpsend-interleave document: its arms, by the paired rule
        return _compare_arms(base[0], args)
    if not new:  # the two-file form: udpsend compare BASELINE.json NEW.json
        if len(base) != 2:
            raise ConfigError(
                f"{len(base)} file(s) given without --new: write udpsend compare BASELINE.json NEW.json, "
                "or udpsend compare BASE... --new NEW..."
            )
        base, new = base[:1], base[1:]
    return show_sides(fanin.compare_sides(base, new, _gate_flags(args)))


EXIT: dict[Status, int] = {"ok": 0, "regression": 1, "refused": 2}
SUMMARY: dict[Status, str] = {"ok": "ok", "regression": "regression", "refused": "refused"}


def show(judgement: Judgement) -> None:
    """One comparison: its table on stdout, what could not be judged on stderr."""
    if judgement.report is not None:
        print(judgement.report)
    if judgement.refusal is not None:
        print(f"udpsend compare: refused: {judgement.refusal}", file=sys.stderr)


def show_sides(sides: Sides) -> int:
    """Every group's table (headed by its name when there are several), the summary; the exit status."""
    if sides.heading is not None:
        print(sides.heading)
    for name, judgement in sides.groups:
        if sides.several:
            print(f"\n=== {name} ===")
            sys.stdout.flush()  # the group's name before its refusal on stderr
        show(judgement)
        sys.stdout.flush()
    if sides.several:
        print("\nsummary: " + "; ".join(f"{name}: {SUMMARY[j.status]}" for name, j in sides.groups))
    return EXIT[sides.status]


def _compare_arms(path: str, args: argparse.Namespace) -> int:
    """Exit 1 if a candidate regressed, 2 if the document cannot be judged, else 0."""
    from pytest_udpsend.results import paired, store

    doc = store.load(path)
    if not paired.records(doc):
        raise ConfigError(
            f"{path} has no interleaved tests (--udpsend-interleave): to compare two runs, write "
            "udpsend compare BASELINE.json NEW.json"
        )
    flags = _gate_flags(args)
    rows, level, refused = paired.judge_document(doc, flags["tolerance"], flags["alpha"], flags["metrics"])
    if refused:
        print(f"udpsend compare: {path}: {refused}", file=sys.stderr)
        return 2
    for test in dict.fromkeys(r.test for r in rows):
        mine = [r for r in rows if r.test == test]
        print(f"{test} [{'control' if mine[0].control else 'candidate'}]")
        print(paired.table(mine, level))
    bad = sorted({r.test for r in rows if r.regressed and not r.control})
    moved = sorted({r.test for r in rows if r.regressed and r.control})
    print(
        f"{len(bad)} candidate(s) regressed"
        + (f": {', '.join(bad)}" if bad else "")
        + (f"; {len(moved)} control(s) moved (the host was noisy): {', '.join(moved)}" if moved else "")
    )
    return 1 if bad else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from pytest_udpsend.results import fanin

    runs, files = fanin.write_merged(args.output, args.inputs)
    print(f"merged {runs} run(s) from {files} file(s) into {args.output}")
    return 0


def _gate_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The gate flags the user gave (None: not given), as compare.Settings fields."""
    metrics = tuple(args.metrics) if args.metrics else None
    return {"tolerance": args.tolerance, "alpha": args.alpha, "metrics": metrics, "allow_mixed": args.allow_mixed}


def cmd_report(args: argparse.Namespace) -> int:
    from pytest_udpsend.results.fanin_report import write_report

    options.gate_settings(
        args.tolerance, args.alpha, args.metrics, args.allow_mixed, where="udpsend report"
    )  # validate
    write_report(args.results, args.output, args.baseline, _gate_flags(args))
    print(f"wrote {args.output}")
    return 0

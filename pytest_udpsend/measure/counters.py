"""Kernel counters: per-CPU softnet_stat and per-namespace SNMP, as before/after deltas."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO

from pytest_udpsend.host import netns

SOFTNET = Path("/proc/net/softnet_stat")


def parse_softnet(text: str) -> dict[int, dict[str, int]]:
    """Per-CPU processed, dropped, time_squeeze.

    Columns are hex.  Kernels that print 13 or more columns put the CPU number in
    column 13 (lines skip offline CPUs); older ones list CPUs in order.
    """
    out: dict[int, dict[str, int]] = {}
    for index, line in enumerate(text.splitlines()):
        cols = [int(c, 16) for c in line.split()]
        if len(cols) < 3:
            continue
        cpu = cols[12] if len(cols) >= 13 else index
        out[cpu] = {"processed": cols[0], "dropped": cols[1], "time_squeeze": cols[2]}
    return out


def read_softnet() -> dict[int, dict[str, int]]:
    return parse_softnet(SOFTNET.read_text())


def softnet_delta(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {
        str(cpu): {k: after[cpu][k] - before.get(cpu, after[cpu]).get(k, 0) for k in after[cpu]}
        for cpu in sorted(after)
    }


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/snmp (header/value line pairs) and snmp6 (name value lines), named like nstat."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    if lines and ":" not in lines[0].split()[0]:  # snmp6 format
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out
    for head, values in zip(lines[::2], lines[1::2]):
        names, nums = head.split(), values.split()
        prefix = names[0].rstrip(":")
        for name, num in zip(names[1:], nums[1:]):
            if num.lstrip("-").isdigit():
                out[prefix + name] = int(num)
    return out


class SnmpReader:
    """/proc/net/snmp (+ snmp6) of one namespace, opened from inside it and re-read from anywhere.

    /proc/net follows the *process's* namespace, so the files are opened as
    /proc/thread-self/net/... by a thread inside the namespace; an open file stays
    bound to that namespace.
    """

    def __init__(self, ns: netns.Namespace) -> None:
        def open_files() -> list[IO[str]]:
            # kept open on purpose: the open file stays bound to this namespace; close() shuts them
            files: list[IO[str]] = [open("/proc/thread-self/net/snmp")]  # noqa: SIM115
            if Path("/proc/thread-self/net/snmp6").exists():
                files.append(open("/proc/thread-self/net/snmp6"))  # noqa: SIM115
            return files

        self._files = ns.run(open_files)

    def read(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fh in self._files:
            fh.seek(0)
            out.update(parse_snmp(fh.read()))
        return out

    def close(self) -> None:
        for fh in self._files:
            fh.close()


def snmp_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that changed (gauges such as IpForwarding excluded by the change itself)."""
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


INTERRUPTS = Path("/proc/interrupts")
IrqCounts = dict[int, tuple[str, list[int]]]


def read_interrupts(irqs: Iterable[int]) -> IrqCounts:
    """Per-CPU counts of the given interrupts, with their action names (``25 -> ("enp0s9-rxtx-0", [..])``)."""
    wanted = {str(i) for i in irqs}
    if not wanted:
        return {}
    lines = INTERRUPTS.read_text().splitlines()
    ncpu = len(lines[0].split())
    found: IrqCounts = {}
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        if head.strip() in wanted:
            fields = rest.split()
            found[int(head)] = (fields[-1] if len(fields) > ncpu else "", [int(x) for x in fields[:ncpu]])
    return found


def irq_delta(ports: dict[str, list[int]], before: IrqCounts, after: IrqCounts) -> dict[str, dict[str, list[int]]]:
    """{port: {"<irq> <name>": per-CPU interrupts during the run}}: where TX completion was signalled."""
    return {
        port: {
            f"{irq} {after[irq][0]}".strip(): [b - a for a, b in zip(before[irq][1], after[irq][1])]
            for irq in irqs
            if irq in before and irq in after
        }
        for port, irqs in ports.items()
    }

"""CPU sets as users write them, and as sysfs wants them.

Accepted (``rps_cpus``, ``cpu_pressure(cpus=...)``, ``--rps-cpus``, ``--cpu-pressure``):

* an int or a list of ints: CPU numbers, ``1`` or ``[0, 2]``;
* a string, read the way the kernel reads its two CPU file formats:

  - a **CPU list** (``taskset -c``, ``cpuset.cpus``, ``*_list`` files) if it contains
    ``-`` or ``,``: ``"1-3,5"``, ``"0,2"``, ``"4-4"``;
  - otherwise a **hex mask** (``rps_cpus``, ``smp_affinity``), with or without ``0x``:
    ``"2"`` and ``"0x2"`` are CPU 1, ``"ff"`` CPUs 0-7;
  - except that a string shaped like a mask sysfs prints for more than 32 CPUs,
    comma-separated 32-bit groups of exactly 8 hex digits after the first
    (``"1,00000000"`` is CPU 32), is that mask.

So ``"10"`` is the mask 0x10 (CPU 4), never CPU 10: write ``[10]`` or ``"10-10"``.
Masks are written back to sysfs in its own grouped form (``format_mask``).
"""

from __future__ import annotations

import os
import re

from pytest_udpsend.errors import ConfigError

_GROUPED_MASK = re.compile(r"^(0x)?[0-9a-f]{1,8}(,[0-9a-f]{8})+$")
_MASK = re.compile(r"^(0x)?[0-9a-f]+$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_CPU = 8191  # CONFIG_NR_CPUS upper limit on x86


def parse(value: object, what: str) -> tuple[int, ...]:
    """CPU numbers (sorted, unique) from any accepted form; ConfigError names ``what`` and the forms."""
    if isinstance(value, int) and not isinstance(value, bool):
        cpus = [value]
    elif isinstance(value, (list, tuple)) and all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        cpus = list(value)
    elif isinstance(value, str):
        cpus = _parse_text(value.strip().lower(), what)
    else:
        cpus = []
    if not cpus or any(not 0 <= c <= MAX_CPU for c in cpus):
        raise ConfigError(
            f"{what}={value!r}: give CPU numbers ([1] or 1), a CPU list string as taskset -c takes it "
            f"('1-3,5'), or a hex mask as sysfs takes it ('2' or '0x2' = CPU 1, '1,00000000' = CPU 32)"
        )
    return tuple(sorted(set(cpus)))


def _parse_text(text: str, what: str) -> list[int]:
    if _GROUPED_MASK.match(text) or ("," not in text and "-" not in text and _MASK.match(text)):
        return mask_cpus(int(text.removeprefix("0x").replace(",", ""), 16))
    if "," in text or "-" in text:
        cpus: list[int] = []
        for item in text.split(","):
            match = _RANGE.match(item.strip())
            if not match:
                return []
            low, high = int(match[1]), int(match[2] or match[1])
            if high < low or high > MAX_CPU:
                return []
            cpus += range(low, high + 1)
        return cpus
    return []


def mask_cpus(mask: int) -> list[int]:
    return [bit for bit in range(mask.bit_length()) if mask >> bit & 1]


def format_mask(cpus: tuple[int, ...] | list[int]) -> str:
    """The mask as sysfs writes it: hex, 32-bit groups separated by commas (``1,00000000`` = CPU 32)."""
    mask = sum(1 << c for c in set(cpus))
    groups = []
    while True:
        groups.append(mask & 0xFFFFFFFF)
        mask >>= 32
        if not mask:
            break
    head, *rest = reversed(groups)
    return ",".join([f"{head:x}", *(f"{g:08x}" for g in rest)])


def format_list(cpus: tuple[int, ...] | list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the kernel's ``*_list`` form)."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(out)


def check_online(cpus: tuple[int, ...], value: object, what: str) -> tuple[int, ...]:
    """ConfigError if a CPU is not in this process's affinity; says how a string was read."""
    online = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - online)
    if missing:
        read_as = f" (read as CPU(s) {format_list(cpus)})" if isinstance(value, str) else ""
        hint = (
            " (a string without '-' or ',' is a hex mask: write [N] or 'N-N' for CPU N)"
            if (isinstance(value, str) and "," not in value and "-" not in value)
            else ""
        )
        raise ConfigError(
            f"{what}={value!r}{read_as}: CPU(s) {missing} are not available here "
            f"(have {format_list(tuple(online))}){hint}"
        )
    return cpus

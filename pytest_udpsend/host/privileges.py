"""Can this process build namespaces?  One sentence with the fix when not."""

from __future__ import annotations

import os
from pathlib import Path

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing() -> str | None:
    """None when root-equivalent privileges and netns support are present, else the reason and fix."""
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces (CONFIG_NET_NS): run on a kernel built with them."
    caps = effective_caps()
    need = {"CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_SYS_ADMIN": CAP_SYS_ADMIN}
    lacking = [name for name, bit in need.items() if not caps >> bit & 1]
    if lacking:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return (
            f"pytest-udpsend needs {' and '.join(lacking)} to build namespaces ({who} lacks them): "
            "run pytest as root (sudo) or in a privileged CI container."
        )
    return None

"""Saved results: the --udpsend-json document, written atomically, keyed by kernel.

Layout::

    {"format": "pytest-udpsend/1", "environment": {...}, "tests": {nodeid: {"outcome": ...,
     "samples": [SendResult dicts]}}}

Results travel from xdist workers to the controller in ``report.user_properties``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from pytest_udpsend import __version__
from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.measure.sender import knobs_in_force

FORMAT = "pytest-udpsend/1"
PROPERTY = "udpsend_samples"


def kernel_config_hash() -> str | None:
    """sha256 of the running kernel's config, where the kernel exposes it."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return hashlib.sha256(data).hexdigest()[:16]
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def virtualized() -> bool:
    """Whether this kernel runs under a hypervisor (the CPU's ``hypervisor`` flag): a VM measures differently."""
    try:
        return any(line.startswith("flags") and " hypervisor" in line for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


def environment(backend: str) -> dict[str, Any]:
    """How this session measures: the gate refuses to compare results whose ``compare.ENV_FIELDS`` differ."""
    return {
        "kernel": os.uname().release,
        "kernel_version": os.uname().version,
        "kernel_config_sha256": kernel_config_hash(),
        "machine": os.uname().machine,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "virtualized": virtualized(),
        "sysctls": knobs_in_force({}),
        "plugin_version": __version__,
        "python": sys.version.split()[0],
        "backend": backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def document(env: dict[str, Any], tests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "environment": env, "tests": tests}


def write(path: str | Path, doc: dict[str, Any]) -> None:
    """Write atomically through an unpredictable O_EXCL temporary (host/outfile.py)."""
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True))


def load(path: str | Path) -> dict[str, Any]:
    """Read a saved document; ValueError with one sentence if it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pytest-udpsend results file (no format '{FORMAT}')")
    return doc

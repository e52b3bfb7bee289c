"""--udpsend-pcap in a pytest run: one bounded capture per run of a test, kept only if it fails."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.frontend.keys import PCAP_KEY
from pytest_udpsend.frontend.session import TestContext
from pytest_udpsend.host.topology import Topology
from pytest_udpsend.measure.capture import capture


def capture_for(
    request: pytest.FixtureRequest, ctx: TestContext, topo: Topology
) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """A capture factory for this test when --udpsend-pcap is given, else None."""
    directory = ctx.session.options.pcap_dir
    if not directory:
        return None
    try:
        import scapy  # noqa: F401
    except ImportError:
        raise ConfigError("--udpsend-pcap needs scapy: pip install 'pytest-udpsend[pcap]'") from None
    paths = request.node.stash.setdefault(PCAP_KEY, [])
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]

    def start() -> contextlib.AbstractContextManager[Any]:
        path = Path(directory) / f"{stem}-{len(paths) + 1}.pcap"
        paths.append(str(path))
        return capture(topo, path)

    return start


def keep_or_discard(item: pytest.Item, report: pytest.TestReport) -> None:
    """After the call phase: keep the pcaps of a failed test (and say where), drop the others."""
    paths = item.stash.get(PCAP_KEY, [])
    if not paths or report.when != "call":
        return
    if report.failed:
        report.sections.append(("udpsend pcap", "\n".join(f"capture kept: {p}" for p in paths)))
    else:
        for p in paths:
            Path(p).unlink(missing_ok=True)

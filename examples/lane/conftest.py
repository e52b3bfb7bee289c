"""Examples that need the kernel lane's emulated NICs (a vmxnet3 pair the guest boots with).

They are collected only when the run goes through the lane (``--udpsend-kernel IMAGE``,
which the guest is given too), so ``pytest examples`` on a host without NICs to lend
runs the rest and stays green.  Name a file here explicitly to run it anyway.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".py" and not config.getoption("udpsend_kernel", None):
        return True
    return None

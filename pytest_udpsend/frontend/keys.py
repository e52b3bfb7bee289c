"""Where the plugin keeps its state in pytest: stash keys on the config and on items.

No private attributes on pytest objects: the session object lives in
``config.stash[SESSION_KEY]``, each test's samples and verdicts on ``item.stash``.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_udpsend.frontend.session import UdpsendSession
from pytest_udpsend.measure.result import SendResult

SESSION_KEY = pytest.StashKey[UdpsendSession]()
RESULTS_KEY = pytest.StashKey[list[SendResult]]()  # every sample the test measured
COMPARE_KEY = pytest.StashKey[list[dict[str, Any]]]()  # its baseline comparison rows
PCAP_KEY = pytest.StashKey[list[str]]()  # its capture files
ARM_KEY = pytest.StashKey[str]()  # under --udpsend-interleave: the arm being measured, "baseline" or "candidate"


def udpsend_session(config: pytest.Config) -> UdpsendSession:
    return config.stash[SESSION_KEY]

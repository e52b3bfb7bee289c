"""The kernel lane runs exactly the items the host collected, wherever the tests live.

Each test is one guest boot (~40-90 s under TCG), so each combines several layouts and
options.  ci/lane.sh runs them with UDPSEND_LANE_IMAGE set.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytestmark = [
    pytest.mark.lane,
    pytest.mark.skipif(
        not os.environ.get("UDPSEND_LANE_IMAGE") or not shutil.which("qemu-system-x86_64"),
        reason="needs UDPSEND_LANE_IMAGE and qemu (ci/lane.sh sets both up)",
    ),
]
IMAGE = os.environ.get("UDPSEND_LANE_IMAGE", "")
IN_GUEST = f"""
import os
import pytest

@pytest.fixture
def in_guest():
    assert os.uname().release != {os.uname().release!r}, "ran on the host, not in the guest"
    return True
"""


def ran(result: pytest.RunResult) -> set[str]:
    """Node ids (without the @release suffix) that passed, from -rA's short summary."""
    return {m.group(1) for m in re.finditer(r"^PASSED (.+?)@\S+$", result.stdout.str(), re.M)}


def test_no_ini_file_absolute_paths_from_elsewhere_k_m_odd_ids_and_a_conftest_above(pytester, monkeypatch):
    """No ini file anywhere, run from another directory with absolute paths, the image given
    as a separate argument (pytest then counts its path when picking rootdir): -k and -m
    deselect, ids with spaces and brackets, a fixture from a conftest above the tests."""
    pytester.makeconftest(IN_GUEST)
    suite = pytester.mkpydir("suite")
    (suite / "test_x.py").write_text(
        "import pytest\n"
        "def test_conftest_above(in_guest):\n    pass\n"
        "@pytest.mark.parametrize('v', ['a b', 'x[1]', 'sp ace]['])\n"
        "def test_odd_ids(in_guest, v):\n    pass\n"
        "@pytest.mark.slow\ndef test_marked_slow():\n    pass\n"
        "def test_excluded_by_k():\n    pass\n"
    )
    other = pytester.mkdir("other")
    (other / "test_y.py").write_text("def test_y(in_guest):\n    pass\n")
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    result = pytester.runpytest_subprocess(
        "--udpsend-kernel",
        IMAGE,
        str(suite),
        str(other / "test_y.py"),
        "-k",
        "not excluded",
        "-m",
        "not slow",
        "-p",
        "no:cacheprovider",
        "-rA",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=5, deselected=2)
    names = {nodeid.rsplit("::", 1)[1] for nodeid in ran(result)}
    assert names == {
        "test_conftest_above",
        "test_odd_ids[a b]",
        "test_odd_ids[x[1]]",
        "test_odd_ids[sp ace][]",
        "test_y",
    }


def test_pyargs_inifile_and_rootdir_given(pytester, monkeypatch):
    """--pyargs, -c FILE (whose python_files the guest must honour) and --rootdir."""
    pkg = pytester.mkdir("src") / "lanepkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tests" / "__init__.py").write_text("")
    (pkg / "tests" / "conftest.py").write_text(IN_GUEST)
    (pkg / "tests" / "check_p.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('v', ['[x] y'])\n"
        "def test_p(in_guest, v):\n    pass\n"
        "def test_q(in_guest):\n    pass\n"
    )
    cfg = pytester.mkdir("cfg") / "lane.ini"
    cfg.write_text("[pytest]\npython_files = check_*.py\n")
    root = pytester.mkdir("root")
    monkeypatch.chdir(pkg.parent)  # lanepkg importable from the invocation directory
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "lanepkg.tests",
        "-c",
        str(cfg),
        "--rootdir",
        str(root),
        "--udpsend-kernel",
        IMAGE,
        "-p",
        "no:cacheprovider",
        "-rA",
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=2)
    names = {nodeid.rsplit("::", 1)[1] for nodeid in ran(result)}
    assert names == {"test_p[[x] y]", "test_q"}

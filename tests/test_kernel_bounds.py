"""Per-kernel bounds: ``kernel=`` on the assertion markers (SPEC: markers of one kind stack)."""

from __future__ import annotations

import os

import pytest
from packaging.version import Version

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.results.bounds import Bound, Bounds, kernel_matches, kernel_spec, kernel_version


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.1.0-56-amd64", "6.1.0"), ("6.12.95+deb12-amd64", "6.12.95"), ("6.18.44-fc-v782", "6.18.44"), ("5.15", "5.15")],
)
def test_kernel_version_is_the_numeric_prefix(release, version):
    assert kernel_version(release) == Version(version)


@pytest.mark.parametrize(
    ("spec", "release", "matches"),
    [
        ("<6.5", "6.1.0-56-amd64", True),
        ("<6.5", "6.12.95+deb12-amd64", False),
        (">=6.5,<6.12", "6.12.95+deb12-amd64", False),
        (">=6.5,<6.13", "6.12.95+deb12-amd64", True),
        (">=6.5", "6.18.44-fc-v782", True),
        (None, "6.1.0-56-amd64", True),
    ],
)
def test_kernel_matches(spec, release, matches):
    assert kernel_matches(spec, release) is matches


@pytest.mark.parametrize("bad", ["6.5", "newer", 6.5, ""])
def test_bad_kernel_spec_says_what_is_accepted(bad):
    with pytest.raises(ConfigError, match="not a version specifier; use comparisons such as '<6.5'"):
        kernel_spec(bad)


def test_bounds_split_by_kernel_and_strictest_backend():
    old, new = (
        Bound("eagain_rate", "eagain_rate", 0.1, None, "<6.5"),
        Bound("eagain_rate", "eagain_rate", None, 0.01, ">=6.5"),
    )
    bounds = Bounds((old, new), (("bpf", "<6.5"), ("timestamp", None)))
    assert bounds.split("6.1.0-56-amd64") == ([old], [new])
    assert bounds.split("6.18.44") == ([new], [old])
    assert bounds.backend_for("6.1.0-56-amd64") == "bpf"
    assert bounds.backend_for("6.18.44") == "timestamp"


def test_bad_kernel_argument_is_a_collection_error(pytester):
    pytester.makepyfile("import pytest\n@pytest.mark.eagain_rate(max=0.1, kernel='6.5')\ndef test_x():\n    pass\n")
    result = pytester.runpytest()
    out = result.stdout.str()
    assert "@pytest.mark.eagain_rate: kernel='6.5': not a version specifier" in out
    assert "Traceback" not in out


RUNNING = ".".join(str(p) for p in kernel_version(os.uname().release).release[:2])


def test_stacked_markers_check_only_the_running_kernels_bound(pytester):
    """Two eagain_rate markers, one per kernel range: only the one for this kernel is checked, and the
    failure table names the one that applied and the one that did not."""
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.udpsend(duration=0.2, sndbuf=65536)
        @pytest.mark.eagain_rate(max=0.0, kernel="<{RUNNING}")
        @pytest.mark.eagain_rate(min=0.9, kernel=">={RUNNING}")
        def test_fails_on_this_kernel(udpsend_result):
            pass

        @pytest.mark.udpsend(duration=0.2, sndbuf=65536)
        @pytest.mark.eagain_rate(min=0.9, kernel="<{RUNNING}")
        def test_bound_for_older_kernels_is_not_checked(udpsend_result):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--udpsend-require-privileges")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert f">= 0.9 (kernel >={RUNNING})" in out
    assert f"not checked on {os.uname().release}: eagain_rate <= 0 (kernel <{RUNNING})" in out

"""``udpsend doctor`` on tracing: one line per kernel mechanism, and only fixes that can work (issue 26 item 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pytest_udpsend.command import doctor

# The lines the doctor must print, one per mechanism, whatever this kernel allows.
MECHANISMS = (
    "kernel lockdown",
    "kprobes",
    "fentry/fexit",
    "tracepoints via perf",
    "raw_tracepoint / tp_btf",
    "tracefs",
    "tracefs event filters",
    "kernel BTF",
    "perf_event_open",
)
MOUNT = "mount -t tracefs nodev /sys/kernel/tracing"


@pytest.fixture
def no_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without headers on disk and without bcc: the two lines whose fix is a package."""
    monkeypatch.setattr(doctor.probes, "kernel_headers_dir", lambda release=None: None)
    monkeypatch.setattr(doctor, "KHEADERS", doctor.Path("/nonexistent/kheaders.tar.xz"))
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError


def _line(checks: list[doctor.Check], name: str) -> doctor.Check:
    found = [c for c in checks if c[0] == name]
    assert len(found) == 1, f"{name!r} in {[c[0] for c in checks]}"
    return found[0]


def test_no_fix_names_a_package_apt_cannot_find(no_headers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "apt_has", lambda package: False)
    checks = doctor.tracing()
    assert not [c for c in checks if "apt-get install" in c[2]], checks
    headers = _line(checks, "kernel headers")
    assert headers[1] is False
    assert f"no package linux-headers-{os.uname().release}" in headers[2] and "--udpsend-kernel" in headers[2]


def test_package_fix_where_apt_has_a_candidate(no_headers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(doctor, "apt_has", lambda package: asked.append(package) or True)
    checks = doctor.tracing()
    release = os.uname().release
    assert f"apt-get install linux-headers-{release}" in _line(checks, "kernel headers")[2]
    assert "apt-get install python3-bpfcc" in _line(checks, "bcc (python3-bpfcc)")[2]
    assert f"linux-headers-{release}" in asked and "python3-bpfcc" in asked


def test_unmounted_tracefs_says_how_to_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "mounted_filesystems", lambda: {"proc": "/proc", "sysfs": "/sys"})
    monkeypatch.setattr(doctor, "kernel_filesystems", lambda: {"proc", "sysfs", "tracefs", "debugfs"})
    checks = doctor.tracing()
    name, ok, detail = _line(checks, "tracefs")
    assert ok is None and "not mounted" in detail and MOUNT in detail
    assert "no tracefs" not in detail
    assert MOUNT in _line(checks, "tracefs event filters")[2]


def test_tracefs_not_built_offers_no_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "mounted_filesystems", lambda: {"proc": "/proc"})
    monkeypatch.setattr(doctor, "kernel_filesystems", lambda: {"proc", "sysfs"})
    name, ok, detail = _line(doctor.tracing(), "tracefs")
    assert ok is False and MOUNT not in detail and "no fix on this kernel" in detail


def test_each_mechanism_has_a_line() -> None:
    checks = doctor.tracing()
    for name in MECHANISMS:
        _, ok, detail = _line(checks, name)
        assert detail, name


def test_doctor_command_on_this_host() -> None:
    """What a user sees: every mechanism, no blanket verdict, and every package it names is installable."""
    if os.geteuid() != 0:
        pytest.skip("the doctor builds namespaces as root")
    out = subprocess.run(
        [sys.executable, "-m", "pytest_udpsend.cli", "doctor"], capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in out.stderr, out.stderr
    for name in MECHANISMS:
        assert re.search(rf"^  (ok |-- |NO ) {re.escape(name)}  ", out.stdout, re.M), (name, out.stdout)
    assert "cannot work" not in out.stdout and "impossible" not in out.stdout
    for package in re.findall(r"apt-get install ([\w.+-]+)", out.stdout):
        policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=30).stdout
        assert "Candidate:" in policy and "Candidate: (none)" not in policy, (package, out.stdout)

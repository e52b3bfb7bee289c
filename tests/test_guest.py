"""A good guest: inert until used, right in containers, and faults that never break the next session."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_udpsend.frontend import guest
from pytest_udpsend.host.journal import restore_orphans
from pytest_udpsend.host.state import FileLock, LockTimeout
from pytest_udpsend.host.undo import UndoStack
from pytest_udpsend.lane import vm, wire

from .conftest import netns_names

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs"]
DEAD_TAG = "999999999.1"  # no such pid: the journal of a dead session
PLAIN = "def test_plain():\n    assert 1 + 1 == 2\n"
SETPRIV = shutil.which("setpriv")
UNSHARE = shutil.which("unshare")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user can read (pytester's lives under root's 0700 basetemp)."""
    path = Path(tempfile.mkdtemp(prefix="udpsend-guest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lock_held_elsewhere(state: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holds the host lock of ``state`` (as a measuring session does)."""
    code = (
        "import sys, time\n"
        "from pytest_udpsend.host.state import FileLock\n"
        "FileLock('host').acquire(); print('held', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "UDPSEND_STATE_DIR": str(state)}, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --- inert until used -------------------------------------------------------------------------


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux) to become another user")
def test_non_root_suite_runs_untouched_and_ours_is_skipped(open_dir):
    (open_dir / "test_plain.py").write_text(PLAIN)
    (open_dir / "test_ours.py").write_text("def test_ours(veth):\n    pass\n")
    state = open_dir / "state"  # as on a host where no root run has made it yet
    nobody = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "UDPSEND_STATE_DIR": str(state)}
    run = subprocess.run(
        nobody + PYTEST + [str(open_dir)], cwd=open_dir, env=env, capture_output=True, text=True, timeout=60
    )
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert run.returncode == 0, run.stdout
    assert "1 passed, 1 skipped" in run.stdout
    assert "needs CAP_NET_ADMIN and CAP_SYS_ADMIN" in run.stdout and "uid 65534" in run.stdout
    strict = subprocess.run(
        nobody + PYTEST + ["--udpsend-require-privileges", str(open_dir)],
        cwd=open_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "INTERNALERROR" not in strict.stdout + strict.stderr
    assert "1 passed, 1 error" in strict.stdout and "run pytest as root" in strict.stdout
    assert not state.exists()


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux) to become another user")
def test_non_root_udpsend_command_is_one_sentence(open_dir):
    nobody = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "UDPSEND_STATE_DIR": str(open_dir / "state")}
    for command in (["run", "--duration", "0.2"], ["doctor"]):
        out = subprocess.run(
            nobody + [sys.executable, "-m", "pytest_udpsend.cli", *command],
            cwd=open_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in out.stderr + out.stdout
        assert out.returncode != 0
        assert "run pytest as root (sudo)" in out.stderr + out.stdout
    assert not (open_dir / "state").exists()


def test_unrelated_suite_touches_nothing(pytester, tmp_path, monkeypatch):
    """No state directory, no SIGTERM handler, no bcc, no header lines, in a root run too."""
    pytester.makepyfile(
        """
        import signal, sys
        def test_plain():
            assert "bcc" not in sys.modules
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        """
    )
    state = tmp_path / "state"
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(state))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert "udpsend:" not in result.stdout.str()
    assert not state.exists()


def test_unrelated_root_suite_does_not_wait_for_the_host_lock(pytester, tmp_path, monkeypatch):
    pytester.makepyfile(PLAIN)
    state = tmp_path / "state"
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(state))
    with lock_held_elsewhere(state):
        start = time.monotonic()
        result = pytester.runpytest_subprocess(timeout=60)
        took = time.monotonic() - start
    result.assert_outcomes(passed=1)
    assert took < 15, f"an unrelated suite took {took:.1f} s beside a lock holder"  # ~1 s; no 600 s wait


def test_header_appears_once_a_test_of_ours_is_collected(pytester, tmp_path, monkeypatch):
    pytester.makepyfile("def test_ours(netns):\n    pass\n")
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(tmp_path / "state"))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert "udpsend: sock_wfree timing backend:" in result.stdout.str()


# --- locks ------------------------------------------------------------------------------------


def test_lock_give_up_names_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(tmp_path))
    with lock_held_elsewhere(tmp_path) as holder:
        lock = FileLock("host", timeout=0.3)
        start = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"held by pid {holder.pid} \(.*python.*FileLock"):
            lock.acquire()
        assert time.monotonic() - start < 5
    lock.acquire()  # the holder is gone, the lock is free again: nothing was left taken
    lock.release()


def test_lock_waiter_wakes_when_released(tmp_path, monkeypatch):
    """A blocking flock: the waiter gets the lock as soon as the holder lets go, not a poll later."""
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(tmp_path))
    first, second = FileLock("host"), FileLock("host", timeout=30)
    first.acquire()
    got: list[float] = []
    waiter = threading.Thread(target=lambda: (second.acquire(), got.append(time.monotonic())))
    waiter.start()
    time.sleep(0.3)
    assert not got
    released = time.monotonic()
    first.release()
    waiter.join(10)
    assert got and got[0] - released < 1.0
    assert (tmp_path / "locks" / "host").read_text().strip() == str(os.getpid())
    second.release()


def test_lock_timeout_is_the_test_failure_not_an_internal_error(pytester, tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(state))
    pytester.makepyfile(
        """
        def test_measure(_udpsend_ctx):
            _udpsend_ctx.session.host_lock.timeout = 0.5
            _udpsend_ctx.exclusive()

        def test_after():
            pass
        """
    )
    with lock_held_elsewhere(state) as holder:
        result = pytester.runpytest_subprocess(timeout=60)
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert (
        f"LockTimeout: waited 0.5 s for the pytest-udpsend host lock ({state}/locks/host), held by pid {holder.pid}"
        in out
    )
    assert "INTERNALERROR" not in out


# --- the journal ------------------------------------------------------------------------------


def test_unrestorable_journal_entry_is_warned_and_kept(pytester, tmp_path, monkeypatch):
    journals = tmp_path / "state" / "journal"
    journals.mkdir(parents=True)
    dead = journals / f"{DEAD_TAG}.json"
    unrestorable = [["net.core.no_such_knob", "1"], ["net.core.netdev_budget_usecs", "-5"]]  # gone; EINVAL
    dead.write_text(json.dumps(unrestorable))
    (journals / "999999998.1.json").write_text("[[not json")
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(tmp_path / "state"))
    pytester.makepyfile("def test_ours(netns):\n    netns('a')\n")
    for warned in (3, 2):  # the next session is not broken either, and tries again
        result = pytester.runpytest_subprocess()
        result.assert_outcomes(passed=1, warnings=warned)
        out = result.stdout.str()
        assert "could not restore net.core.no_such_knob=1 left by a dead session" in out
        assert "could not restore net.core.netdev_budget_usecs=-5" in out
        assert json.loads(dead.read_text()) == unrestorable
        assert "INTERNALERROR" not in out
    assert (journals / "999999998.1.json.corrupt").read_text() == "[[not json"
    assert not (journals / "999999998.1.json").exists()


def test_restore_orphans_drops_what_it_restored_and_keeps_the_rest(tmp_path):
    (tmp_path / f"{DEAD_TAG}.json").write_text(json.dumps([["a.b", "1"], ["c.d", "2"], ["e.f", "3"]]))
    (tmp_path / "999999998.1.json").write_text("{")
    written = []

    def write(name: str, value: str) -> None:
        if name == "c.d":
            raise OSError(22, "Invalid argument")
        written.append((name, value))

    done = restore_orphans(write, tmp_path)
    assert written == [("e.f", "3"), ("a.b", "1")]  # newest change first
    assert done.knobs == ["e.f=3", "a.b=1"]
    assert json.loads((tmp_path / f"{DEAD_TAG}.json").read_text()) == [["c.d", "2"]]
    assert any("c.d=2" in w for w in done.warnings) and any(".corrupt" in w for w in done.warnings)
    assert (tmp_path / "999999998.1.json.corrupt").read_text() == "{"


# --- interrupts during teardown -----------------------------------------------------------------


def test_undo_stack_finishes_then_reraises_an_interrupt():
    ran: list[str] = []
    undo = UndoStack()
    undo.push("first", lambda: ran.append("first"))
    undo.push("interrupted", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    undo.push("last", lambda: ran.append("last"))
    with pytest.raises(KeyboardInterrupt):
        undo.flush()
    assert ran == ["last", "first"] and len(undo) == 0


def test_ctrl_c_during_teardown_undoes_the_rest_and_ends_the_run(pytester, host_unchanged):
    pytester.makepyfile(
        """
        import os, signal
        def test_first(_udpsend_ctx, netns):
            netns("kept-until-undo")
            open("pid", "w").write(str(os.getpid()))
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _udpsend_ctx.undo.push("interrupt", lambda: os.kill(os.getpid(), signal.SIGINT))

        def test_second():
            open("second-ran", "w").close()
        """
    )
    result = pytester.runpytest_subprocess()
    out = result.stdout.str()
    assert "KeyboardInterrupt" in out
    assert not (pytester.path / "second-ran").exists()  # the run ended
    pid = (pytester.path / "pid").read_text()
    assert not [n for n in netns_names() if n.startswith(f"udps-{pid}.")]  # the rest of the undo ran


# --- a privileged container with its own network and pid namespaces -------------------------------


@pytest.mark.skipif(UNSHARE is None, reason="needs unshare (util-linux)")
def test_container_with_own_namespaces(pytester, tmp_path, host_unchanged):
    pytester.makepyfile(
        """
        import pytest

        def test_pair(veth):
            assert veth.sender.addr != veth.receiver.addr

        @pytest.mark.sysctl({"net.core.netdev_budget": 8})
        def test_global_marker(veth):
            pass

        def test_global_set(sysctl):
            sysctl.set("net.core.netdev_budget", 8)

        @pytest.mark.sysctl({"net.ipv4.udp_rmem_min": 8192})
        def test_per_netns_marker(veth, sysctl):
            assert sysctl.get("net.ipv4.udp_rmem_min", netns=veth.receiver) == "8192"
        """
    )
    env = {**os.environ, "UDPSEND_STATE_DIR": str(tmp_path / "state")}
    run = subprocess.run(
        [UNSHARE, "-n", "-p", "-f", "--mount-proc", *PYTEST, str(pytester.path)],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout
    assert "1 failed, 2 passed, 1 skipped" in out, out
    sentence = "global knobs need the host's network namespace (run the container with --network host / on the host)"
    assert (
        "SKIPPED [1] test_container_with_own_namespaces.py:6: net.core.netdev_budget is a global knob or unknown" in out
    )
    assert out.count(sentence) == 2  # the marker's skip and the fixture call's failure
    assert "ERROR collecting" not in out and "Interrupted" not in out and "Traceback" not in out


# --- the lane's files from a guest that died, and a bad selection variable ---------------------

REPORT = {
    "nodeid": "t.py::a",
    "when": "setup",
    "outcome": "passed",
    "longrepr": "",
    "duration": 0.1,
    "user_properties": [],
}


def test_cut_short_reports_file_keeps_what_was_read_and_names_the_line(tmp_path):
    path = tmp_path / "reports.jsonl"
    lines = [json.dumps({**REPORT, "when": when}) for when in ("setup", "call", "teardown")]
    path.write_text("\n".join(lines) + '\n{"nodeid": "t.py::b", "when": "ca')  # the guest died mid-write
    reports, problem = wire.read_guest_reports(path)
    assert [g.when for g in reports["t.py::a"]] == ["setup", "call", "teardown"] and list(reports) == ["t.py::a"]
    assert problem == f"line 4 of {path} is cut short or not a test report"
    path.write_text(lines[0] + "\n[1, 2]\n" + lines[1] + "\n")  # a line that is JSON but no report
    reports, problem = wire.read_guest_reports(path)
    assert [g.when for g in reports["t.py::a"]] == ["setup", "call"] and "line 2 of" in problem
    assert wire.read_guest_reports(tmp_path / "none.jsonl") == ({}, "")


KILLED_GUEST = """
import os, signal

def test_a():
    pass

def test_b():
    path = os.environ.get("UDPSEND_LANE_REPORT")
    if path:  # the lane's run of this test dies while writing its report, as a killed guest does
        with open(path, "a") as fh:
            fh.write('{"nodeid": "test_killed.py::test_b", "when": "call", "outc')
        os.kill(os.getpid(), signal.SIGKILL)

def test_c():
    pass
"""


def test_killed_lane_run_reports_what_it_read_and_one_error_naming_the_file(pytester):
    pytester.makepyfile(test_killed=KILLED_GUEST)
    result = pytester.runpytest_subprocess("--udpsend-kernel", "host", "-p", "no:cacheprovider", "-rA", timeout=120)
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-3000:]
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, errors=1)
    assert re.search(r"^PASSED test_killed.py::test_a@", out, re.M), out[-3000:]
    assert re.search(r"^FAILED test_killed.py::test_b@", out, re.M) and re.search(
        r"^the pytest run on this host \(\S+\) died while reporting this test \(pytest exit -9\): "
        r"line 5 of /\S+/reports.jsonl is cut short or not a test report; pytest log tail:$",
        out,
        re.M,
    ), out[-3000:]
    assert re.search(r"^ERROR test_killed.py::test_c@", out, re.M) and re.search(
        r"^the pytest run on this host \(\S+\) never reported this test \(pytest exit -9\); "
        r"line 5 of /\S+/reports.jsonl is cut short or not a test report; pytest log tail:$",
        out,
        re.M,
    ), out[-3000:]


@pytest.mark.parametrize("content", [None, "[not json", '{"t.py::a": 1}', '["t.py::a", 2]'])
def test_bad_lane_selection_variable_is_a_usage_error(pytester, monkeypatch, tmp_path, content):
    path = tmp_path / "selection.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("UDPSEND_LANE_SELECTION", str(path))
    with pytest.raises(pytest.UsageError, match=rf"^UDPSEND_LANE_SELECTION={path}: .*unset it"):
        guest.guest_selection()
    pytester.makepyfile(PLAIN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    err = result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + err
    assert f"ERROR: UDPSEND_LANE_SELECTION={path}: " in err and "Traceback" not in err + result.stdout.str()


def test_guest_report_with_a_user_property_that_is_not_a_pair_is_not_a_report(tmp_path):
    """review 14: the host unpacks each user property as (name, value) (the kernel gate's samples, junitxml)."""
    path = tmp_path / "reports.jsonl"
    good = json.dumps({**REPORT, "user_properties": [["udpsend", {"x": 1}]]})
    bad = [json.dumps({**REPORT, "when": "call", "user_properties": props}) for props in ([["a", 1, 2]], [["a"]], [[]])]
    for line in bad:
        path.write_text(good + "\n" + line + "\n")
        reports, problem = wire.read_guest_reports(path)
        assert [g.when for g in reports["t.py::a"]] == [
            "setup"
        ] and problem == f"line 2 of {path} is cut short or not a test report"
        assert [tuple(p) for p in reports["t.py::a"][0].user_properties] == [("udpsend", {"x": 1})]


KILLED_IN_SETUP = """
import os, signal
import pytest

@pytest.fixture
def dies():
    path = os.environ.get("UDPSEND_LANE_REPORT")
    if path:  # the lane's run dies in this set-up, mid-way through a line, as a killed guest does
        with open(path, "a") as fh:
            fh.write('{"nodeid": "test_killed_in_setup.py::test_b", "when": "setup", "outc')
        os.kill(os.getpid(), signal.SIGKILL)

def test_a():
    pass

def test_b(dies):
    pass

def test_c():
    pass
"""


def test_lane_run_killed_in_a_setup_gives_that_test_one_error(pytester):
    """review 14: the cut line is the test's set-up: it never reported a phase, so it gets the one error
    saying so, and no made-up teardown failure besides."""
    pytester.makepyfile(test_killed_in_setup=KILLED_IN_SETUP)
    result = pytester.runpytest_subprocess("--udpsend-kernel", "host", "-p", "no:cacheprovider", "-rA", timeout=120)
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-3000:]
    result.assert_outcomes(passed=1, errors=2)
    assert not re.search(r"^FAILED ", out, re.M), out[-3000:]
    assert re.search(r"^ERROR test_killed_in_setup.py::test_b@", out, re.M) and re.search(
        r"^the pytest run on this host \(\S+\) never reported this test \(pytest exit -9\); "
        r"line 4 of /\S+/reports.jsonl is cut short or not a test report; pytest log tail:$",
        out,
        re.M,
    ), out[-3000:]


BAD_COLLECTED = """
import json, os

def pytest_collection_finish(session):
    path = os.environ.get("UDPSEND_LANE_SELECTION")
    if path:  # the lane's run leaves a collected.json that is JSON but no list of node ids
        with open(os.path.join(os.path.dirname(path), "collected.json"), "w") as fh:
            fh.write(CONTENT)
"""


@pytest.mark.parametrize("content", ["5", '{"test_x.py::test_a": 1}', "[1, 2]", "[not json"])
def test_a_malformed_collected_file_from_the_lane_is_no_internal_error(pytester, content):
    """review 12: collected.json and the selection file are read by one reader: a number is no INTERNALERROR,
    and a dict's keys or a list of numbers are not taken for node ids (every test would count as not collected)."""
    pytester.makeconftest(f"CONTENT = {content!r}\n" + BAD_COLLECTED)
    pytester.makepyfile(test_x="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest_subprocess("--udpsend-kernel", "host", "-p", "no:cacheprovider", "-rA", timeout=120)
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-3000:]
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("planted", ["an existing file", "a file to be made"])
def test_the_kvm_verdict_cache_never_follows_a_planted_symlink(tmp_path, monkeypatch, planted):
    """review 8: the cached KVM verdict is a file of ours in the state directory, or ignored (and not written)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(state))
    target = tmp_path / "precious"
    if planted == "an existing file":
        target.write_text("precious\n")
    cache = state / f"kvm-verdict-{os.uname().release}"
    cache.symlink_to(target)
    boots = []
    monkeypatch.setattr(vm.os, "access", lambda *a, **k: True)  # as if /dev/kvm were usable
    monkeypatch.setattr(vm, "_boot", lambda *a, **k: boots.append(a) or (0, ""))
    ok, note = vm.kvm_works(tmp_path / "vmlinuz")
    assert (ok, len(boots)) == (True, 1)  # probed, as if there were no cache
    assert f"{cache} is a symbolic link" in note and "ignored" in note
    assert cache.is_symlink()
    assert (target.read_text() if target.exists() else None) == (
        "precious\n" if planted == "an existing file" else None
    )


def test_the_kvm_verdict_is_cached_in_a_file_of_ours(tmp_path, monkeypatch):
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(tmp_path / "state"))
    boots = []
    monkeypatch.setattr(vm.os, "access", lambda *a, **k: True)
    monkeypatch.setattr(vm, "_boot", lambda *a, **k: boots.append(a) or (1, ""))
    assert vm.kvm_works(tmp_path / "vmlinuz")[0] is False
    assert vm.kvm_works(tmp_path / "vmlinuz") == (False, "KVM hangs here (cached verdict): using TCG")
    cache = tmp_path / "state" / f"kvm-verdict-{os.uname().release}"
    assert len(boots) == 1 and cache.read_text() == "no" and oct(cache.stat().st_mode & 0o777) == "0o600"

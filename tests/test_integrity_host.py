"""Issue 24, items 6-8 and 10 (sysctl values): the crash journal, knob scope, the state directory.

Journals and locks here live in a temporary state directory (UDPSEND_STATE_DIR or an explicit
folder); the only real knob written is vm.swappiness, set to the value it already has.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pytest_udpsend.errors import SysctlError, UdpsendError
from pytest_udpsend.host.journal import Journal, restore_orphans
from pytest_udpsend.host.state import FileLock, state_dir
from pytest_udpsend.host.sysctl import SysctlHost, Sysctls, format_value
from pytest_udpsend.host.undo import UndoStack

OLDER, NEWER = "4999999.1", "5999999.1"  # no such pids (above pid_max): dead sessions' tags
NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory for this test (0700, ours), and a file an attacker would aim at."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(path))
    (tmp_path / "precious").write_text("precious\n")
    return path


def journal_of(folder: Path, tag: str) -> Journal:
    """The journal a session with owner tag ``tag`` would keep in ``folder``."""
    journal = Journal(folder)
    journal.path = folder / f"{tag}.json"
    return journal


# --- item 6: dead journals are replayed in the order the changes were made -------------------


def test_two_dead_journals_for_one_knob_restore_the_oldest_original(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    older, newer = journal_of(folder, OLDER), journal_of(folder, NEWER)
    older.record("net.core.netdev_budget", "300")  # the first session changed 300 -> 11, then died
    newer.record("net.core.netdev_budget", "11")  # the next one found 11, changed it, and died too
    older.record("net.core.netdev_max_backlog", "1000")  # a later change of another knob
    assert sorted(p.name for p in folder.iterdir()) == [f"{OLDER}.json", f"{NEWER}.json"]  # file order != change order
    knobs: dict[str, str] = {}

    def write(name: str, value: str) -> None:
        knobs[name] = value

    done = restore_orphans(write, folder)
    assert knobs == {"net.core.netdev_budget": "300", "net.core.netdev_max_backlog": "1000"}
    assert not done.warnings and not list(folder.iterdir())


def test_entries_keep_their_order_within_one_journal(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    journal = journal_of(folder, OLDER)
    journal.record("net.core.netdev_budget", "300")
    journal.forget("net.core.netdev_budget")
    journal.record("net.core.netdev_budget", "17")  # recorded again later: its original is 17
    written: list[tuple[str, str]] = []
    restore_orphans(lambda n, v: written.append((n, v)), folder)
    assert written == [("net.core.netdev_budget", "17")]


# --- item 7: only net.* knobs can be per-namespace --------------------------------------------


@pytest.mark.parametrize("name", ["vm.swappiness", "kernel.sched_autogroup_enabled"])
def test_non_net_knobs_are_global(name: str, tmp_path: Path) -> None:
    if not Path("/proc/sys", *name.split(".")).exists():
        pytest.skip(f"no {name} on this kernel")
    assert SysctlHost(Journal(tmp_path / "journal")).scope(name) == "global"


def test_a_global_non_net_knob_is_journaled_and_restored(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    host, undo = SysctlHost(Journal(folder)), UndoStack()
    sysctls = Sysctls(host, undo, lambda ns: ns, lambda: None)  # type: ignore[arg-type,return-value]
    value = Path("/proc/sys/vm/swappiness").read_text().strip()
    try:
        assert sysctls.set("vm.swappiness", value) == value  # the value it has: nothing changes
        assert [e[:2] for e in json.loads(host.journal.path.read_text())] == [["vm.swappiness", value]]
    finally:
        undo.flush()
    assert not host.journal.path.exists()
    assert Path("/proc/sys/vm/swappiness").read_text().strip() == value


# --- item 8: the state directory and the files in it are ours, or refused ---------------------


def test_planted_symlink_at_the_lock_is_refused(state: Path) -> None:
    (state / "locks").mkdir(mode=0o700)
    (state / "locks" / "host").symlink_to(state.parent / "precious")
    with pytest.raises(UdpsendError, match=rf"{state}/locks/host is a symbolic link.*remove it"):
        FileLock("host", timeout=1).acquire()
    assert (state.parent / "precious").read_text() == "precious\n"


@pytest.mark.parametrize("suffix", [".tmp", ".json"])
def test_planted_symlink_at_a_journal_name_is_refused(state: Path, suffix: str) -> None:
    journal = Journal(state / "journal")
    state_dir("journal")
    planted = journal.path.with_suffix(suffix)
    planted.symlink_to(state.parent / "precious")
    with pytest.raises(UdpsendError, match=rf"{planted} is a symbolic link.*remove it"):
        journal.record("net.core.netdev_budget", "300")
    assert (state.parent / "precious").read_text() == "precious\n"
    assert planted.is_symlink()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_state_dir_others_can_write_is_refused(state: Path, mode: int) -> None:
    state.chmod(mode)
    with pytest.raises(UdpsendError, match=rf"state directory {state} is writable by others.*UDPSEND_STATE_DIR"):
        FileLock("host", timeout=1).acquire()
    with pytest.raises(UdpsendError, match=rf"{state} is writable by others"):
        Journal(state / "journal").record("net.core.netdev_budget", "300")


def test_a_state_dir_of_another_user_is_refused(state: Path) -> None:
    os.chown(state, NOBODY, -1)
    with pytest.raises(UdpsendError, match=rf"state directory {state} is owned by uid {NOBODY}.*UDPSEND_STATE_DIR"):
        FileLock("host", timeout=1).acquire()


def test_a_planted_journal_in_a_state_dir_others_can_write_is_not_replayed(state: Path) -> None:
    folder = state / "journal"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    (folder / f"{OLDER}.json").write_text(json.dumps([["kernel.core_pattern", "|/tmp/evil"]]))
    written: list[tuple[str, str]] = []
    with pytest.raises(UdpsendError, match=rf"{folder} is writable by others"):
        restore_orphans(lambda n, v: written.append((n, v)), folder)
    assert not written


def test_a_journal_owned_by_another_user_is_warned_and_not_replayed(state: Path) -> None:
    folder = state_dir("journal")
    planted = folder / f"{OLDER}.json"
    planted.write_text(json.dumps([["kernel.core_pattern", "|/tmp/evil"]]))
    os.chown(planted, NOBODY, -1)
    journal_of(folder, NEWER).record("net.core.netdev_budget", "300")
    written: list[tuple[str, str]] = []
    done = restore_orphans(lambda n, v: written.append((n, v)), folder)
    assert written == [("net.core.netdev_budget", "300")]
    assert len(done.warnings) == 1
    assert f"{planted} is owned by uid {NOBODY}, not by this user: not replayed" in done.warnings[0]
    assert planted.exists()  # kept for a human to look at


@pytest.mark.parametrize("layout", ["the state dir", "a folder above it", "a link a link of ours points at"])
def test_a_state_dir_reached_through_another_users_symlink_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """review 2: a symlink in the chain is a level of its own: whoever owns it decides where root's files go."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    planted = tmp_path / "link"
    planted.symlink_to(real)
    os.lchown(planted, NOBODY, -1)
    state = {"the state dir": planted, "a folder above it": planted / "state"}.get(layout)
    if state is None:  # ours -> nobody's -> the folder
        (tmp_path / "ours").symlink_to(planted)
        state = tmp_path / "ours"
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(state))
    with pytest.raises(UdpsendError, match=rf"{planted} is a symbolic link owned by uid {NOBODY}.*UDPSEND_STATE_DIR"):
        FileLock("host", timeout=1).acquire()
    with pytest.raises(UdpsendError, match=rf"{planted} is a symbolic link owned by uid {NOBODY}"):
        Journal().record("net.core.netdev_budget", "300")
    assert not list(real.iterdir())


def test_a_symlink_of_ours_or_roots_in_the_chain_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to("real")  # relative, ours (root's here)
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(tmp_path / "link" / "state"))
    with FileLock("host", timeout=1):
        assert (real / "state" / "locks" / "host").is_file()
    assert state_dir("x") == real / "state" / "x"


def test_a_journal_write_stays_in_the_folder_that_was_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review 2: the folder is checked once and then used through what was checked, never by name again:
    a link swapped between the check and the write (here: during the fsync) does not move the write."""
    checked, other = tmp_path / "checked", tmp_path / "other"
    for folder in (checked, other):
        (folder / "journal").mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(checked)
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(link))
    real_fsync = os.fsync

    def fsync_then_swap(fd: int) -> None:
        real_fsync(fd)
        link.unlink()
        link.symlink_to(other)

    journal = Journal()
    monkeypatch.setattr(os, "fsync", fsync_then_swap)
    journal.record("net.core.netdev_budget", "300")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [p.name for p in (checked / "journal").iterdir()] == [journal.path.name]
    assert not list((other / "journal").iterdir())
    assert journal.path.parent == checked / "journal"  # the checked folder's name, not the link's
    (other / "journal" / journal.path.name).write_text("[]")  # a decoy where the link now points
    journal.forget("net.core.netdev_budget")  # removal goes to the checked folder too
    assert not list((checked / "journal").iterdir())
    assert (other / "journal" / journal.path.name).read_text() == "[]"


def test_the_user_sees_one_sentence_for_an_unsafe_state_dir(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o777)
    monkeypatch.setenv("UDPSEND_STATE_DIR", str(state))
    pytester.makepyfile("def test_ours(netns):\n    netns('a')\n\ndef test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert f"UnsafeStateDir: the pytest-udpsend state directory {state} is writable by others" in out
    assert "Traceback" not in out and "INTERNALERROR" not in out


def test_a_user_without_privileges_is_not_disturbed() -> None:
    """The stop hook's check: nobody, a one-line test, a state dir that is not nobody's."""
    work = Path(tempfile.mkdtemp(prefix="udpsend-integrity-"))
    try:
        work.chmod(0o777)
        (work / "test_one.py").write_text("def test_one():\n    assert True\n")
        env = {"PATH": os.environ.get("PATH", ""), "UDPSEND_STATE_DIR": str(work / "state"), "HOME": str(work)}
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "test_one.py",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


OURS_UNPRIVILEGED = """
import pytest
def test_plain():
    pass
def test_veth(veth):
    pass
def test_netns(netns):
    netns("a")
def test_sysctl(sysctl):
    sysctl.get("net.core.somaxconn")
@pytest.mark.sysctl({"net.core.netdev_budget": 8})
@pytest.mark.eagain_rate(max=0.5)
def test_result(udpsend_result):
    pass
def test_probe(wfree_probe):
    pass
def test_sender(sender_process):
    pass
def test_pressure(cpu_pressure):
    pass
"""


@pytest.mark.parametrize("state", ["missing", "a root run's", "a file"])
def test_a_user_without_privileges_gets_a_skip_from_every_fixture_of_ours(state: str) -> None:
    """review 13: nobody, tests using our fixtures and markers, a state dir on a tmp dir (missing, left by a
    root run, or not a folder at all): each test of ours is a skip naming the reason, never an error."""
    work = Path(tempfile.mkdtemp(prefix="udpsend-integrity-"))
    try:
        work.chmod(0o755)
        (work / "test_ours.py").write_text(OURS_UNPRIVILEGED)
        folder = work / "state"
        if state == "a root run's":
            for sub in ("locks", "journal"):
                (folder / sub).mkdir(mode=0o700, parents=True)
            folder.chmod(0o755)
            (folder / "locks" / "host").write_text("1\n")
            (folder / "journal" / f"{OLDER}.json").write_text(json.dumps([["net.core.netdev_budget", "300"]]))
        elif state == "a file":
            folder.write_text("")
        env = {"PATH": os.environ.get("PATH", ""), "UDPSEND_STATE_DIR": str(folder), "HOME": str(work)}
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                "test_ours.py",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        left = sorted(str(p.relative_to(work)) for p in folder.rglob("*")) if folder.is_dir() else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "INTERNALERROR" not in out and "Traceback" not in out and "Error" not in out, out
    assert "1 passed, 7 skipped" in proc.stdout, out
    assert (
        proc.stdout.count(f"needs CAP_NET_ADMIN and CAP_SYS_ADMIN to build namespaces (uid {NOBODY} lacks them)") >= 7
    )
    expected = {
        "missing": [],
        "a root run's": ["state/journal", f"state/journal/{OLDER}.json", "state/locks", "state/locks/host"],
        "a file": [],
    }[state]
    assert left == expected  # nothing made, nothing replayed


# --- item 10: a sysctl value with control characters, or none at all -------------------------


@pytest.mark.parametrize("value", ["8\n300", "8\r", "\x00", "8\x0b300", "8\x1b", "", "   ", "\t"])
def test_malformed_sysctl_values_are_refused(value: str) -> None:
    with pytest.raises(SysctlError, match=r"sysctl value .* (control character|empty)"):
        format_value(value)


def test_vector_values_are_still_accepted() -> None:
    assert format_value([4096, 87380, 6291456]) == "4096 87380 6291456"
    assert format_value("4096 87380 6291456") == "4096 87380 6291456"


def test_tabs_are_how_the_kernel_prints_vectors_and_are_accepted() -> None:
    """review 5: /proc/sys prints vector knobs (tcp_rmem) with tabs; what get() returned, set() takes."""
    assert format_value("4096\t131072\t33554432") == "4096 131072 33554432"
    assert format_value(" 4096 \t 87380\t\t6291456\t") == "4096 87380 6291456"


def test_a_vector_knob_set_to_what_get_returned(sysctl, netns) -> None:  # type: ignore[no-untyped-def]
    ns = netns("v")
    before = sysctl.get("net.ipv4.tcp_rmem", netns=ns)
    assert "\t" in before  # as the kernel prints it
    assert sysctl.set("net.ipv4.tcp_rmem", before, netns=ns) == before
    assert sysctl.get("net.ipv4.tcp_rmem", netns=ns) == before


def test_marker_with_a_newline_in_a_value_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.sysctl({"net.ipv4.udp_rmem_min": "8\\n300"})
        def test_a():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "@pytest.mark.sysctl: sysctl value '8\\n300' has a control character" in result.stdout.str()


def test_more_fields_than_the_knob_holds_are_refused(sysctl, netns) -> None:  # type: ignore[no-untyped-def]
    ns = netns("f")
    before = sysctl.get("net.ipv4.udp_rmem_min", netns=ns)
    with pytest.raises(SysctlError, match=r"net\.ipv4\.udp_rmem_min holds 1 number.*'8 300' has 2"):
        sysctl.set("net.ipv4.udp_rmem_min", "8 300", netns=ns)
    assert sysctl.get("net.ipv4.udp_rmem_min", netns=ns) == before

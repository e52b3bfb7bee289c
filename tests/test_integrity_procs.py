"""Nothing the user's program started outlives its run, and nothing keeps a namespace of ours alive.

Real namespaces, short runs: the program forks a child that leaves its process group
(setsid) and a double-forked grandchild that leaves its parent, both sleeping 60 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_udpsend.host import cgroup, netns
from pytest_udpsend.host.state import owner_tag, pid_namespace
from pytest_udpsend.measure import external

from .conftest import netns_names

# argv[1]: where each descendant writes its pid (PATH.setsid, PATH.grandchild); exits once both did
FORKER = """
import os, sys, time
out = sys.argv[1]
def note(name):
    with open(out + "." + name + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(out + "." + name + ".tmp", out + "." + name)
if os.fork() == 0:
    os.setsid()
    note("setsid")
    time.sleep(60)
    os._exit(0)
mid = os.fork()
if mid == 0:
    if os.fork() == 0:
        note("grandchild")
        time.sleep(60)
    os._exit(0)
os.waitpid(mid, 0)
while not all(os.path.exists(out + "." + n) for n in ("setsid", "grandchild")):
    time.sleep(0.01)
"""
NAMES = ("setsid", "grandchild")


def alive(pid: int) -> bool:
    """The process runs (a zombie has left its namespaces and cgroup: it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def in_netns(ino: int) -> list[int]:
    """Pids of the processes whose network namespace is the one with inode ``ino``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == ino and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def read_pids(out: Path) -> list[int]:
    return [int(Path(f"{out}.{name}").read_text()) for name in NAMES]


@pytest.fixture
def no_survivors() -> Iterator[list[int]]:
    """Pids the test learns; any still alive at the end is killed (so a failing run leaves nothing)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


INNER = f"""
import os, sys
from pathlib import Path

FORKER = {FORKER!r}

def alive(pid):
    try:
        stat = Path(f"/proc/{{pid}}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"

def test_forks(sender_process):
    ns = sender_process.topology.sender.ns
    Path("netns").write_text(f"{{ns.name}} {{os.stat(ns.path).st_ino}}")
    out = Path("pids").resolve()
    r = sender_process.run([sys.executable, "-c", FORKER, str(out)])
    assert r.process["exited"] and r.process["returncode"] == 0
    pids = [int(Path(f"{{out}}.{{n}}").read_text()) for n in {NAMES!r}]
    survivors = [p for p in pids if alive(p)]
    assert not survivors, f"the program's children {{survivors}} outlived the run"
    assert "processes the program left running at its end (in its own cgroup): 2, killed" in r.checks, r.checks
"""


def test_program_children_die_with_the_run_and_the_namespace_goes(pytester, no_survivors):
    pytester.makepyfile(test_forks=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--udpsend-require-privileges", timeout=120)
    no_survivors += read_pids(pytester.path / "pids")
    name, ino = (pytester.path / "netns").read_text().split()
    out = result.stdout.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
    result.assert_outcomes(passed=1)
    assert not [p for p in no_survivors if alive(p)], "the program's children outlived the session"
    assert not in_netns(int(ino)) and name not in netns_names()


def sleeper_in(ns: netns.Namespace) -> int:
    """A sleeper in ``ns`` that left our process group and our children (setsid -f): its pid."""
    marker = f"{time.monotonic_ns()}"
    subprocess.run(["nsenter", f"--net={ns.path}", "--", "setsid", "-f", "sleep", f"60.{marker}"], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", f"sleep 60.{marker}"], capture_output=True, text=True).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError("the sleeper never started")


def test_removing_a_namespace_kills_what_runs_in_it(no_survivors):
    ((ns, _),) = netns.create(["evict"])
    ino = os.stat(ns.path).st_ino
    no_survivors.append(sleeper_in(ns))
    assert in_netns(ino) == no_survivors
    netns.remove(ns)
    assert not alive(no_survivors[0]) and not in_netns(ino) and ns.name not in netns_names()


def test_a_survivor_of_the_namespace_sweep_is_one_sentence(no_survivors, monkeypatch):
    ((ns, _),) = netns.create(["survivor"])
    pid = sleeper_in(ns)
    no_survivors.append(pid)
    monkeypatch.setattr(cgroup, "KILL_DEADLINE_S", 0.3)
    monkeypatch.setattr(cgroup, "sigkill", lambda pid, is_member: None)  # as a process stuck in the kernel would be
    with pytest.raises(netns.NamespaceBusy) as caught:
        netns.remove(ns)
    assert str(caught.value).startswith(f"network namespace {ns.name} still holds pid {pid} (sleep 60.")
    assert "\n" not in str(caught.value) and ns.name not in netns_names()  # the name is gone all the same
    os.kill(pid, signal.SIGKILL)


def test_without_cgroup_v2_the_namespace_sweep_kills_them_and_says_so(
    sender_process, tmp_path, no_survivors, monkeypatch
):
    monkeypatch.setattr(cgroup, "v2_root", lambda: None)
    r = sender_process.run([sys.executable, "-c", FORKER, str(tmp_path / "pids")])
    no_survivors += read_pids(tmp_path / "pids")
    assert not [p for p in no_survivors if alive(p)]
    (line,) = [
        c for c in r.checks if c.startswith("no cgroup v2 here: what the program left running was found by a sweep")
    ]
    assert line.endswith(": 2 killed"), r.checks


def forker_in(group: Path, out: Path) -> None:
    """The forker started inside ``group`` (it moves itself in before exec); returns once it exited."""
    subprocess.run(
        ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", sys.executable, "-c", FORKER, str(out)],
        check=True,
        timeout=30,
    )


@pytest.mark.parametrize("kill_file", [True, False], ids=["cgroup.kill", "sigkill-loop"])
def test_emptying_a_cgroup_kills_every_descendant(tmp_path, no_survivors, monkeypatch, kill_file):
    root = cgroup.v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    if not kill_file:
        monkeypatch.setattr(cgroup, "_has_kill", lambda path: False)  # a kernel before 5.14
        monkeypatch.setattr(cgroup, "_has_freeze", lambda path: False)  # and before 5.2: the kill loop alone
    group = cgroup.make(root, "proc")
    try:
        forker_in(group, tmp_path / "pids")
        no_survivors += read_pids(tmp_path / "pids")
        assert all(alive(p) for p in no_survivors) and cgroup.populated(group)
        cgroup.remove(group)
        assert not [p for p in no_survivors if alive(p)] and not group.exists()
    finally:
        if group.exists():
            cgroup.remove(group)


def test_a_dead_sessions_program_cgroup_is_reaped(tmp_path, no_survivors):
    root = cgroup.v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    dead = root / f"{cgroup.PREFIX}999999999.1.{pid_namespace():x}-proc-1"  # no such pid here: a dead owner's
    mine = cgroup.make(root, "proc")
    dead.mkdir()
    try:
        forker_in(dead, tmp_path / "pids")
        no_survivors += read_pids(tmp_path / "pids")
        reaped = cgroup.reap()
        assert dead.name in reaped and mine.name not in reaped and mine.exists() and owner_tag() in mine.name
        assert not dead.exists() and not [p for p in no_survivors if alive(p)]
    finally:
        for group in (dead, mine):
            if group.exists():
                cgroup.remove(group)


# --- review1: names of another pid namespace, pid reuse, where the program's cgroup is ---

# A session in a pid namespace of its own (a container sharing /run/netns and the cgroupfs with
# the host) makes a namespace and a program cgroup, each with a sleeper in it, then waits.
CONTAINER = """
import subprocess, sys
from pytest_udpsend.host import cgroup, netns
((ns, _),) = netns.create(["pidns"])
subprocess.Popen(["nsenter", f"--net={ns.path}", "--", "sleep", "60"])
group = cgroup.make(cgroup.v2_root(), "proc")
subprocess.Popen(["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec sleep 60'])
print(ns.name, group, flush=True)
sys.stdin.read()
"""


def test_a_session_in_another_pid_namespace_is_never_reaped(no_survivors):
    root = cgroup.v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    netns._prepare_rundir()  # /run/netns shared, so that the container's names show here
    # its own /proc (made private first, so that the mount stays in its mount namespace)
    boot = 'mount --make-private /proc && mount -t proc proc /proc && exec "$0" -c "$1"'
    container = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "unchanged",
            "sh",
            "-c",
            boot,
            sys.executable,
            CONTAINER,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert container.stdout is not None and container.stdin is not None
    name, group_s = container.stdout.readline().split()
    group = Path(group_s)
    try:
        deadline = time.monotonic() + 10
        while not (netns.occupants_of(netns.NETNS_DIR / name) and cgroup.pids(group)) and time.monotonic() < deadline:
            time.sleep(0.01)
        sleepers = netns.occupants_of(netns.NETNS_DIR / name) + cgroup.pids(group)
        assert len(sleepers) == 2
        reaped = netns.reap_orphans() + cgroup.reap()
        assert name not in " ".join(reaped) and group.name not in reaped, reaped
        assert all(alive(p) for p in sleepers) and name in netns_names() and group.exists()
    finally:
        container.stdin.close()
        container.wait(timeout=30)  # its init gone, the kernel kills the rest of its pid namespace
        netns.remove_name(name)
        cgroup.remove(group)


def test_an_old_style_namespace_name_is_only_unmounted(no_survivors):
    name = "udps-999999999.1-1-old"  # a dead owner's, before names said their pid namespace
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        no_survivors.append(sleeper_in(netns.Namespace(name, -1)))
        assert name in netns.reap_orphans()
        assert name not in netns_names() and alive(
            no_survivors[0]
        )  # as before: no kill on a name that says no pid namespace
    finally:
        if name in netns_names():
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_an_old_style_cgroup_name_is_left_alone(no_survivors):
    root = cgroup.v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    old = root / f"{cgroup.PREFIX}999999999.1-proc-1"
    old.mkdir()
    try:
        subprocess.Popen(["sh", "-c", f"echo $$ > {old}/cgroup.procs && exec setsid sleep 60"])
        deadline = time.monotonic() + 10
        while not cgroup.pids(old) and time.monotonic() < deadline:
            time.sleep(0.01)
        no_survivors += cgroup.pids(old)
        assert old.name not in cgroup.reap() and old.exists() and all(alive(p) for p in no_survivors)
    finally:
        cgroup.remove(old)


def outsider() -> int:
    """A sleeper outside any namespace or cgroup of ours: what a reused pid would be."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    return proc.pid


def once_more(listing, victim):
    """``listing`` that, the first time, also names ``victim``: a member's pid read, then the member
    gone and its pid reused by an unrelated process before the signal."""
    calls = []

    def listed(*args):
        calls.append(1)
        return listing(*args) + ([victim] if len(calls) == 1 else [])

    return listed


def test_a_pid_no_longer_in_the_cgroup_is_not_killed(no_survivors, monkeypatch):
    root = cgroup.v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    victim = outsider()
    no_survivors.append(victim)
    monkeypatch.setattr(cgroup, "pids", once_more(cgroup.pids, victim))
    monkeypatch.setattr(cgroup, "_has_kill", lambda path: False)  # the loop, not cgroup.kill, does the killing
    group = cgroup.make(root, "proc")
    try:
        subprocess.run(["sh", "-c", f"echo $$ > {group}/cgroup.procs && setsid -f sleep 60"], check=True)
        cgroup.remove(group)
        assert alive(victim) and not group.exists()
    finally:
        if group.exists():
            monkeypatch.undo()
            cgroup.remove(group)


def test_a_pid_no_longer_in_the_namespace_is_not_killed(no_survivors, monkeypatch):
    ((ns, _),) = netns.create(["reuse"])
    victim = outsider()
    no_survivors += [victim, sleeper_in(ns)]
    monkeypatch.setattr(netns, "occupants", once_more(netns.occupants, victim))
    try:
        assert netns.evict(ns.path) == []
        assert alive(victim) and not alive(no_survivors[1])
    finally:
        monkeypatch.undo()
        netns.remove(ns)


def test_a_failed_run_forgets_its_process(sender_process, monkeypatch):
    def broken(proc, duration, started):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(external, "_end", broken)
    with pytest.raises(RuntimeError):
        sender_process.run(["sleep", "5"])
    assert sender_process._runner is not None and sender_process._runner.proc is None


# The runner moves itself into a cgroup of its own (as systemd puts a session in a scope) and makes
# the program's cgroup: it belongs below the runner's, within the limits set on the runner.
UNDER_RUNNER = """
import os, sys
from pathlib import Path
from pytest_udpsend.host import netns
from pytest_udpsend.measure import external
Path(sys.argv[1], "cgroup.procs").write_text(str(os.getpid()))
((ns, _),) = netns.create(["runner"])
confine = external.Confinement(ns)
print(confine.path)
confine.close()
netns.remove(ns)
"""


def test_the_programs_cgroup_is_made_in_the_runners(tmp_path):
    root = cgroup.v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    runner = root / f"udpsend-test-runner-{os.getpid()}"
    runner.mkdir()
    try:
        out = subprocess.run(
            [sys.executable, "-c", UNDER_RUNNER, str(runner)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.strip()).parent == runner, out.stdout
    finally:
        cgroup.remove(runner)


def test_a_program_that_cannot_move_into_its_cgroup_is_swept(sender_process, tmp_path, no_survivors, monkeypatch):
    monkeypatch.setattr(cgroup, "make", lambda root, kind: tmp_path / "no-such-cgroup")
    r = sender_process.run([sys.executable, "-c", FORKER, str(tmp_path / "pids")])
    no_survivors += read_pids(tmp_path / "pids")
    assert not [p for p in no_survivors if alive(p)]
    (line,) = [c for c in r.checks if "could not be moved into its cgroup" in c]
    assert "a sweep of the sender namespace" in line and line.endswith(": 2 killed"), r.checks


def test_ctrl_c_on_another_thread_ends_a_program_run_without_a_duration(sender_process, tmp_path, no_survivors):
    """Ctrl-C while the run waits for a program that would sleep 30 s: the run stops at once (the
    signal landing on another thread, as it can under xdist) and the program is gone with it."""
    started_file = tmp_path / "started"

    def interrupt_once_started() -> None:  # SIGINT to this thread, not the waiting main one
        while not started_file.exists():
            time.sleep(0.01)
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    out = sender_process.topology.sender
    threading.Thread(target=interrupt_once_started, daemon=True).start()
    program = f"import pathlib, time; pathlib.Path({str(started_file)!r}).touch(); time.sleep(30)"
    with pytest.raises(KeyboardInterrupt):
        sender_process.run([sys.executable, "-c", program])
    assert started_file.exists()
    assert not [pid for pid in in_netns(os.stat(out.ns.path).st_ino) if pid != os.getpid()]
    assert time.time() - started_file.stat().st_mtime < 5  # not the program's 30 s

"""The user's own program as the sender, measured from outside.

The program runs in the sender namespace (argv list, never a shell), with where to
send in its environment (``UDPSEND_DST``, ``UDPSEND_DST6``, ``UDPSEND_PORT``), for a
duration or until it exits.  Nothing of ours runs in its process, so everything is
read from the kernel:

* EAGAIN: the delta of ``UdpSndbufErrors`` (+ ``Udp6SndbufErrors``) in the sender
  netns.  Exact per netns: it counts every UDP socket in that namespace (only the
  program's, since the namespace is the test's), and it also counts ENOBUFS from a
  dropping qdisc (an upper bound on EAGAIN where the link drops).
* sent: the delta of ``UdpOutDatagrams`` (+ ``Udp6OutDatagrams``); attempts = sent +
  EAGAIN, so ``eagain_rate`` keeps its meaning.
* occupancy: ``sk_wmem_alloc`` of every UDP socket in that netns, sampled every ``SAMPLE_S`` by
  a thread of ours: from sock_diag with ``sk_sndbuf`` beside it, or where the kernel has no UDP
  sock_diag, the ``tx_queue`` column of ``/proc/net/udp{,6}`` (the same figure, without the size).
* errno: the program's send calls by errno, traced in the kernel for the run (measure/sendtrace.py),
  cross-checked against UdpSndbufErrors; where tracing cannot load, None with the reason in
  ``errno_method``; ``blocked``: how long its send calls waited (asked with ``time_blocked=True``);
  busy_wait: the program's CPU time while the buffer was full (measure/backpressure.py).
* softnet deltas, received at the plugin's C drain, RcvbufErrors at the receiver.
* sock_wfree timing: the bpf probe filtered by the program's tgid; the timestamp
  estimate needs send times stamped into payloads, which a foreign program does not
  write, so with that backend ``wfree`` is empty and says why.

The process is started as ``sh -c 'echo $$ > CGROUP/cgroup.procs; exec "$@"' setpriv
--pdeathsig KILL -- [taskset -c CPU] nsenter --net=NETNS -- ARGV`` (util-linux): it
moves itself into a cgroup of its own (below the runner's own cgroup where v2 allows,
so that limits set on the runner hold for it too), enters the namespace and pins the CPU by exec
wrappers in the child, not by Python code between fork and exec (unsafe in a threaded
process), and the kernel kills it if the thread that started it dies.  It leads a
process group of its own (``start_new_session``), which gets SIGTERM at the end of
the duration.  Whatever it started (its children have no pdeathsig, and may leave
the group with setsid() or their parent with a double fork) is in its cgroup, which
is emptied at the end of every run, on Ctrl-C and at teardown (``host/cgroup.py``).
Without a writable cgroup v2 (a container), or if the program could not move into
its cgroup, the sender namespace is swept instead (``host/netns.py``), and the
result's checks say so.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_udpsend.errors import ConfigError, UdpsendError
from pytest_udpsend.host import cgroup, netns
from pytest_udpsend.host.sysctl import Sysctls
from pytest_udpsend.host.topology import Topology
from pytest_udpsend.measure import _engine, backpressure, counters, load, recovery, sendtrace
from pytest_udpsend.measure.diagnosis import diagnose
from pytest_udpsend.measure.probes import WfreeProbe
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.measure.sender import PORT, _receiver_socket, knobs_in_force, stop_loops
from pytest_udpsend.measure.shapes import BusyWaitDetail, Process, Series, Wfree
from pytest_udpsend.measure.wfree import not_measured

SAMPLE_S = 0.002  # tx_queue sampling period
BUCKET_MS = 10  # the series' bucket, as the built-in sender's
GRACE_S = 2.0  # after SIGTERM at the end of the duration, before SIGKILL
OUTPUT_CAP = 64 << 10  # bytes of stdout/stderr kept in the result
WRAPPERS = ("setpriv", "nsenter", "taskset")
OUTSIDE_REASON = (
    "sock_wfree of your own program is measured only by the bpf backend, not {backend} (the timestamp estimate "
    "needs the send time stamped into every payload, which your program does not write): use --udpsend-backend "
    "bpf on a kernel with kprobes (or the kernel lane)"
)


class ProgramError(UdpsendError):
    """The user's sender program is missing or failed; ``output`` holds what it printed."""

    def __init__(self, message: str, output: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.output = output or {}


def check_args(argv: object, duration: object, cpu: object, env: object) -> tuple[list[str], float | None]:
    """One sentence for each bad argument of ``sender_process.run()``."""
    if (
        isinstance(argv, (str, bytes))
        or not isinstance(argv, (list, tuple))
        or not argv
        or not all(isinstance(a, str) for a in argv)
    ):
        raise ConfigError(
            f"argv={argv!r}: must be a non-empty list of strings, e.g. ['./sender', '-n', '1000'] "
            "(never a shell string)"
        )
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0.05 <= duration <= 3600
    ):
        raise ConfigError(
            f"duration={duration!r}: must be a number of seconds from 0.05 to 3600, or None (until it exits)"
        )
    online = sorted(os.sched_getaffinity(0))
    if cpu is not None and (isinstance(cpu, bool) or cpu not in online):
        raise ConfigError(f"cpu={cpu!r}: not an available CPU (have {online})")
    if env is not None and (
        not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ConfigError(f"env={env!r}: must be a dict of strings to strings")
    for tool in WRAPPERS:
        if shutil.which(tool) is None:
            raise ConfigError(
                f"sender_process needs {tool} (util-linux) to start your program: apt-get install util-linux"
            )
    if shutil.which(argv[0]) is None:
        raise ProgramError(
            f"the sender command {argv[0]!r} was not found (not an executable file, nor on PATH): check argv[0]"
        )
    return list(argv), None if duration is None else float(duration)


# The first exec step: the program's first process moves itself into its cgroup, so that
# nothing of it runs outside (no preexec_fn: Python between fork and exec can deadlock).
# It tells how that went on a pipe given as its stdin ("ok", or the shell's error: dash
# redirects only fds 0-9, so the pipe cannot be a pass_fds number), puts /dev/null there
# for the program and goes on either way: a program that could not move in still runs, swept.
MOVE_IN = '{ echo $$ >"$0" && echo ok; } >&0 2>&0; exec </dev/null; exec "$@"'
REPORT_TIMEOUT_S = 10.0  # for the first exec step to say whether it moved in: it takes milliseconds


class Confinement:
    """Where the program and all it starts run, so that nothing of it outlives its run: a
    cgroup of its own, or, without a writable cgroup v2, the sender namespace (swept)."""

    def __init__(self, ns: netns.Namespace) -> None:
        self.ns = ns
        self.path: Path | None = None
        self.confined = False  # the program's first process is known to be in the cgroup
        self.why = ""  # why it is not: the namespace is swept instead
        self.killed = 0  # processes the program left running, killed at its end
        self._pipe: tuple[int, int] | None = None  # the first exec step reports on it (MOVE_IN)
        parent = cgroup.program_parent()
        if parent is None:
            self.why = "no cgroup v2 here"
            return
        try:
            self.path = cgroup.make(parent, "proc")
        except OSError as exc:
            self.why = f"no cgroup for the program (making one in {parent} failed: {exc.strerror})"

    def wrapper(self) -> list[str]:
        """The exec step that moves the program into its cgroup before anything of it runs
        (it reports on stdin())."""
        if self.path is None:
            return []
        self._pipe = os.pipe()
        return ["/bin/sh", "-c", MOVE_IN, str(self.path / "cgroup.procs")]

    def stdin(self) -> int:
        """The program's stdin: the report pipe for wrapper()'s first step, which then puts /dev/null there."""
        return subprocess.DEVNULL if self._pipe is None else self._pipe[1]

    def started(self) -> None:
        """Once the program is started: learn whether it moved into its cgroup."""
        if self._pipe is None:
            return
        os.close(self._pipe[1])
        report, deadline = b"", time.monotonic() + REPORT_TIMEOUT_S
        with os.fdopen(self._pipe[0], "rb") as pipe:
            self._pipe = None
            while time.monotonic() < deadline and select.select([pipe], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(pipe.fileno(), 4096)
                if not chunk:
                    break
                report += chunk
        text = report.decode(errors="replace").strip()
        self.confined = text == "ok"
        if not self.confined:  # the shell's own words: "PATH: 1: cannot create PATH: Directory nonexistent"
            reason = text.rsplit(": ", 1)[-1] if text else "it said nothing"
            self.why = f"the program could not be moved into its cgroup {self.path} ({reason})"

    def stop(self) -> None:
        """SIGKILL everything of the program that still runs and wait until it is gone."""
        if self.path is not None:  # also while not known to be in: whatever got in
            self.killed += len(cgroup.pids(self.path))
            cgroup.stop(self.path)
        if self.confined:
            return
        self.killed += len(netns.occupants_of(self.ns.path))
        left = netns.evict(self.ns.path)
        if left:
            raise netns.busy(self.ns.name, left)

    def close(self) -> None:
        """stop(), and remove the cgroup."""
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None
        self.stop()
        if self.path is not None:
            cgroup.remove(self.path)
            self.path = None

    def check(self) -> str:
        """What became of what the program left running, for the result's checks."""
        if not self.confined:
            return (
                f"{self.why or 'the program was never started'}: what the program left running was found by a "
                f"sweep of the sender namespace (which misses a process that left it): {self.killed} killed"
            )
        return f"processes the program left running at its end (in its own cgroup): {self.killed}, killed"


class TxQueueSampler:
    """``tx_queue`` (sk_wmem_alloc) of every UDP socket in one netns, sampled in a thread.

    The files are opened as /proc/thread-self/net/udp{,6} by a thread inside the
    namespace; an open file stays bound to it (as counters.SnmpReader does).
    """

    def __init__(self, topo: Topology) -> None:
        def open_files() -> list[IO[str]]:
            names = [n for n in ("udp", "udp6") if Path("/proc/thread-self/net", n).exists()]
            return [open(f"/proc/thread-self/net/{n}") for n in names]  # noqa: SIM115 (closed in close())

        self._files: list[IO[str]] = topo.sender.run(open_files)
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (monotonic s, largest tx_queue of the netns's sockets)
        self._thread = threading.Thread(target=self._loop, name="udpsend-txq", daemon=True)
        self.cpu: backpressure.Clock | None = None  # the program's CPU time and whether it sleeps, set once it runs
        self.full: list[backpressure.Sample] = []  # (monotonic ns, a socket's buffer full, CPU ns, asleep)
        self.unavailable = ""  # why busy_wait cannot be measured
        self.method = backpressure.PROC_BUSY_METHOD  # or the cgroup's, once the program is known to be in it
        self._diag: backpressure.SockDiag | None = None
        try:
            self._diag = topo.sender.run(backpressure.SockDiag)
            self._diag.read()
        except OSError as exc:
            self._no_diag(exc)

    def _no_diag(self, exc: OSError) -> None:
        self.unavailable = (
            f"not measured: this kernel gives no sk_sndbuf of UDP sockets (sock_diag: {exc.strerror}; "
            "CONFIG_INET_UDP_DIAG), so a full buffer cannot be told from outside"
        )
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def read(self) -> int:
        largest = 0
        for fh in self._files:
            fh.seek(0)
            for line in fh.read().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 4:
                    largest = max(largest, int(cols[4].split(":")[0], 16))
        return largest

    def _loop(self) -> None:
        with contextlib.suppress(OSError):  # a sampler starved by the scenario's CPU hogs would see only a few instants
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # this thread only; ~50 us per sample
        while not self._stop.wait(SAMPLE_S):
            if self._diag is None:
                self.samples.append((time.monotonic(), self.read()))
                continue
            try:
                socks = self._diag.read()
            except OSError as exc:
                self._no_diag(exc)
                continue
            cpu = self.cpu() if self.cpu is not None else None
            self.samples.append((time.monotonic(), max((w for w, _ in socks), default=0)))
            if cpu is not None:
                self.full.append((time.monotonic_ns(), any(w >= size for w, size in socks), *cpu))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        self.stop()
        for fh in self._files:
            fh.close()
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def busy_wait(self) -> tuple[float | None, BusyWaitDetail]:
        """busy_wait and what it was computed from (measure/backpressure.py)."""
        if self.unavailable:
            return None, {"unavailable": self.unavailable}
        found = backpressure.detail(*backpressure.full_time(self.full), self.method)
        found["samples"], found["full_samples"] = len(self.full), sum(1 for s in self.full if s[1])
        return backpressure.busy_wait(self.full), found


class _Drain:
    """The plugin's C drain in the receiver netns, in rounds of ROUND_S until told to finish.

    A round ends once its deadline passed and nothing arrived for 100 ms; after
    ``finish()`` one last round drains what is still in flight.  Ctrl-C sets the stop byte.
    """

    ROUND_S = 0.2

    def __init__(self, rx: socket.socket, cpu: int | None) -> None:
        self._rx, self._cpu = rx, cpu
        self.stop = bytearray(1)
        self._done = threading.Event()
        self.received = 0
        self.bytes = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="udpsend-rx", daemon=True)

    def _run(self) -> None:
        try:
            if self._cpu is not None:
                os.sched_setaffinity(0, {self._cpu})
            last = False
            while not self.stop[0]:
                last = self._done.is_set()
                until = time.monotonic_ns() + (0 if last else int(self.ROUND_S * 1e9))
                out = _engine.recv_loop(self._rx.fileno(), until, 100, bytearray(), False, self.stop)
                self.received += out["received"]
                self.bytes += out["bytes"]
                if last:
                    break
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self._done.set()
        self.thread.join()
        if self.error:
            raise self.error


def _environment(topo: Topology, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(UDPSEND_DST=topo.receiver.addr, UDPSEND_PORT=str(PORT))
    if topo.receiver.addr6:
        env["UDPSEND_DST6"] = topo.receiver.addr6
    env.update(extra or {})
    return env


def _command(topo: Topology, argv: list[str], cpu: int | None, confine: Confinement) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [
        *confine.wrapper(),
        "setpriv",
        "--pdeathsig",
        "KILL",
        "--",
        *pin,
        "nsenter",
        f"--net={topo.sender.ns.path}",
        "--",
        *argv,
    ]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the program's whole process group and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _end(proc: subprocess.Popen[bytes], duration: float | None, started: float) -> bool:
    """Wait for the program to exit, or for ``duration``; then SIGTERM its group, SIGKILL after a grace.

    True if it exited by itself."""
    # Always with a timeout: Popen.wait() then polls, and a Ctrl-C that another thread received is seen
    while duration is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
            return True
    try:
        proc.wait(max(0.0, started + duration - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
    return False


def _tail(path: Path) -> str:
    data = path.read_bytes()
    return data[-OUTPUT_CAP:].decode(errors="replace")


class ProcessRunner:
    """Runs and measures one program; keeps the running process for teardown."""

    def __init__(
        self,
        topo: Topology,
        sysctls: Sysctls,
        probe: WfreeProbe | None,
        pressure: load.PressureSpec | None,
        receiver_cpu: int | None = None,
    ) -> None:
        self.topo, self.sysctls, self.probe, self.pressure = topo, sysctls, probe, pressure
        self.receiver_cpu = receiver_cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.confine: Confinement | None = None
        self.trace: sendtrace.SendTrace | None = None
        self.time_blocked = False
        self._traced: sendtrace.Traced | str = ""  # what tracing counted, or why it could not
        self.watch: recovery.ProgramWatch | None = None  # a cpu_pressure schedule: started with the program

    def run(
        self,
        argv: list[str],
        duration: float | None,
        cpu: int | None,
        env: Mapping[str, str] | None,
        time_blocked: bool = False,
    ) -> SendResult:
        self.time_blocked = time_blocked
        if self.probe is not None and self.probe.backend == "bpf":
            self.probe.prepare(self.sysctls)  # compile outside the measured interval
        rx = _receiver_socket(self.topo, False, False)
        rx6 = _receiver_socket(self.topo, True, False) if self.topo.receiver.addr6 else None
        snd, rcv = counters.SnmpReader(self.topo.sender.ns), counters.SnmpReader(self.topo.receiver.ns)
        txq = TxQueueSampler(self.topo)
        self.confine = Confinement(self.topo.sender.ns)
        try:
            with tempfile.TemporaryDirectory(prefix="udpsend-proc-") as tmp, contextlib.ExitStack() as stack:
                self.watch = None
                if self.pressure is not None:  # with a schedule: the hogs cycled, the program's sends sampled
                    cycle = stack.enter_context(
                        load.cycled(self.pressure, stack.enter_context(load.pressure(self.pressure)))
                    )
                    self.watch = stack.enter_context(recovery.watching(cycle, self.topo.sender.ns))
                result = self._measure(
                    argv, duration, cpu, env, Path(tmp), [rx] + ([rx6] if rx6 else []), snd, rcv, txq
                )
                if self.watch is not None:
                    self.watch.finish(result, txq.samples[0][0] if txq.samples else 0.0)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that ended the run is the one to report
                self._release()
            raise
        finally:
            txq.close()
            for sock in (rx, rx6):
                if sock is not None:
                    sock.close()
            snd.close()
            rcv.close()
        self._release()
        return result

    def _release(self) -> None:
        """Nothing of the program left: its cgroup emptied and removed (and the send tracing detached)."""
        trace, self.trace = self.trace, None
        if trace is not None:
            trace.close()
        confine, self.confine = self.confine, None
        if confine is not None:
            confine.close()

    def _measure(
        self,
        argv: list[str],
        duration: float | None,
        cpu: int | None,
        env: Mapping[str, str] | None,
        tmp: Path,
        rxs: list[socket.socket],
        snd: counters.SnmpReader,
        rcv: counters.SnmpReader,
        txq: TxQueueSampler,
    ) -> SendResult:
        assert self.confine is not None
        self._start_trace(self.confine.path)  # compiled and attached before anything is timed
        drains = [_Drain(rx, self.receiver_cpu) for rx in rxs]
        for d in drains:
            d.thread.start()
        out_path, err_path = tmp / "stdout", tmp / "stderr"
        all_irqs = [irq for irqs in self.topo.irqs.values() for irq in irqs]
        irq0 = counters.read_interrupts(all_irqs)
        soft0, snd0, rcv0 = counters.read_softnet(), snd.read(), rcv.read()
        txq.start()
        wall0, mono0 = time.time(), time.monotonic()
        if self.watch is not None:
            self.watch.start()  # the schedule keeps time with the program, not with the set-up before it
        exited = False
        assert self.confine is not None
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                self.proc = subprocess.Popen(
                    _command(self.topo, argv, cpu, self.confine),
                    stdin=self.confine.stdin(),
                    stdout=out,
                    stderr=err,
                    env=_environment(self.topo, env),
                    start_new_session=True,
                )
            if self.probe is not None and self.probe.backend == "bpf":
                self.probe.begin(-1, self.proc.pid)  # armed right after exec starts: the wrappers take milliseconds
            if self.trace is not None and self.confine.path is None:
                self.trace.follow(self.proc.pid)
            self.confine.started()
            if self.trace is not None and self.confine.path is not None and not self.confine.confined:
                self.trace.follow(self.proc.pid)  # it runs outside its cgroup: counted from now
            if self.confine.confined and self.confine.path is not None:
                txq.cpu, txq.method = backpressure.cgroup_cpu(self.confine.path), backpressure.CGROUP_BUSY_METHOD
            else:
                txq.cpu = backpressure.proc_cpu(self.proc.pid)
            exited = _end(self.proc, duration, mono0)
            elapsed = time.monotonic() - mono0
            self.confine.stop()  # what it left running (setsid, double forks) ends with it
            if self.trace is not None:
                self._traced = self.trace.stop()
            txq.stop()
            for d in drains:
                d.finish()
        except BaseException:
            if self.proc is not None:
                kill_group(self.proc)
                self.proc = None  # reaped: its pid may be another's by teardown
            for d in drains:
                stop_loops(d.stop, (d.thread,))
            if self.probe is not None and self.probe.backend == "bpf":
                with contextlib.suppress(Exception):
                    self.probe.end([], 0, 0)
            raise
        returncode = self.proc.returncode
        self.proc = None
        soft1, snd1, rcv1 = counters.read_softnet(), snd.read(), rcv.read()
        irqs = counters.irq_delta(self.topo.irqs, irq0, counters.read_interrupts(all_irqs))
        stdout, stderr = _tail(out_path), _tail(err_path)
        if exited and returncode != 0:
            last = stderr.strip().splitlines()[-1:] or ["no stderr"]
            raise ProgramError(
                f"the sender command {argv[0]!r} exited with code {returncode} (last stderr line: {last[0]!r}); "
                "its full output is in the test's captured stdout",
                {"argv": argv, "stdout": stdout, "stderr": stderr},
            )
        snmp = counters.snmp_delta(snd0, snd1)
        softnet = counters.softnet_delta(soft0, soft1)
        result = self._result(
            argv,
            duration,
            cpu,
            snmp,
            counters.snmp_delta(rcv0, rcv1),
            softnet,
            txq,
            drains,
            elapsed,
            (wall0, time.time()),
            {"argv": argv, "returncode": returncode, "exited": exited, "stdout": stdout, "stderr": stderr},
        )
        result.irqs = irqs
        result.checks.append(self.confine.check())
        return result

    def _result(
        self,
        argv: list[str],
        duration: float | None,
        cpu: int | None,
        snmp: dict[str, int],
        rcv_snmp: dict[str, int],
        softnet: dict[str, dict[str, int]],
        txq: TxQueueSampler,
        drains: list[_Drain],
        elapsed: float,
        wall: tuple[float, float],
        process: Process,
    ) -> SendResult:
        eagain = snmp.get("UdpSndbufErrors", 0) + snmp.get("Udp6SndbufErrors", 0)
        sent = snmp.get("UdpOutDatagrams", 0) + snmp.get("Udp6OutDatagrams", 0)
        received = sum(d.received for d in drains)
        occupancy = [v for _, v in txq.samples]
        wfree = self._wfree(sent)
        busy, busy_detail = txq.busy_wait()
        result = SendResult(
            attempts=sent + eagain,
            sent=sent,
            eagain=eagain,
            eagain_rate=eagain / (sent + eagain) if sent + eagain else 0.0,
            pps=sent / elapsed if elapsed else 0.0,
            duration_s=round(elapsed, 4),
            payload=round(sum(d.bytes for d in drains) / received) if received else 0,
            time_squeeze=sum(c["time_squeeze"] for c in softnet.values()),
            softnet=softnet,
            snmp=snmp,
            wmem={
                "max_bytes": max(occupancy, default=0),
                "mean_bytes": round(sum(occupancy) / len(occupancy), 1) if occupancy else 0.0,
                "samples": len(occupancy),
            },  # tx_queue of /proc/net/udp{,6} in the sender netns
            wfree=wfree,
            received=received,
            rcvbuf_errors=rcv_snmp.get("UdpRcvbufErrors", 0) + rcv_snmp.get("Udp6RcvbufErrors", 0),
            kernel=os.uname().release,
            series=_series(txq.samples),
            topology=self.topo.describe(),
            params={
                "argv": argv,
                "duration": duration,
                "cpu": cpu,
                "receiver_cpu": self.receiver_cpu,
                "external": True,
            },
            started=wall[0],
            finished=wall[1],
            segments=sent,
            process=process,
            errno=self._traced.errno if isinstance(self._traced, sendtrace.Traced) else None,
            errno_method=self._traced.method if isinstance(self._traced, sendtrace.Traced) else self._traced,
            blocked=self._traced.blocked
            if isinstance(self._traced, sendtrace.Traced)
            else {"unavailable": self._untraced()},
            busy_wait=busy,
            busy_wait_detail=busy_detail,
        )
        result.checks = [
            f"EAGAIN {eagain} = UdpSndbufErrors delta of the sender netns: exact per netns (every UDP socket there; "
            "also counts ENOBUFS from a dropping qdisc)",
            f"received {received} + RcvbufErrors {result.rcvbuf_errors} <= sent {sent}: "
            f"{'ok' if received + result.rcvbuf_errors <= sent else 'MISMATCH'}",
        ]
        if isinstance(self._traced, sendtrace.Traced):
            result.checks += sendtrace.cross_checks(self._traced, eagain, sent)
        result.sysctls = knobs_in_force({k: v for k, v in self.sysctls.in_force.items() if ":" in k})
        result.pressure = self.pressure.describe() if self.pressure else ""
        result.diagnosis = diagnose(result)
        return result

    def _untraced(self) -> str:
        """Why time blocked was not measured, where tracing could not load."""
        return "not measured: " + str(self._traced).rpartition("; ")[2]

    def _start_trace(self, cgroup_path: Path | None) -> None:
        """Attach the send tracing for this run, filtered to the program's cgroup; where it cannot
        load (not root, no BTF, no bcc), the run goes on and the result says why."""
        self.trace = sendtrace.SendTrace(self.time_blocked)
        try:
            self.trace.start(cgroup_path)
        except Exception as exc:  # PrivilegeError says why; anything else is named: the run goes on either way
            self.trace.close()
            self.trace = None
            self._traced = (
                f"{backpressure.PROGRAM_ERRNO_REASON}; tracing the program's send calls could not load: {exc}"
            )

    def _wfree(self, sent: int) -> Wfree:
        if self.probe is None:
            return {}
        if self.probe.backend != "bpf":  # not a count of 0: a bound on it must fail as "not measured"
            return not_measured(self.probe.backend, OUTSIDE_REASON.format(backend=self.probe.backend))
        wfree = self.probe.end([], 0, sent)
        wfree.setdefault("reason", self.probe.reason)
        return wfree

    def kill(self) -> None:
        """Teardown: kill a program still running (an interrupted run) and all it started."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None
        self._release()


def _series(samples: Sequence[tuple[float, int]]) -> Series:
    """Occupancy per bucket (the program's attempts per bucket are not visible from outside)."""
    if not samples:
        return {"bucket_ms": BUCKET_MS, "outq_max": []}
    t0 = samples[0][0]
    buckets: dict[int, int] = {}
    for t, v in samples:
        b = int((t - t0) * 1000 // BUCKET_MS)
        buckets[b] = max(buckets.get(b, 0), v)
    return {"bucket_ms": BUCKET_MS, "outq_max": [buckets.get(i, 0) for i in range(max(buckets) + 1)]}


class SenderProcess:
    """The ``sender_process`` fixture's value: ``run(argv, duration=None, cpu=None, env=None, time_blocked=False) -> SendResult``.

    Each run takes the host lock, applies the ``cpu_pressure`` marker, and is recorded
    like ``udp_sender``'s runs (assertion markers, ``--udpsend-json``, the baseline).
    """

    def __init__(
        self,
        topo: Topology,
        sysctls: Sysctls,
        lock: Callable[[], None],
        probe: Callable[[], WfreeProbe | None],
        pressure: load.PressureSpec | None,
        results: list[SendResult],
    ) -> None:
        self.topology = topo
        self._sysctls, self._lock, self._probe, self._pressure = sysctls, lock, probe, pressure
        self.results = results
        self._runner: ProcessRunner | None = None

    def run(
        self,
        argv: Sequence[str],
        duration: float | None = None,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
        time_blocked: bool = False,
    ) -> SendResult:
        """Run and measure ``argv``; ``time_blocked=True`` also times each send call (``SendResult.blocked``)."""
        args, seconds = check_args(argv, duration, cpu, env)
        if not isinstance(time_blocked, bool):
            raise ConfigError(f"time_blocked={time_blocked!r}: must be True or False")
        self._lock()
        self._runner = ProcessRunner(self.topology, self._sysctls, self._probe(), self._pressure)
        try:
            result = self._runner.run(args, seconds, cpu, env, time_blocked)
        except ProgramError as exc:
            _show_output(exc.output)
            raise
        self.results.append(result)
        _show_output(result.process)
        return result

    def close(self) -> None:
        if self._runner is not None:
            self._runner.kill()


def _show_output(process: Mapping[str, Any]) -> None:
    """Print the program's output (a result's ``process``, or a ProgramError's ``output``): pytest captures it
    and shows it when the test fails."""
    if process.get("stdout"):
        print(f"--- stdout of {process['argv'][0]} ---\n{process['stdout']}", end="")
    if process.get("stderr"):
        print(f"--- stderr of {process['argv'][0]} ---\n{process['stderr']}", end="")

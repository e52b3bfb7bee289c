"""``udpsend run``: the scenario's options (as the markers would describe it), the progress line, the result table.

``udpsend sweep`` takes the same scenario options (command/sweep.py adds its grid).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_udpsend.errors import ConfigError, UdpsendError
from pytest_udpsend.frontend import options
from pytest_udpsend.host import cpus, topology
from pytest_udpsend.measure import load
from pytest_udpsend.measure.params import make_params

if TYPE_CHECKING:  # the measuring modules load when a run starts, not for --help
    from pytest_udpsend.frontend.session import TestContext
    from pytest_udpsend.host.topology import Topology
    from pytest_udpsend.measure.probes import WfreeProbe
    from pytest_udpsend.measure.result import SendResult


def _sysctl_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=VALUE, e.g. net.core.netdev_budget=8")
    return name.strip(), value.strip()


def _cpu_list(text: str) -> list[int]:
    """The marker's forms: a CPU list as taskset -c takes it ("1-3,5", "1-1") or a sysfs hex mask ("2")."""
    try:
        return list(cpus.parse(text, "CPUS"))
    except UdpsendError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pressure(text: str) -> tuple[list[int], int]:
    cpu_text, _, workers = text.partition(":")
    try:
        count = int(workers or 2)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: CPUS[:WORKERS], e.g. 2:2 (mask 2 = CPU 1, two hogs) or 1-1:2"
        ) from None
    return _cpu_list(cpu_text), count


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The scenario, as the markers would describe it."""
    g = p.add_argument_group("topology (the topology marker)")
    g.add_argument(
        "--rps-cpus",
        type=_cpu_list,
        metavar="CPUS",
        help="RPS CPUs of the receiver veth: a hex mask as sysfs takes it (2 = CPU 1, 1,00000000 = CPU 32) "
        "or a CPU list as taskset -c takes it (1-3,5; 1-1 = CPU 1)",
    )
    g.add_argument("--qdisc", help='root qdisc of the sender veth, e.g. "tbf rate 200mbit burst 32kb latency 50ms"')
    g.add_argument("--gro", action="store_true", help="GRO on the receiver veth, with UDP on its NAPI path")
    g.add_argument("--threaded-napi", action="store_true", help="threaded NAPI on the receiver veth (needs --gro)")
    g.add_argument(
        "--napi-cpus", type=_cpu_list, metavar="CPUS", help="pin the threaded-NAPI kthread (needs --threaded-napi)"
    )
    g.add_argument("--mtu", type=int, default=1500)
    g = p.add_argument_group("host (the sysctl and cpu_pressure markers)")
    g.add_argument(
        "--sysctl",
        type=_sysctl_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a sysctl for the run (repeatable); restored afterwards",
    )
    g.add_argument(
        "--cpu-pressure",
        type=_pressure,
        metavar="CPUS[:WORKERS]",
        help="CPU hogs during the run: CPUS as for --rps-cpus, e.g. 2:2 (two hogs on CPU 1)",
    )
    g = p.add_argument_group("sender (the udpsend marker)")
    g.add_argument("--duration", type=float, default=2.0, help="seconds (default 2.0)")
    g.add_argument("--payload", type=int, default=1400, help="bytes per datagram (default 1400)")
    g.add_argument("--sndbuf", type=int, help="SO_SNDBUF to request (default: the kernel's)")
    g.add_argument("--force-sndbuf", action="store_true", help="use SO_SNDBUFFORCE (not clamped by wmem_max)")
    g.add_argument("--rate", type=float, help="packets/s (default: as fast as possible)")
    g.add_argument("--cpu", type=int, help="CPU to pin the sender to")
    g.add_argument("--receiver-cpu", type=int, help="CPU to pin the draining receiver to")
    g.add_argument("--ipv6", action="store_true")
    g.add_argument(
        "--mode", choices=("send", "sendto", "sendmmsg", "gso"), default="send", help="send pattern (default send)"
    )
    g.add_argument("--batch", type=int, default=32, help="messages per sendmmsg() call (--mode sendmmsg; default 32)")
    g.add_argument("--gso-size", type=int, help="UDP_SEGMENT bytes per wire segment (--mode gso)")
    g.add_argument("--flows", type=int, default=1, help="sockets per sender thread, round-robin (default 1)")
    g.add_argument("--threads", type=int, default=1, help="pinned sender threads, each with its own socket(s)")
    g.add_argument("--wfree", action="store_true", help="measure sock_wfree timing with the chosen backend")
    g = p.add_argument_group(
        "replay (the udpsend marker's replay=): a capture's UDP datagrams, sizes and gaps, sent once"
    )
    g.add_argument(
        "--replay",
        metavar="PATH",
        help="a pcap or pcapng capture, or a built-in shape (shape:telemetry, "
        "shape:media, shape:dns); the capture sets what --duration and --payload would",
    )
    g.add_argument(
        "--speed", type=float, default=1.0, help="scale the capture's clock (2: twice as fast; 0: as fast as possible)"
    )
    g.add_argument("--loop", type=int, default=1, help="passes through the capture (default 1)")
    g.add_argument(
        "--replay-filter",
        metavar="WORDS",
        help='datagrams to keep, e.g. "dst=10.0.0.2 dport=53" (src, dst, host, sport, dport, port)',
    )
    g.add_argument(
        "--replay-mtu",
        type=int,
        default=1500,
        help="the capture link's MTU: a larger unfragmented UDP record is a GSO/GRO super-packet (default 1500)",
    )
    g.add_argument(
        "--exec",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS",
        dest="exec_argv",
        help="run your own program as the sender instead (last option; destination in UDPSEND_DST, "
        "UDPSEND_DST6, UDPSEND_PORT), for --duration or until it exits",
    )
    options.add_options(p.add_argument, [options.BACKEND, options.JSON, options.REPEAT], short=True)


class Progress:
    """A progress line on stderr while a run measures (rewritten in place on a terminal)."""

    def __init__(self, total_s: float) -> None:
        self.total = total_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        start, tty = time.monotonic(), sys.stderr.isatty()
        step = 0.2 if tty else 1.0
        if not tty:
            sys.stderr.write(f"udpsend: measuring for {self.total:.1f} s\n")
        while not self._stop.wait(step):
            done = min(time.monotonic() - start, self.total)
            line = f"udpsend: measuring {done:4.1f}/{self.total:.1f} s"
            sys.stderr.write(("\r" + line) if tty else (line + "\n"))
            sys.stderr.flush()
        if tty:
            sys.stderr.write("\r" + " " * 40 + "\r")

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cmd_run(args: argparse.Namespace) -> int:
    from pytest_udpsend.frontend.session import SessionOptions, standalone
    from pytest_udpsend.host.sysctl import format_value
    from pytest_udpsend.measure.sender import UdpSender
    from pytest_udpsend.results import store

    spec = topology.make_spec(
        rps_cpus=args.rps_cpus,
        qdisc=args.qdisc,
        gro=args.gro,
        threaded_napi=args.threaded_napi,
        napi_cpus=args.napi_cpus,
        mtu=args.mtu,
        ipv6=args.ipv6,
    )
    pressure = load.make_spec(*args.cpu_pressure) if args.cpu_pressure else None
    params = make_params(
        duration=args.duration,
        payload=args.payload,
        sndbuf=args.sndbuf,
        force_sndbuf=args.force_sndbuf,
        rate=args.rate,
        cpu=args.cpu,
        ipv6=args.ipv6,
        receiver_cpu=args.receiver_cpu,
        mode=args.mode,
        batch=args.batch,
        gso_size=args.gso_size,
        flows=args.flows,
        threads=args.threads,
        **replay_args(args),
    )
    options = SessionOptions(backend=args.udpsend_backend, repeat=args.udpsend_repeat)
    with standalone(options, {k: format_value(v) for k, v in args.sysctl}) as ctx:
        session = ctx.session
        topo = topology.build(spec, ctx.undo, session.subnets, hint="cli")
        ctx.apply_marked_to(topo)
        probe: Callable[[], WfreeProbe | None] = session.probe if args.wfree else (lambda: None)
        sender = UdpSender(topo, ctx.sysctls, ctx.exclusive, probe, pressure)
        program = _program(args, topo, ctx, probe, pressure, sender.results)
        samples = []
        for i in range(args.udpsend_repeat):
            with (
                Progress(params.duration) if params.replay is None else contextlib.nullcontext()
            ):  # a replay: its capture's time
                samples.append(program() if program else sender.run(**params.as_dict()))
            print(("" if i == 0 else "\n") + samples[-1].summary())
    if args.udpsend_json:
        env = store.environment(session.backend_choice()[0])
        store.write(
            args.udpsend_json,
            store.document(env, {"udpsend run": {"outcome": "passed", "samples": [s.to_dict() for s in samples]}}),
        )
        print(f"saved {args.udpsend_json}")
    return 0


def replay_args(args: argparse.Namespace) -> dict[str, Any]:
    """The replay options as make_params takes them; refused beside --exec, whose program sends instead."""
    if args.replay is not None and getattr(args, "exec_argv", None) is not None:
        raise ConfigError(
            "--replay sends a capture with the plugin's sender, --exec runs your program as the sender: use one of them"
        )
    return {
        "replay": args.replay,
        "speed": args.speed,
        "loop": args.loop,
        "replay_filter": args.replay_filter,
        "replay_mtu": args.replay_mtu,
    }


def _program(
    args: argparse.Namespace,
    topo: Topology,
    ctx: TestContext,
    probe: Callable[[], WfreeProbe | None],
    pressure: load.PressureSpec | None,
    results: list[SendResult],
) -> Callable[[], SendResult] | None:
    """``--exec -- CMD ARGS``: one run of the user's program, killed on exit of the command."""
    if args.exec_argv is None:
        return None
    argv = list(args.exec_argv)
    from pytest_udpsend.measure.external import SenderProcess

    proc = SenderProcess(topo, ctx.sysctls, ctx.exclusive, probe, pressure, results)
    ctx.undo.push("kill the sender process", proc.close)
    return lambda: proc.run(argv, duration=args.duration, cpu=args.cpu)

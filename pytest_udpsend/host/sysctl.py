"""Reading and writing sysctls, in the initial namespace or inside one we made.

Scope is found out, not assumed: a ``net.*`` knob is *per-namespace* if it exists and
is writable inside a fresh child namespace, *global* if it exists only in the initial
one or is read-only in a child (6.11+ shows ``net.core.{r,w}mem_*`` there, read-only,
holding the global value).  Every other knob (``kernel.*``, ``vm.*``, ...) is global: a
network namespace shows the host's own there.  Global changes are journaled before they are made and
are taken under the host lock, so one xdist worker at a time changes them.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Union

from pytest_udpsend.errors import PrivilegeError, SysctlError
from pytest_udpsend.host import netns as netns_mod
from pytest_udpsend.host.journal import Journal
from pytest_udpsend.host.undo import UndoStack

Scope = Literal["global", "netns"]
Value = Union[int, str, bool, Sequence[int]]  # noqa: UP007 (a runtime alias)
_NAME = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+$")
PROC_SYS = Path("/proc/sys")


def sysctl_path(name: str) -> Path:
    """``net.core.netdev_budget`` -> /proc/sys/net/core/netdev_budget (names are checked)."""
    if not _NAME.match(name) or ".." in name:
        raise SysctlError(f"{name!r} is not a sysctl name; use dotted names such as 'net.core.netdev_budget'.")
    return PROC_SYS.joinpath(*name.split("."))


# Knobs every kernel with networking has, in the initial network namespace only.
_INITIAL_NETNS_ONLY = ("netdev_budget", "netdev_max_backlog", "dev_weight")
OWN_NETNS = (
    "this process runs in a network namespace of its own (a container?), and global knobs need the host's "
    "network namespace (run the container with --network host / on the host)"
)


@functools.cache
def outside_initial_netns() -> bool:
    """True in a network namespace other than the host's (a container with its own network).

    Comparing /proc/self/ns/net with /proc/1/ns/net cannot tell: in a container pid 1
    shares it.  The kernel can: /proc/sys shows the caller's namespace, and knobs such as
    net.core.netdev_budget exist only in the initial one.
    """
    core = PROC_SYS / "net" / "core"
    return core.is_dir() and not any((core / knob).exists() for knob in _INITIAL_NETNS_ONLY)


def format_value(value: Value) -> str:
    """The text to write.  The kernel reads a value up to a control character and drops the rest
    without a word, and takes an empty write as a no-op: both are refused here.  Tabs are how it
    prints a knob that holds several numbers (tcp_rmem: ``4096\t131072\t6291456``), so what
    ``get`` returned can be set again: the numbers of such a value are joined by single spaces."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise SysctlError(f"sysctl value {value!r} is empty: give the value to write, e.g. 8.")
        if bad := next((c for c in value if not c.isprintable() and c != "\t"), None):
            raise SysctlError(
                f"sysctl value {value!r} has a control character ({bad!r}): the kernel would keep what comes "
                "before it and drop the rest silently; give one value, or a list of ints for a knob that holds several."
            )
        fields = value.split()
        return " ".join(fields) if all(_INT.match(f) for f in fields) else value  # a string knob takes it as given
    if isinstance(value, Sequence) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return " ".join(str(v) for v in value)
    raise SysctlError(f"sysctl value {value!r} must be an int, a string or a non-empty list of ints.")


_INT = re.compile(r"^-?\d+$")


def check_fields(name: str, text: str, current: str) -> None:
    """A knob that holds numbers takes as many as it holds: the kernel keeps the first ones of a longer
    value and leaves the rest of a shorter one as they were, without an error either way."""
    held, given = current.split(), text.split()
    if held and all(_INT.match(f) for f in held) and len(given) != len(held):
        numbers = "number" if len(held) == 1 else "numbers"
        raise SysctlError(
            f"{name} holds {len(held)} {numbers} ({normalize(current)}) but {text!r} has {len(given)}: the kernel "
            f"would take only part of it silently; give exactly {len(held)} (a list of ints for several)."
        )


def normalize(text: str) -> str:
    """Values as the kernel prints them, whitespace folded, for comparison."""
    return " ".join(text.split())


def _read_here(name: str) -> str:
    return sysctl_path(name).read_text().strip()


def _write_here(name: str, value: str, where: str) -> None:
    path = sysctl_path(name)
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except FileNotFoundError:
        raise SysctlError(
            f"unknown sysctl {name} ({where}): no {path} on this kernel; check the name with 'sysctl -a'."
        ) from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SysctlError(
                f"{name}={value!r} was refused by the kernel (EINVAL, {where}): the value is out of range "
                "or malformed for this kernel; choose a value the kernel accepts."
            ) from None
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise SysctlError(
                f"{name} is read-only {where}: it cannot be set there; on 6.11+ net.core.[rw]mem_* are "
                "shared with the initial namespace: set them without netns=."
            ) from None
        raise SysctlError(f"writing {name}={value!r} ({where}) failed: {exc.strerror}.") from None


class SysctlHost:
    """Session-wide knowledge: scope of each knob, the journal, reading/writing by scope."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._scope: dict[str, Scope] = {}

    def scope(self, name: str) -> Scope:
        if name not in self._scope:
            self._scope[name] = self._classify(name)
        return self._scope[name]

    def _classify(self, name: str) -> Scope:
        path = sysctl_path(name)
        in_init = path.exists()
        if not name.startswith("net."):  # only the network stack is per network namespace
            if in_init:
                return "global"
            raise SysctlError(
                f"unknown sysctl {name}: no {path} on this kernel ({os.uname().release}); "
                "check the name with 'sysctl -a'."
            )
        ((probe, _),) = netns_mod.create(["probe"])
        try:
            in_child = probe.run(lambda: path.exists() and os.access(path, os.W_OK))
        finally:
            netns_mod.remove(probe)
        if in_child:
            return "netns"
        if name.startswith("net.") and outside_initial_netns():
            what = "is a global knob" if in_init else "is a global knob or unknown"
            raise PrivilegeError(f"{name} {what}: {OWN_NETNS}.")
        if in_init:
            return "global"
        raise SysctlError(
            f"unknown sysctl {name}: /proc/sys/{name.replace('.', '/')} exists on this kernel "
            f"({os.uname().release}) neither globally nor per namespace; check the name with 'sysctl -a'."
        )

    def read(self, name: str, ns: netns_mod.Namespace | None = None) -> str:
        if ns is None:
            self.scope(name)  # unknown names fail with the clear message
            return _read_here(name)
        try:
            return ns.run(lambda: _read_here(name))
        except FileNotFoundError:
            raise SysctlError(
                f"sysctl {name} does not exist inside namespace {ns.name}: it is global "
                "(initial namespace only); read it without netns=."
            ) from None

    def write(self, name: str, value: str, ns: netns_mod.Namespace | None = None) -> None:
        if ns is None:
            _write_here(name, value, "in the initial namespace")
        else:
            ns.run(lambda: _write_here(name, value, f"in namespace {ns.name}"))


class Sysctls:
    """The ``sysctl`` fixture: set/get by dotted name; every change undone at teardown.

    ``lock`` is called before the first global change: it takes the host lock
    (and registers its release) so one xdist worker at a time changes globals.
    """

    def __init__(
        self,
        host: SysctlHost,
        undo: UndoStack,
        resolve: Callable[[object], netns_mod.Namespace],
        lock: Callable[[], None],
    ) -> None:
        self._host = host
        self._undo = undo
        self._resolve = resolve
        self._lock = lock
        self._touched: set[tuple[str, str]] = set()
        self.in_force: dict[str, str] = {}

    def get(self, name: str, netns: object = None) -> str:
        ns = None if netns is None else self._resolve(netns)
        return self._host.read(name, ns)

    def set(self, name: str, value: Value, netns: object = None) -> str:
        """Write ``value``; returns the previous value.  Global knobs need ``netns=None``."""
        text = format_value(value)
        ns = None if netns is None else self._resolve(netns)
        scope = self._host.scope(name)
        if ns is None and scope == "netns":
            raise SysctlError(
                f"{name} is per-namespace: setting it without netns= would change the host's own "
                "network; pass netns= (a namespace of this test, e.g. veth.sender)."
            )
        if ns is not None and scope == "global":
            raise SysctlError(
                f"{name} is global (the initial namespace only, or read-only inside {ns.name}); "
                "call sysctl.set(name, value) without netns=."
            )
        key = (name, ns.name if ns else "")
        if ns is None:
            self._lock()
        previous = self._host.read(name, ns)
        check_fields(name, text, previous)
        if key not in self._touched:
            self._touched.add(key)
            if ns is None:
                self.journal_and_undo(name, previous)
            else:
                self._undo.push(f"sysctl {name} in {ns.name}", lambda: self._host.write(name, previous, ns))
        self._host.write(name, text, ns)
        self.in_force[name if ns is None else f"{ns.name}:{name}"] = normalize(self._host.read(name, ns))
        return previous

    def journal_and_undo(self, name: str, original: str) -> None:
        journal = self._host.journal
        journal.record(name, original)

        def restore() -> None:
            self._host.write(name, original)
            journal.forget(name)

        self._undo.push(f"global sysctl {name}={original}", restore)

"""One loader for this package's tracepoint eBPF programs (tpprobe, sendtrace, record): bcc without
kernel headers.

bcc only looks for kernel headers to give its own helpers a few basic types and macros; the
programs use no kernel struct.  So bcc is pointed (``BCC_KERNEL_SOURCE``, set only around the
compile) at a stub "kernel tree" of tiny files written here (``STUB_HEADERS``: integer types, a
version macro, PAGE_SIZE), never at another kernel's headers, whose struct layouts differ.  The
kernel fields a program reads are read with ``bpf_probe_read_kernel`` at byte offsets taken from
this kernel's own BTF (``/sys/kernel/btf/vmlinux``, parsed here: ``btf_offsets``); a raw
``sys_enter``/``sys_exit`` program's syscall arguments likewise (``syscall_cflags``, with the C
reader ``bpfc.SYSCALL_ARGS``).  Raw tracepoints attach by name, without tracefs.  Typed
tracepoints (``TypedPrograms``, used by tpprobe where the kernel takes them) read a tracepoint's
struct arguments with plain loads instead; bcc compiles them, this module loads them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

BTF_PATH = Path("/sys/kernel/btf/vmlinux")

# struct pt_regs members (x86_64) holding a syscall's arguments 1-6, in order, then its number
# (orig_ax: what sys_exit has of it)
SYSCALL_REGS = ("di", "si", "dx", "r10", "r8", "r9", "orig_ax")

# The stub "kernel tree" bcc compiles against: what its own helpers include, and nothing of a kernel's structs.
STUB_HEADERS = {
    "include/linux/kconfig.h": "#define CONFIG_BPF_SYSCALL 1\n",
    "include/linux/types.h": """#ifndef _UDPSEND_STUB_TYPES_H
#define _UDPSEND_STUB_TYPES_H
typedef unsigned char __u8; typedef signed char __s8; typedef unsigned short __u16; typedef short __s16;
typedef unsigned int __u32; typedef int __s32; typedef unsigned long long __u64; typedef long long __s64;
typedef __u8 u8; typedef __s8 s8; typedef __u16 u16; typedef __s16 s16;
typedef __u32 u32; typedef __s32 s32; typedef __u64 u64; typedef __s64 s64;
typedef __u16 __be16; typedef __u32 __be32; typedef __u64 __be64; typedef __u16 __le16; typedef __u32 __le32;
typedef __u64 __le64; typedef __u16 __sum16; typedef __u32 __wsum;
typedef __u64 __attribute__((aligned(8))) __aligned_u64;
typedef _Bool bool;
typedef unsigned long uintptr_t; typedef long intptr_t; typedef unsigned long size_t; typedef long ssize_t;
#define true 1
#define false 0
#endif
""",
    "include/linux/version.h": "#define LINUX_VERSION_CODE 0\n#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + (c))\n",
    "include/linux/log2.h": "",
    "include/linux/bpf_common.h": "/* bcc's bpf.h includes it; its BPF_* instruction macros are not used here */\n",
    "include/uapi/linux/bpf.h": "/* the BPF uapi comes from bcc itself (/virtual/include/bcc/bpf.h) */\n",
    "include/uapi/linux/if_packet.h": "",
    "include/uapi/linux/if_ether.h": "",
    "arch/x86/include/asm/page.h": "#define PAGE_SIZE 4096\n",
}


@contextlib.contextmanager
def stub_kernel_tree() -> Iterator[str]:
    """A directory bcc takes for kernel headers (BCC_KERNEL_SOURCE, set only inside the block)."""
    with tempfile.TemporaryDirectory(prefix="udpsend-bcc-stub-") as root:
        for rel, text in STUB_HEADERS.items():
            target = Path(root, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        saved = os.environ.get("BCC_KERNEL_SOURCE")
        os.environ["BCC_KERNEL_SOURCE"] = root
        try:
            yield root
        finally:
            if saved is None:
                os.environ.pop("BCC_KERNEL_SOURCE", None)
            else:
                os.environ["BCC_KERNEL_SOURCE"] = saved


@contextlib.contextmanager
def stderr_to_file() -> Iterator[IO[str]]:
    """Catch what clang/bcc print on fd 2 (not sys.stderr), to put it into our error."""
    with tempfile.TemporaryFile("w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)


class LoadError(Exception):
    """bcc could not compile or load a program: ``cause`` what bcc raised, ``errors`` the compiler's first error lines."""

    def __init__(self, cause: Exception, errors: list[str]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.errors = errors

    @property
    def detail(self) -> str:
        return "; ".join(self.errors) or "no compiler output"


def load(text: str, cflags: Sequence[str], raw_tracepoints: Sequence[str] = (), max_errors: int = 3) -> Any:
    """Compile ``text`` header-free and load the functions named in ``raw_tracepoints`` as raw tracepoint
    programs (verified now, attached by the caller); the ``bcc.BPF``, or LoadError."""
    from bcc import BPF

    with stub_kernel_tree(), stderr_to_file() as log:
        try:
            bpf = BPF(text=text.encode(), cflags=list(cflags))
            for fn in raw_tracepoints:
                bpf.load_func(fn.encode(), BPF.RAW_TRACEPOINT)
        except Exception as exc:
            log.seek(0)
            errors = [line for line in log.read().splitlines() if "error" in line][:max_errors]
            raise LoadError(exc, errors) from None
    return bpf


def _btf_types(path: Path) -> tuple[bytes, bytes, list[int]]:
    """The BTF file's bytes, its string section, and the position of each type id's struct btf_type."""
    data = path.read_bytes()
    magic, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise ValueError(f"{path} is not BTF")
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    extra = {1: 4, 3: 12, 14: 4, 17: 4}  # fixed bytes after struct btf_type, per kind
    per_member = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # bytes per vlen entry, per kind
    positions = [0]  # type id -> position of its struct btf_type (id 0 is void)
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        positions.append(pos)
        info = struct.unpack_from("<I", data, pos + 4)[0]
        pos += 12 + extra.get(info >> 24 & 0x1F, 0) + per_member.get(info >> 24 & 0x1F, 0) * (info & 0xFFFF)
    return data, strings, positions


def btf_type_ids(names: Sequence[str], path: Path | None = None) -> dict[str, int]:
    """The BTF type ids of ``names`` (a FUNC for fentry, a ``btf_trace_<event>`` TYPEDEF for a typed
    tracepoint), those found; OSError/ValueError for an unreadable file.  Strings are unique in the
    kernel's BTF, so a name's string offset finds its type."""
    data, strings, positions = _btf_types(BTF_PATH if path is None else path)
    wanted = {strings.find(b"\0" + n.encode() + b"\0") + 1: n for n in names}
    wanted.pop(0, None)  # not found
    found: dict[str, int] = {}
    for type_id, pos in enumerate(positions[1:], start=1):
        name_off = struct.unpack_from("<I", data, pos)[0]
        if name_off in wanted:
            found.setdefault(wanted[name_off], type_id)
    return found


def tracepoint_type_ids(events: Sequence[str]) -> dict[str, int]:
    """``btf_trace_<event>`` -> type id for each event; KeyError names those this kernel's BTF lacks."""
    names = [f"btf_trace_{event}" for event in events]
    found = btf_type_ids(names)
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"no tracepoint type {', '.join(missing)} in {BTF_PATH}")
    return found


def btf_offsets(struct_name: str, fields: Sequence[str], path: Path | None = None) -> dict[str, int]:
    """Byte offsets of ``fields`` in ``struct_name``, from the kernel's BTF (members of anonymous
    structs and unions included); KeyError names what is missing, OSError/ValueError an unreadable file."""
    data, strings, positions = _btf_types(BTF_PATH if path is None else path)

    def name(off: int) -> str:
        return strings[off : strings.index(b"\0", off)].decode()

    def head(type_id: int) -> tuple[int, int, int, int]:  # name_off, kind, vlen, kind_flag
        name_off, info = struct.unpack_from("<II", data, positions[type_id])
        return name_off, info >> 24 & 0x1F, info & 0xFFFF, info >> 31

    def resolve(type_id: int) -> int:  # through typedef, volatile, const, restrict, type tags
        while head(type_id)[1] in (8, 9, 10, 11, 18):
            type_id = struct.unpack_from("<I", data, positions[type_id] + 8)[0]
        return type_id

    def walk(type_id: int, base: int, found: dict[str, int]) -> None:
        _, _, vlen, kind_flag = head(type_id)
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", data, positions[type_id] + 12 + 12 * i)
            bits = base + (m_off & 0xFFFFFF if kind_flag else m_off)
            if m_name:
                found.setdefault(name(m_name), bits // 8)
            elif head(resolve(m_type))[1] in (4, 5):  # an anonymous struct or union: its members are ours
                walk(resolve(m_type), bits, found)

    target = next(
        (i for i in range(1, len(positions)) if head(i)[1] == 4 and head(i)[0] and name(head(i)[0]) == struct_name),
        None,
    )
    if target is None:
        raise KeyError(f"struct {struct_name}")
    found: dict[str, int] = {}
    walk(target, 0, found)
    missing = [f for f in fields if f not in found]
    if missing:
        raise KeyError(f"struct {struct_name} has no {', '.join(missing)}")
    return {f: found[f] for f in fields}


def syscall_cflags() -> list[str]:
    """``-DOFF_DI=..`` .. ``-DOFF_ORIG_AX=..``: the pt_regs offsets ``bpfc.SYSCALL_ARGS`` reads a raw
    sys_enter/sys_exit program's syscall arguments and number at; KeyError/OSError/ValueError as btf_offsets."""
    return [f"-DOFF_{name.upper()}={off}" for name, off in btf_offsets("pt_regs", SYSCALL_REGS).items()]


SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 5, 17
BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP = 26, 23
# union bpf_attr for BPF_PROG_LOAD (include/uapi/linux/bpf.h): byte offsets of the fields set here, and the
# size passed (the rest zero; 6.4+ writes log_true_size back at 140)
AT_LOG, AT_NAME, AT_ATTACH_TYPE, AT_ATTACH_BTF_ID, PROG_LOAD_ATTR = 24, 48, 68, 108, 144


def bpf_call(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """The bpf() system call: the new fd (0 for a command that makes none), or OSError."""
    if SYS_BPF is None:
        raise OSError(errno.ENOSYS, f"no bpf() system call number known for {platform.machine()}")
    fd = ctypes.CDLL(None, use_errno=True).syscall(SYS_BPF, cmd, attr, len(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return int(fd)


class TypedPrograms:
    """Typed (``tp_btf``) tracepoint programs: the tracepoint's arguments are typed pointers, so a
    field of the skb is read with a plain load the verifier checks against the kernel's BTF, not
    with a ``bpf_probe_read_kernel`` call (about 25 ns each on the 6.18 host, five a datagram).

    bcc compiles (its maps, already created, are referenced by fd in the instructions); bcc cannot
    load a tracing program against a tracepoint (it looks the name up as a kernel function), so
    each function is loaded here with ``bpf(BPF_PROG_LOAD)``: type TRACING, attach type
    BPF_TRACE_RAW_TP, attach_btf_id the typedef ``btf_trace_<event>``.  Attached with
    ``BPF_RAW_TRACEPOINT_OPEN`` without a name (the id says where); detached by closing the link.
    """

    def __init__(self, bpf: Any, events: Sequence[tuple[str, str]], ids: Mapping[str, int] | None = None) -> None:
        """``ids``: ``tracepoint_type_ids`` of the events, when the caller has them already (one BTF read)."""
        from bcc import lib

        if ids is None:
            ids = tracepoint_type_ids([event for event, _ in events])
        self.fds: dict[str, int] = {}
        self.links: dict[str, int] = {}
        try:
            for event, fn in events:
                start = lib.bpf_function_start(bpf.module, fn.encode())
                size = lib.bpf_function_size(bpf.module, fn.encode())
                if not start:
                    raise OSError(errno.ENOENT, f"bcc compiled no function {fn}")
                self.fds[event] = self._load(ctypes.string_at(start, size), ids[f"btf_trace_{event}"], fn)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _load(insns: bytes, btf_id: int, name: str) -> int:
        """Loaded without a verifier log (a long one can fail a good program with ENOSPC), and on failure
        once more with one, for the reason."""
        code = ctypes.create_string_buffer(insns, len(insns))
        license = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(1 << 16)
        attr = ctypes.create_string_buffer(PROG_LOAD_ATTR)
        struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code),
                         ctypes.addressof(license))  # fmt: skip
        struct.pack_into("<15s", attr, AT_NAME, name.encode()[:15])
        struct.pack_into("<I", attr, AT_ATTACH_TYPE, BPF_TRACE_RAW_TP)
        struct.pack_into("<I", attr, AT_ATTACH_BTF_ID, btf_id)
        try:
            return bpf_call(BPF_PROG_LOAD, attr)
        except OSError as exc:
            first = exc
        struct.pack_into("<IIQ", attr, AT_LOG, 1, len(log), ctypes.addressof(log))  # log_level, log_size, log_buf
        try:
            return bpf_call(BPF_PROG_LOAD, attr)  # loaded with a log after all: the first refusal stands
        except OSError as exc:
            said = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
            truncated = " (the verifier's log was cut short)" if exc.errno == errno.ENOSPC else ""
            text = f"{' / '.join(said[-2:]) or 'no log'}{truncated}"
        raise OSError(first.errno, f"{name}: {first.strerror}; verifier: {text}")

    def attach(self, event: str) -> None:
        """Attach ``event``'s program (again a no-op while attached)."""
        if event not in self.links:
            attr = ctypes.create_string_buffer(struct.pack("<QI", 0, self.fds[event]), 16)
            self.links[event] = bpf_call(BPF_RAW_TRACEPOINT_OPEN, attr)

    def detach(self, event: str) -> None:
        """Closing the link detaches the program; it stays loaded."""
        if event in self.links:
            os.close(self.links.pop(event))

    def close(self) -> None:
        """Detach and unload everything (safe to call twice)."""
        for event in list(self.links):
            self.detach(event)
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

"""Saved results: the --udpsend-json document, written atomically, keyed by kernel.

Layout::

    {"format": "pytest-udpsend/2", "environment": {...}, "tests": {nodeid: {"outcome": ...,
     "samples": [SendResult dicts]}}}

Schema 2 (``schema/results-v2.json``, checked on load with jsonschema) adds ``hostname`` and
``labels`` (``--udpsend-label``) to the environment and, in a merged document (``udpsend
merge``), ``runs``: one ``{"source", "environment", "tests"}`` per source document.  Schema 1
documents (today's files) are read as they are.  The schema types every field the plugin writes
(fields it does not know are let through, so newer writers of schema 2 stay readable): whatever
reads a document after ``load`` may rely on those types, and a file that breaks them is refused
in one sentence naming the file and the field.

Results travel from xdist workers to the controller in ``report.user_properties``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from pytest_udpsend import __version__
from pytest_udpsend.errors import ResultsFileError
from pytest_udpsend.host.outfile import atomic_write
from pytest_udpsend.measure.sender import knobs_in_force

SCHEMA_VERSION = 2
FORMAT = f"pytest-udpsend/{SCHEMA_VERSION}"
READABLE = ("pytest-udpsend/1", FORMAT)  # a schema-2 reader reads both
SCHEMA = Path(__file__).with_name("schema") / "results-v2.json"
PROPERTY = "udpsend_samples"
MAX_DEPTH = 64  # a document the plugin writes nests about 10 deep; walkers of deeper ones run out of stack


def kernel_config_hash() -> str | None:
    """sha256 of the running kernel's config, where the kernel exposes it."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return hashlib.sha256(data).hexdigest()[:16]
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def virtualized() -> bool:
    """Whether this kernel runs under a hypervisor (the CPU's ``hypervisor`` flag): a VM measures differently."""
    try:
        return any(
            line.startswith("flags") and " hypervisor" in line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
        )
    except OSError:
        return False


def environment(backend: str) -> dict[str, Any]:
    """How this session measures: the gate refuses to compare results whose ``compare.ENV_FIELDS`` differ."""
    return {
        "kernel": os.uname().release,
        "hostname": os.uname().nodename,
        "kernel_version": os.uname().version,
        "kernel_config_sha256": kernel_config_hash(),
        "machine": os.uname().machine,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "virtualized": virtualized(),
        "sysctls": knobs_in_force({}),
        "plugin_version": __version__,
        "python": sys.version.split()[0],
        "backend": backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def document(env: dict[str, Any], tests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "environment": env, "tests": tests}


def write(path: str | Path, doc: dict[str, Any]) -> None:
    """Write atomically through an unpredictable O_EXCL temporary (host/outfile.py)."""
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True))


def schema_version(fmt: object) -> int | None:
    """2 for "pytest-udpsend/2"; None for anything that is not a pytest-udpsend format string."""
    prefix, _, number = str(fmt).partition("/")
    return (
        int(number) if prefix == "pytest-udpsend" and number.isascii() and number.isdigit() else None
    )  # "²" is a digit


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(the document)"


def too_deep(doc: Any, limit: int = MAX_DEPTH) -> list[Any] | None:
    """The path of the first value nested deeper than ``limit``, else None (walked without recursion)."""
    stack: list[tuple[Any, list[Any]]] = [(doc, [])]
    while stack:
        value, path = stack.pop()
        if len(path) > limit:
            return path[: limit + 1]
        if isinstance(value, dict):
            stack += [(v, [*path, k]) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, [*path, i]) for i, v in enumerate(value)]
    return None


def validate(doc: Any, name: str | Path) -> dict[str, Any]:
    """``doc`` if it is a results document this version reads; else ResultsFileError (a ValueError), one sentence naming the field."""
    import jsonschema

    if not isinstance(doc, dict) or "format" not in doc:
        raise ResultsFileError(
            f"{name}: not a pytest-udpsend results file (no 'format' field; write one with --udpsend-json)"
        )
    version = schema_version(doc["format"])
    if version is None:
        raise ResultsFileError(f"{name}: not a pytest-udpsend results file (field 'format' is {doc['format']!r})")
    if version > SCHEMA_VERSION:
        raise ResultsFileError(
            f"{name}: field 'format' is {doc['format']!r}, a newer schema than this pytest-udpsend "
            f"{__version__} reads ({', '.join(READABLE)}); upgrade pytest-udpsend to read it"
        )
    if doc["format"] not in READABLE:
        raise ResultsFileError(
            f"{name}: field 'format' is {doc['format']!r}, not one this pytest-udpsend reads ({', '.join(READABLE)})"
        )
    if (deep := too_deep(doc)) is not None:
        raise ResultsFileError(
            f"{name}: field '{_field(deep)}...': nested more than {MAX_DEPTH} levels deep, which no results "
            "file is; the file was edited or written by another tool"
        )
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(doc))
    if error is not None:
        raise ResultsFileError(
            f"{name}: field '{_field(error.absolute_path)}': {error.message} "
            f"(schema {SCHEMA.name}); the file was edited or written by another tool"
        )
    return doc


@functools.cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a saved document; ResultsFileError (a ValueError) with one sentence if it is not one."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ResultsFileError(f"{path}: not a pytest-udpsend results file (not text)") from None
    except OSError as exc:  # a directory, no permission, an I/O error: the cause, not a traceback
        raise ResultsFileError(
            f"{path}: cannot be read: {exc.strerror or exc}; give a results file written with --udpsend-json"
        ) from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ResultsFileError(
            f"{path}: nested too deeply to read (arrays or objects hundreds of levels deep): "
            "not a pytest-udpsend results file"
        ) from None
    except json.JSONDecodeError as exc:
        stripped = text.rstrip()  # a JSON object cut short: it ends before its closing brace, or inside a string
        cut = stripped.startswith("{") and (
            exc.pos >= len(stripped) or not stripped.endswith("}") or "Unterminated" in exc.msg
        )
        what = (
            "truncated (the JSON ends early: the run was killed while writing it, or the copy is incomplete)"
            if cut
            else "not JSON"
        )
        raise ResultsFileError(f"{path}: {what}: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:  # JSON that Python will not convert, e.g. a number of more digits than int() takes
        raise ResultsFileError(f"{path}: not a pytest-udpsend results file ({exc})") from None
    return validate(doc, path)

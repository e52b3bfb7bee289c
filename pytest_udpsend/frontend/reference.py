"""The reference pages of the docs site, derived from the code that reads each name, so they cannot drift.

Markers: each marker's parameters come from the function that validates it (found where
``markers.py`` hands the marker to ``_call``), options from the option tables, fixtures from
their docstrings, SendResult from its dataclass, the JSON document from its schema.  The
``udpsend`` command's parser and the fixtures module sit above this layer, so the caller
(docs/hooks/reference.py) passes them in.  A marker, option or subcommand this module does
not know yet still gets a page entry: the generator never fails on a new name.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_udpsend.frontend import markers, options
from pytest_udpsend.measure import result
from pytest_udpsend.results import store


@dataclass(frozen=True)
class Param:
    """One accepted parameter: its name, its default as code ("" when it has none) and a note."""

    name: str
    default: str = ""
    note: str = ""


@dataclass(frozen=True)
class MarkerRef:
    name: str
    params: tuple[Param, ...]
    help: str  # the registered help, after its signature
    source: str  # where the parameters were read from

    def signature(self) -> str:
        args = ", ".join(f"{p.name}={p.default}" if p.default else p.name for p in self.params)
        return f"@pytest.mark.{self.name}({args})"


@dataclass(frozen=True)
class FixtureRef:
    name: str
    scope: str
    doc: str


@dataclass(frozen=True)
class CommandRef:
    name: str
    help: str
    description: str
    usage: str
    arguments: tuple[tuple[str, str, str], ...]  # (spelling, default, help)
    exit_codes: tuple[tuple[int, str], ...]


# Exit statuses of each ``udpsend`` subcommand (read from command/, where each subcommand returns them);
# tests/test_docs_reference.py fails when a subcommand of the parser has no entry here.
EXIT_CODES: dict[str, dict[int, str]] = {
    "doctor": {0: "root, network namespaces and veth work here (the core checks)", 1: "one of the core checks failed"},
    "run": {0: "measured; the result table printed (and --json written)"},
    "compare": {
        0: "no group regressed",
        1: "a group regressed",
        2: "a group was refused or has no partner on the other side",
    },
    "merge": {0: "the merged document written"},
    "prepare-kernel": {
        0: "the kernel is ready; the last line printed is the image path",
        1: "(or any other) the script's own exit status: it failed",
    },
    "sweep": {0: "the grid measured (also what was measured before a Ctrl-C is written)"},
    "calibrate": {0: "every pytest run passed", 1: "some pytest run had failing tests (the fits are printed anyway)"},
    "report": {0: "the page written (the verdict is udpsend compare's)"},
    "record": {
        0: "the shape written (also when Ctrl-C or SIGTERM ends the recording)",
        1: "the shape written, but events were lost (the ring buffer was full): it is incomplete",
    },
}
# What ``command.main.main`` (the console script ``cli.main``) returns for every subcommand.
COMMON_EXIT_CODES: dict[int, str] = {
    2: "a usage error, no command, or a one-sentence error naming the cause and the fix (bad value, unreadable "
    "file, refused input, missing privileges)",
    130: "interrupted (Ctrl-C or SIGTERM); everything the command changed was undone",
}


# -- markers -------------------------------------------------------------------------------------


def _validator_calls() -> Iterator[tuple[str, ast.expr]]:
    """(marker name, validator expression) for each call in markers.py that names a registered marker (a
    string, also inside a nested call such as ``where("topology")``, or a loop variable over strings)
    beside a function or lambda, e.g. ``_call("udpsend_baseline", _baseline, ...)``, ``one("topology",
    topology.make_spec)``.  Read by shape, not by helper names, so a refactoring of markers.py keeps it."""
    tree = ast.parse(inspect.getsource(markers))
    namespace = vars(markers)

    def names_in(arg: ast.expr, bound: dict[str, list[str]]) -> list[str]:
        if isinstance(arg, ast.Constant) and arg.value in markers.MARKERS:
            return [str(arg.value)]
        if isinstance(arg, ast.Name):
            return bound.get(arg.id, [])
        if isinstance(arg, ast.Call):
            return [n for a in arg.args for n in names_in(a, bound)]
        return []

    def is_validator(arg: ast.expr) -> bool:
        return isinstance(arg, ast.Lambda) or inspect.isfunction(_resolve(arg, namespace))

    def visit(node: ast.AST, bound: dict[str, list[str]]) -> Iterator[tuple[str, ast.expr]]:
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Name)
            and isinstance(node.iter, (ast.Tuple, ast.List))
        ):
            names = [e.value for e in node.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            bound = {**bound, node.target.id: names}
        if isinstance(node, ast.Call):
            found = [n for a in node.args for n in names_in(a, bound)]
            fns = [a for a in node.args if is_validator(a)]
            if found and len(fns) == 1:
                yield from ((name, fns[0]) for name in found)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, bound)

    yield from visit(tree, {})


def _resolve(expr: ast.expr, namespace: dict[str, Any]) -> Any:
    """``name`` or ``module.name`` in markers.py's namespace (None if it is neither)."""
    if isinstance(expr, ast.Name):
        return namespace.get(expr.id)
    if isinstance(expr, ast.Attribute):
        owner = _resolve(expr.value, namespace)
        return getattr(owner, expr.attr, None) if owner is not None else None
    return None


def _code(value: object) -> str:
    return "" if value is inspect.Parameter.empty else repr(value)


def callable_params(fn: Callable[..., Any]) -> tuple[Param, ...]:
    """The keyword parameters a validator accepts; ``**kwargs`` that build a dataclass (``make_params``
    returns SendParams) are that dataclass's fields.  Names starting with ``_`` are internal."""
    out: list[Param] = []
    for p in inspect.signature(fn).parameters.values():
        if p.name.startswith("_"):
            continue
        if p.kind is p.VAR_KEYWORD:
            built = typing.get_type_hints(fn).get("return")
            if isinstance(built, type) and dataclasses.is_dataclass(built):
                out.extend(dataclass_params(built))
            continue
        if p.kind is not p.VAR_POSITIONAL:
            out.append(Param(p.name, _code(p.default)))
    return tuple(out)


def dataclass_params(cls: type) -> list[Param]:
    """A dataclass's fields with their defaults and the comment on their line."""
    notes = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        default = "" if f.default is dataclasses.MISSING else repr(f.default)
        if f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        out.append(Param(f.name, default, notes.get(f.name, "")))
    return out


def _lambda_params(node: ast.Lambda) -> tuple[Param, ...]:
    args = node.args.args
    defaults = [""] * (len(args) - len(node.args.defaults)) + [ast.unparse(d) for d in node.args.defaults]
    return tuple(Param(a.arg, d) for a, d in zip(args, defaults) if not a.arg.startswith("_"))


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def split_help(name: str, text: str) -> tuple[str, str]:
    """A registered help line ``name(args): what it does`` as (args, what it does)."""
    if not text.startswith(name + "("):
        return "", text
    depth = 0
    for i, ch in enumerate(text[len(name) :], len(name)):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            return text[len(name) + 1 : i], text[i + 1 :].lstrip(":").strip()
    return "", text


def help_params(args: str) -> tuple[Param, ...]:
    """Parameters as a registered help line writes them (for a marker whose validator is not found)."""
    out = []
    for part in _split_top(args):
        key, sep, default = part.partition("=")
        if sep and key.strip().isidentifier():
            out.append(Param(key.strip(), default.strip()))
        elif part and part != "...":
            out.append(Param(part, "", "positional"))
    return tuple(out)


def marker_refs() -> list[MarkerRef]:
    """Every registered marker (and every validated one), with the parameters its validator accepts."""
    namespace = vars(markers)
    found: dict[str, tuple[tuple[Param, ...], str]] = {}
    for name, expr in _validator_calls():
        if name in found:
            continue
        if isinstance(expr, ast.Lambda):
            found[name] = (_lambda_params(expr), "validator: the lambda in frontend/markers.py")
            continue
        fn = _resolve(expr, namespace)
        if callable(fn):
            where = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', ast.unparse(expr))}"
            found[name] = (callable_params(fn), f"validator: {where.removeprefix('pytest_udpsend.')}")
    refs = []
    for name in [*markers.MARKERS, *(n for n in found if n not in markers.MARKERS)]:
        args, what = split_help(name, markers.MARKERS.get(name, ""))
        params, source = found.get(name) or (help_params(args), "the registered help (no validator found)")
        refs.append(MarkerRef(name, params, what, source))
    return refs


def registered_help() -> list[str]:
    """The marker help lines pytest registers (``pytest --markers``): each marker's arguments from its
    validator, where they are keywords, and what it does from ``markers.MARKERS``."""
    lines = []
    for ref in marker_refs():
        written, what = split_help(ref.name, markers.MARKERS.get(ref.name, ""))
        from_validator = ref.source.startswith("validator") and all(p.default for p in ref.params)
        signature = ref.signature().removeprefix("@pytest.mark.") if from_validator else f"{ref.name}({written})"
        lines.append(f"{signature}: {what}")
    return lines


# -- options, fixtures, SendResult, schema, commands ---------------------------------------------


def option_rows() -> list[tuple[str, str, str, str]]:
    """(flag, argument, default, help) of every pytest option in the option table."""
    rows = []
    for opt in options.PYTEST_OPTIONS:
        kw = opt.kwargs
        arg = "{" + ",".join(map(str, kw["choices"])) + "}" if "choices" in kw else str(kw.get("metavar", ""))
        if kw.get("action") == "append":
            arg += " (repeatable)"
        default = kw.get("default")
        shown = "" if default in (None, False, []) else repr(default)
        rows.append((opt.flag, arg.strip(), shown, opt.help))
    return rows


def ini_rows() -> list[tuple[str, str, str, str]]:
    """(ini name, default, the udpsend compare/report flag, help) of every ini option."""
    flags = {k.ini: k.flag for k in getattr(options, "GATE_KNOBS", [])}
    return [(name, default, flags.get(name, ""), help_text) for name, help_text, default in options.INI_OPTIONS]


def _is_fixture(dec: ast.expr) -> bool:
    target = dec.func if isinstance(dec, ast.Call) else dec
    return (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
        isinstance(target, ast.Name) and target.id == "fixture"
    )


def _constant(node: ast.expr | None, default: str) -> str:
    return str(node.value) if isinstance(node, ast.Constant) else default


def fixture_refs(modules: Sequence[types.ModuleType]) -> list[FixtureRef]:
    """Public fixtures defined in ``modules`` (``@pytest.fixture`` functions not starting with ``_``)."""
    out = []
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for dec in node.decorator_list:
                if not _is_fixture(dec):
                    continue
                kw = {k.arg: k.value for k in dec.keywords} if isinstance(dec, ast.Call) else {}
                name, scope = _constant(kw.get("name"), node.name), _constant(kw.get("scope"), "function")
                if not name.startswith("_"):
                    out.append(FixtureRef(name, scope, ast.get_docstring(node) or ""))
    return out


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of a class: on the field's line, else the comment lines just above it
    (a block starting "beyond SPEC" heads a group of fields and belongs to none)."""
    source = textwrap.dedent(inspect.getsource(cls))
    notes: dict[str, str] = {}
    above: list[str] = []
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    for number, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s+([A-Za-z_]\w*)\s*:", line)
        if line.strip().startswith("#"):
            above.append(comments.get(number, ""))
            continue
        if m and number in comments:
            notes[m.group(1)] = comments[number]
        elif m and above and not above[0].lower().startswith("beyond spec"):
            notes[m.group(1)] = " ".join(above)
        above = []
    return {k: re.sub(r"^beyond SPEC:\s*", "", v) for k, v in notes.items()}


def result_rows() -> list[tuple[str, str, str]]:
    """(field, type, description) of SendResult: its dataclass, comments and the schema's descriptions."""
    notes = field_comments(result.SendResult)
    sample = schema()["$defs"].get("sample", {}).get("properties", {})
    rows = []
    for f in dataclasses.fields(result.SendResult):
        described = sample.get(f.name, {}).get("description", "")
        ref = sample.get(f.name, {}).get("$ref", "")
        text = "; ".join(t for t in (notes.get(f.name, ""), described) if t)
        if ref.startswith("#/$defs/") and ref.split("/")[-1] not in (
            "count",
            "number_or_null",
            "string_map",
            "strings",
        ):
            text += ("; " if text else "") + f"keys: see `{ref.split('/')[-1]}` in the JSON document"
        rows.append((f.name, str(f.type), text))
    return rows


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(store.SCHEMA.read_text())
    return loaded


def _type_of(node: dict[str, Any]) -> str:
    if "$ref" in node:
        return f"`{node['$ref'].split('/')[-1]}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    if "items" in node:
        text += f" of {_type_of(node['items'])}"
    if isinstance(node.get("additionalProperties"), dict):
        text += f" mapping to {_type_of(node['additionalProperties'])}"
    return text


def schema_tables(doc: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(name, description, rows of (key, type, description)) for the document and each definition."""
    parts = [("document", str(doc.get("description", "")), doc)] + [
        (name, str(node.get("description", "")), node) for name, node in doc.get("$defs", {}).items()
    ]
    out = []
    for name, description, node in parts:
        required = set(node.get("required", []))
        rows = [
            (key + (" (required)" if key in required else ""), _type_of(sub), str(sub.get("description", "")))
            for key, sub in node.get("properties", {}).items()
        ]
        if not rows:
            rows = [("", _type_of(node), "")]
        out.append((name, description, rows))
    return out


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def command_refs(parser: argparse.ArgumentParser) -> list[CommandRef]:
    """Every subcommand of the ``udpsend`` parser with its arguments and exit statuses."""
    out = []
    for name, help_text, sub in _subparsers(parser):
        args = []
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            spelling = ", ".join(a.option_strings) or str(a.metavar or a.dest)
            if a.option_strings and a.nargs != 0:
                spelling += " " + str(
                    a.metavar or (("{" + ",".join(map(str, a.choices)) + "}") if a.choices else a.dest.upper())
                )
            shown = "" if a.default in (None, False, [], argparse.SUPPRESS) or not a.option_strings else repr(a.default)
            args.append((spelling, shown, (a.help or "").replace("%%", "%")))
        codes = {**EXIT_CODES.get(name, {}), **COMMON_EXIT_CODES}
        usage = sub.format_usage().removeprefix("usage: ").strip()
        out.append(CommandRef(name, help_text, sub.description or "", usage, tuple(args), tuple(sorted(codes.items()))))
    return out


# -- pages ------------------------------------------------------------------------------------------


def cell(text: str) -> str:
    """Text for a Markdown table cell: code spans kept, pipes and angle brackets outside them escaped."""
    parts = str(text).replace("\n", " ").split("`")
    for i, part in enumerate(parts):
        if i % 2 == 0:  # the tables extension leaves a pipe inside a code span alone
            parts[i] = part.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("|", "\\|")
    return "`".join(parts)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


GENERATED = "<!-- generated by docs/hooks/reference.py from the code; do not edit -->\n"


def markers_page() -> str:
    out = [
        GENERATED,
        "# Markers\n",
        "Each marker's parameters are read from the function that validates it, so this list is what the "
        "plugin accepts; a misspelled or invalid argument is a collection error naming the marker, the "
        "argument and what is accepted.\n",
    ]
    for ref in marker_refs():
        out.append(f"## `{ref.name}`\n")
        out.append(f"```python\n{ref.signature()}\n```\n")
        if ref.help:
            out.append(cell(ref.help) + "\n")
        if ref.params:
            out.append(
                table(
                    ["parameter", "default", "note"],
                    [(f"`{p.name}`", f"`{p.default}`" if p.default else "", p.note) for p in ref.params],
                )
                + "\n"
            )
        out.append(f"*Parameters from {ref.source}.*\n")
    return "\n".join(out)


def options_page() -> str:
    return "\n".join(
        [
            GENERATED,
            "# Options\n",
            "## Command-line options\n",
            "From `PYTEST_OPTIONS` in `frontend/options.py`; the `udpsend` command takes some of them "
            "without the `udpsend-` prefix (`--json`, `--repeat`, `--backend`).\n",
            table(
                ["option", "argument", "default", "what it does"],
                [(f"`{f}`", f"`{a}`" if a else "", f"`{d}`" if d else "", h) for f, a, d, h in option_rows()],
            )
            + "\n",
            "## ini options\n",
            "From `INI_OPTIONS`; each is also a flag of `udpsend compare` and `udpsend report` (one definition).\n",
            table(
                ["ini option", "default", "udpsend flag", "what it does"],
                [(f"`{n}`", f"`{d}`" if d else "", f"`{f}`" if f else "", h) for n, d, f, h in ini_rows()],
            )
            + "\n",
        ]
    )


def fixtures_page(modules: Sequence[types.ModuleType]) -> str:
    out = [GENERATED, "# Fixtures\n", "From the fixtures' docstrings (`pytest --fixtures` prints the same).\n"]
    for ref in fixture_refs(modules):
        doc = ref.doc
        body, _, example = doc.partition("Example::")
        out.append(f"## `{ref.name}`\n\n*{ref.scope} scope*\n")
        out.append(" ".join(body.split()) + "\n")
        if example.strip():
            out.append("```python\n" + textwrap.dedent(example).strip("\n") + "\n```\n")
    return "\n".join(out)


def result_page() -> str:
    return "\n".join(
        [
            GENERATED,
            "# SendResult\n",
            "What `udp_sender.run()`, `sender_process.run()` and `udpsend_result` return; the attributes are also the "
            "keys of each sample in the [JSON document](json.md) (`SendResult.to_dict()`).  From the dataclass in "
            "`measure/result.py`.\n",
            table(["field", "type", "what it holds"], [(f"`{n}`", f"`{t}`", d) for n, t, d in result_rows()]) + "\n",
        ]
    )


def json_page() -> str:
    doc = schema()
    out = [
        GENERATED,
        "# The JSON document\n",
        f"What `--udpsend-json`, `udpsend run --json`, `udpsend sweep` and `udpsend merge` write: "
        f'`"format": "{store.FORMAT}"`, checked against `pytest_udpsend/results/schema/{store.SCHEMA.name}` '
        "on every load.  Each table below is the document or one of the schema's definitions.\n",
    ]
    for name, description, rows in schema_tables(doc):
        out.append(f"## `{name}`\n")
        if description:
            out.append(cell(description) + "\n")
        out.append(table(["key", "type", "description"], [(f"`{k}`" if k else "", t, d) for k, t, d in rows]) + "\n")
    out.append(
        '??? note "The schema itself"\n\n    ```json\n'
        + textwrap.indent(json.dumps(doc, indent=2), "    ")
        + "\n    ```\n"
    )
    return "\n".join(out)


def cli_page(parser: argparse.ArgumentParser) -> str:
    out = [
        GENERATED,
        "# The `udpsend` command\n",
        "From the command's argparse parser (`build_parser()` in `command/main.py`); `udpsend COMMAND --help` prints the same.\n",
        table(["command", "what it does"], [(f"`udpsend {c.name}`", c.help) for c in command_refs(parser)]) + "\n",
    ]
    for c in command_refs(parser):
        out.append(f"## `udpsend {c.name}`\n")
        out.append(cell(c.description or c.help) + "\n")
        out.append(f"```\n{c.usage}\n```\n")
        if c.arguments:
            out.append(
                table(
                    ["argument", "default", "what it does"],
                    [(f"`{s}`", f"`{d}`" if d else "", h) for s, d, h in c.arguments],
                )
                + "\n"
            )
        out.append("Exit status:\n")
        out.append(table(["status", "when"], [(str(code), text) for code, text in c.exit_codes]) + "\n")
    return "\n".join(out)


def pages(parser: argparse.ArgumentParser, fixture_modules: Sequence[types.ModuleType]) -> dict[str, str]:
    """Every generated reference page: path under docs/ -> Markdown."""
    return {
        "reference/markers.md": markers_page(),
        "reference/options.md": options_page(),
        "reference/fixtures.md": fixtures_page(fixture_modules),
        "reference/sendresult.md": result_page(),
        "reference/json.md": json_page(),
        "reference/cli.md": cli_page(parser),
    }

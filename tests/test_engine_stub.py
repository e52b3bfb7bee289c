"""The C extension's stub (measure/_engine.pyi) says what _engine.c accepts, and ships with py.typed."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_udpsend"
C_SOURCE = PACKAGE / "measure" / "_engine.c"
STUB = PACKAGE / "measure" / "_engine.pyi"


def c_keywords() -> dict[str, list[str]]:
    """Each function of the method table with its keyword list, as PyArg_ParseTupleAndKeywords reads it."""
    text = C_SOURCE.read_text()
    table = re.search(r"static PyMethodDef methods\[\] = \{(.*?)\};", text, re.S)
    assert table, "no method table in _engine.c"
    out = {}
    for name, func in re.findall(r'\{"(\w+)", \(PyCFunction\)\(void \(\*\)\(void\)\)(\w+),', table.group(1)):
        body = re.search(rf"static PyObject \*{func}\(.*?static char \*names\[\] = \{{(.*?)\}};", text, re.S)
        assert body, f"no keyword list in {func}"
        out[name] = re.findall(r'"(\w+)"', body.group(1))
    return out


def stub_signatures() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef)}


def test_the_stub_names_every_function_and_keyword_of_the_method_table():
    assert c_keywords() == stub_signatures()


def test_the_stub_matches_the_built_extension():
    engine = pytest.importorskip("pytest_udpsend.measure._engine")
    assert sorted(n for n in dir(engine) if not n.startswith("_")) == sorted(stub_signatures())


def test_py_typed_and_the_stub_are_package_data():
    data = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["pytest_udpsend"] and (PACKAGE / "py.typed").is_file()
    assert "_engine.pyi" in data["pytest_udpsend.measure"] and STUB.is_file()

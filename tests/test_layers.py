"""The package's layering (ARCHITECTURE.md), checked by reading the imports.

Each module sits in a layer; a module may import its own layer and those below,
never one above.  Lazy imports inside functions count too: they are still a
dependency.  Imports (lazy ones included) must also form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_udpsend"
NAME = "pytest_udpsend"

# lowest first; a module's layer is its subpackage's (top-level modules are named)
LAYERS = {
    "errors": 0,
    "host": 1,
    "measure": 2,
    "results": 3,
    "lane": 4,
    "frontend": 5,
    "fixtures": 6,
    "plugin": 6,
    "cli": 6,
    "command": 6,
    "__init__": 0,
}
# No module below the frontend may import pytest: the pytest glue lives on top.  The exemptions, by
# module and with the reason (ARCHITECTURE.md says the same); any other module below frontend/ fails.
PYTEST_EXEMPT: dict[str, str] = {}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join([NAME, *parts])


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts == [NAME]:
        return LAYERS["__init__"]
    return LAYERS[parts[1]]


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of the package or pytest."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from pytest_udpsend.host import netns" imports the submodule netns
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() else base
                found.append((target, node.lineno, id(node) in top_level))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        for target, line, _ in imports(path, module):
            if target == "pytest" or target.startswith("_pytest"):
                if own < LAYERS["frontend"] and module not in PYTEST_EXEMPT:
                    bad.append(
                        f"{path.relative_to(root)}:{line}: {module} (layer {own}) imports pytest: pytest glue belongs in frontend/"
                    )
                continue
            if not target.startswith(NAME + ".") and target != NAME:
                continue
            if layer_of(target) > own:
                bad.append(
                    f"{path.relative_to(root)}:{line}: {module} (layer {own}) imports {target} (layer {layer_of(target)})"
                )
    return bad


def cycles(root: Path = PACKAGE) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = module_name(path, root)
        graph[module] = {t for t, _, _top in imports(path, module) if t.startswith(NAME + ".") and t != module}
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # KeyError names a module outside every layer


def test_no_module_imports_a_higher_layer():
    bad = violations()
    assert not bad, "upward imports (see ARCHITECTURE.md):\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_each_pytest_exemption_is_still_needed():
    """An exempt module that stopped importing pytest loses its exemption."""
    for module in PYTEST_EXEMPT:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        assert any(t == "pytest" for t, _, _ in imports(path, module)), (
            f"{module} no longer imports pytest: drop its exemption"
        )


def test_an_upward_import_is_caught(tmp_path):
    """The check itself can fail: a host module importing the results layer is reported."""
    fake = tmp_path / NAME
    for sub in ("host", "results"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "results" / "store.py").write_text("X = 1\n")
    (fake / "host" / "netns.py").write_text("import pytest\nfrom pytest_udpsend.results import store\n")
    import tests.test_layers as me

    saved = me.PACKAGE
    me.PACKAGE = fake
    try:
        found = violations(fake)
    finally:
        me.PACKAGE = saved
    assert any("imports pytest_udpsend.results.store (layer 3)" in v for v in found), found
    assert any("imports pytest" in v for v in found), found


def test_a_lane_module_importing_pytest_is_caught(tmp_path):
    """The lane layer has no exemption: its pytest parts are frontend/kernel_lane.py and frontend/guest.py."""
    fake = tmp_path / NAME
    (fake / "lane").mkdir(parents=True)
    for rel in ("__init__.py", "lane/__init__.py"):
        (fake / rel).write_text("")
    (fake / "lane" / "vm.py").write_text("import pytest\n")
    (fake / "lane" / "wire.py").write_text("from _pytest.reports import TestReport\n")
    found = violations(fake)
    assert [v.split(":")[0] for v in found] == ["lane/vm.py", "lane/wire.py"], found


# Modules outside command/ that print, with the reason; any other print() outside the command fails.
PRINT_EXEMPT = {
    "pytest_udpsend.measure.external": "SenderProcess prints the user's program's output for pytest to capture "
    "and show beside a failing test",
}


def printers(root: Path = PACKAGE) -> list[str]:
    """Modules outside the command's package (and the console script) that call print()."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        if module.startswith(f"{NAME}.command") or module == f"{NAME}.cli" or module in PRINT_EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{path.relative_to(root)}:{node.lineno}: {module} prints")
    return found


def test_only_the_command_prints():
    """What the ``udpsend`` command prints and its exit statuses are command/'s: the layers below return data."""
    bad = printers()
    assert not bad, "print() outside pytest_udpsend/command/:\n" + "\n".join(bad)


def test_a_print_below_the_command_is_caught(tmp_path):
    fake = tmp_path / NAME
    for sub in ("results", "command"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "results" / "fanin.py").write_text("def f():\n    print('merged')\n")
    (fake / "command" / "compare.py").write_text("print('ok')\n")
    assert [v.split(":")[0] for v in printers(fake)] == ["results/fanin.py"]


@pytest.mark.parametrize("sub", sorted(k for k in LAYERS if (PACKAGE / k).is_dir()))
def test_each_layer_is_a_package_with_a_docstring(sub):
    init = PACKAGE / sub / "__init__.py"
    assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"{sub}/__init__.py needs a docstring"


def test_the_command_does_not_load_pytest():
    """The ``udpsend`` command shares the option table and the session with the plugin, not pytest itself."""
    import subprocess
    import sys

    code = "import sys, pytest_udpsend.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out

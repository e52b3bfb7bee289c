"""The docs' reference pages name everything a user can write: every marker and each argument it
accepts, every --udpsend-* and ini option, every public fixture, every ``udpsend`` subcommand.

What the plugin accepts is read from the plugin as a user meets it (``pytest --markers``,
``--help``, ``--fixtures``, the collection error of an unknown marker argument), not from the
generator, so a new name that does not reach the generated pages fails here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from pytest_udpsend import cli, fixtures
from pytest_udpsend.frontend import markers, reference
from pytest_udpsend.measure.result import SendResult

ROOT = Path(__file__).resolve().parent.parent


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    built: dict[str, str] = _hook().pages()
    return built


def section(page: str, title: str) -> str:
    """The text of one ``## `title` `` section of a generated page."""
    match = re.search(rf"^## `{re.escape(title)}`\n(.*?)(?=^## |\Z)", page, re.S | re.M)
    assert match, f"no section for {title!r}"
    return match.group(1)


def without_plugin(pytester: pytest.Pytester, *args: str) -> str:
    return pytester.runpytest("-p", "no:udpsend", "-p", "no:udpsend_fixtures", *args).stdout.str()


def test_every_marker_and_each_accepted_argument(pytester: pytest.Pytester, pages: dict[str, str]) -> None:
    ours = set(re.findall(r"^@pytest\.mark\.(\w+)", pytester.runpytest("--markers").stdout.str(), re.M))
    ours -= set(re.findall(r"^@pytest\.mark\.(\w+)", without_plugin(pytester, "--markers"), re.M))
    assert ours >= {"topology", "udpsend", "eagain_rate"}
    # An unknown argument makes each marker's validator say what it accepts.
    pytester.makepyfile(
        "\n".join(
            f"import pytest\n@pytest.mark.{name}(zz_not_an_argument=1)\ndef test_{name}(): pass\n"
            for name in sorted(ours)
        )
    )
    out = pytester.runpytest("--collect-only", "-q").stdout.str()
    page = pages["reference/markers.md"]
    checked = 0
    for name in sorted(ours):
        text = section(page, name)
        params = {p.name for r in reference.marker_refs() if r.name == name for p in r.params}
        for param in params:
            assert f"`{param}`" in text, f"marker {name}: parameter {param} missing from the reference"
        said = re.search(rf"::test_{name}: .*?accepted(?: arguments)?: ([\w, ]+)", out)
        if said:
            checked += 1
            for arg in (a.strip() for a in said.group(1).split(",")):
                assert f"`{arg}`" in text, f"@pytest.mark.{name} accepts {arg}, which the reference does not name"
    assert checked >= len(ours) - 1, out  # every validator names what it accepts (sysctl's dict aside)


def test_every_option(pytester: pytest.Pytester, pages: dict[str, str]) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    page = pages["reference/options.md"]
    flags = set(re.findall(r"--udpsend-[a-z0-9-]+", help_text))
    assert "--udpsend-json" in flags
    for flag in flags:
        assert f"`{flag}`" in page, f"{flag} missing from the reference"
    inis = set(re.findall(r"^  (udpsend_\w+) \(", help_text, re.M))
    assert "udpsend_tolerance" in inis
    for ini in inis:
        assert f"`{ini}`" in page, f"ini option {ini} missing from the reference"


def test_every_public_fixture(pytester: pytest.Pytester, pages: dict[str, str]) -> None:
    out = pytester.runpytest("--fixtures", "-v").stdout.str()
    found = set(re.findall(r"^([a-z]\w*)(?: \[\w+ scope\])? -- .*pytest_udpsend", out, re.M))
    assert {"veth", "udp_sender", "udpsend_result", "wfree_probe"} <= found, out
    page = pages["reference/fixtures.md"]
    for name in found:
        assert section(page, name).strip(), f"fixture {name} has no docstring in the reference"


def test_every_subcommand_with_its_exit_codes(pages: dict[str, str]) -> None:
    page = pages["reference/cli.md"]
    commands = {name: sub for name, _, sub in reference._subparsers(cli.build_parser())}
    assert {"doctor", "run", "compare", "report"} <= set(commands)
    for name, sub in commands.items():
        assert name in reference.EXIT_CODES, f"udpsend {name}: add its exit statuses to reference.EXIT_CODES"
        text = section(page, f"udpsend {name}")
        assert "Exit status" in text and "| 0 |" in text
        for action in sub._actions:
            for flag in action.option_strings if action.dest != "help" else ():
                assert flag in text, f"udpsend {name} {flag} missing from the reference"


def test_sendresult_fields_and_schema(pages: dict[str, str]) -> None:
    for name in SendResult.__dataclass_fields__:
        assert f"| `{name}` |" in pages["reference/sendresult.md"]
    for name in reference.schema()["$defs"]:
        assert f"## `{name}`" in pages["reference/json.md"]


def test_a_marker_the_generator_does_not_know_still_reaches_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(markers.MARKERS, "zz_new", "zz_new(alpha=1, beta={'x': [1, 2]}): a marker added later")
    ref = next(r for r in reference.marker_refs() if r.name == "zz_new")
    assert [(p.name, p.default) for p in ref.params] == [("alpha", "1"), ("beta", "{'x': [1, 2]}")]
    assert ref.help == "a marker added later"
    assert "## `zz_new`" in reference.markers_page()


def test_the_site_lists_every_generated_page(pages: dict[str, str]) -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    assert "docs/hooks/reference.py" in nav
    for path in pages:
        assert path in nav, f"{path} is generated but not in mkdocs.yml's nav"
        assert not (ROOT / "docs" / path).exists(), f"docs/{path} is generated: do not keep a copy"
    assert set(pages) == set(reference.pages(cli.build_parser(), [fixtures]))


def test_registered_marker_help_names_every_validator_parameter(pytester):
    """`pytest --markers` takes each marker's parameters from its validator, as the reference does, so a
    parameter added to a validator (udpsend's mode, batch, flows...) reaches the help with no edit."""
    from pytest_udpsend.frontend import reference

    out = pytester.runpytest("--markers").stdout.str()
    for ref in reference.marker_refs():
        line = next((ln for ln in out.splitlines() if ln.startswith(f"@pytest.mark.{ref.name}(")), None)
        assert line is not None, f"marker {ref.name} is not registered"
        for p in ref.params:
            if p.default:  # keyword parameters: written as name=default
                assert f"{p.name}=" in line, f"{ref.name}'s help omits {p.name}"

"""mkdocs hook: the reference pages, generated from the code at every build (never stored).

The pages come from ``pytest_udpsend.frontend.reference``; this hook hands it the two things
above its layer (the ``udpsend`` parser and the fixtures module) and adds the pages to the site.
tests/test_docs_reference.py checks that they name every marker parameter, option, fixture and
subcommand.
"""

from __future__ import annotations

from typing import Any


def pages() -> dict[str, str]:
    from pytest_udpsend import cli, fixtures
    from pytest_udpsend.frontend import reference

    return reference.pages(cli.build_parser(), [fixtures])


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files

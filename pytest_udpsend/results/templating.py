"""The HTML pages' one Jinja2 environment, with autoescape: a string from a results file is shown as text.

The page modules (report, fanin_report, sweep_report, upgrade_report) build data: numbers formatted
as text, plots as ``Figure``s of ``Shape``s.  The templates in ``templates/`` lay that data out; no
module builds markup from strings, so nothing has to remember to escape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pytest_udpsend.results", "templates"),
    autoescape=True,  # every template, whatever its name: escaping by construction
    undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)


SVG_TAGS = frozenset({"line", "text", "polyline", "rect", "circle"})
_ATTR = re.compile(r"[a-z][a-z0-9-]*\Z")


@dataclass(frozen=True)
class Shape:
    """One SVG element.  Tag and attribute names are this package's own; the template escapes the
    attribute values, the text and the tooltip (``<title>``), so data may go into any of those."""

    tag: str
    attrs: tuple[tuple[str, str], ...]
    text: str = ""
    title: str = ""

    def __post_init__(self) -> None:
        if self.tag not in SVG_TAGS or not all(_ATTR.match(name) for name, _ in self.attrs):
            raise ValueError(f"not an SVG element this package draws: {self.tag} {[n for n, _ in self.attrs]}")


def shape(tag: str, text: object = "", title: object = "", **attrs: object) -> Shape:
    """``shape("text", "EAGAIN", x=10, text_anchor="end")``: keyword names with ``_`` become ``-``."""
    return Shape(
        tag, tuple((name.replace("_", "-"), str(value)) for name, value in attrs.items()), str(text), str(title)
    )


@dataclass(frozen=True)
class Figure:
    """An inline SVG plot as data: its size, an optional ``<title>``, its shapes in drawing order."""

    width: float
    height: float
    shapes: Sequence[Shape]
    title: str = ""
    view_box: bool = True
    figure: bool = True  # wrapped in <figure> (a plot of its own), else inline (a bar in a table cell)

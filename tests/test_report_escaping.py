"""A results file is untrusted input: no string in it may become markup in any HTML page we render.

A fan-in job renders other runners' files; a field such as ``sndbuf_effective`` holding
``<script>`` would run in whoever opens the page.  Every page is rendered from a document whose
string fields all carry markup, and the page's parsed elements must be only the ones we write.
"""

from __future__ import annotations

import copy
from html.parser import HTMLParser
from typing import Any

import pytest

from pytest_udpsend.results import compare, fanin, fanin_report, report, store, sweep_report, upgrade_report

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
ATTR = "x' onmouseover='alert(1)"
EVIL = SCRIPT + IMG + ATTR
OLD, NEW = "6.1.0-56-amd64" + EVIL, "6.12.95" + EVIL

# the only elements our pages are made of; anything else came from the data
OURS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "table",
    "caption",
    "tr",
    "th",
    "td",
    "em",
    "strong",
    "small",
    "br",
    "ul",
    "li",
    "div",
    "section",
    "span",
    "pre",
    "details",
    "summary",
    "figure",
    "svg",
    "line",
    "text",
    "polyline",
    "rect",
    "circle",
    "a",
    "tbody",
}


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)


def assert_inert(page: str, what: str, raws: tuple[str, ...] = (SCRIPT, "<script", "<img", IMG, ATTR)) -> None:
    assert page, what
    for raw in raws:
        assert raw not in page, f"{what}: raw markup {raw!r} from the results file reaches the page"
    parsed = Elements()
    parsed.feed(page)
    assert parsed.tags <= OURS, f"{what}: elements from the data: {sorted(parsed.tags - OURS)}"
    assert not [a for a in parsed.attrs if a.startswith("on")], f"{what}: event handler attributes from the data"


def sample(kernel: str, rate: float) -> dict[str, Any]:
    hist = {"edges_us": [1, 10, 100], "counts": [0, 5, 3, 1]}
    return {
        "eagain_rate": rate,
        "pps": 1e5,
        "kernel": kernel,
        "sndbuf_effective": EVIL,
        "topology": "veth " + EVIL,
        "pressure": "hogs " + EVIL,
        "sysctls": {"net.core." + EVIL: EVIL},
        "params": {"payload" + EVIL: EVIL},
        "series": {"bucket_ms": 10, "attempts": [100] * 20, "eagain": [int(rate * 100)] * 20, "outq_max": [4096] * 20},
        "softnet": {"0": {"time_squeeze": 3}},
        "wfree": {
            "backend": "bpf" + EVIL,
            "p99_us": 12.0,
            "contexts": {"inline": 5, EVIL: 3},
            "histograms": {"inline": hist, EVIL: hist},
            "stacks": [{"context": EVIL, "text": "f <- " + EVIL, "share": 0.5}],
        },
        "diagnosis": [{"finding": "finding " + EVIL, "evidence": "evidence " + EVIL}],
    }


def document(kernel: str, rates: list[float]) -> dict[str, Any]:
    env = {
        "kernel": kernel,
        "backend": "bpf",
        "hostname": "host" + EVIL,
        "cpu_model": "cpu" + EVIL,
        "labels": {"runner" + EVIL: EVIL},
        "note" + EVIL: EVIL,
        "sysctls": {"net.core." + EVIL: EVIL},
    }
    tests = {
        f"t.py::test_{EVIL}[{i}]": {"outcome": "passed" + EVIL, "samples": [sample(kernel, r) for r in rates]}
        for i in range(2)
    }
    return store.document(env, tests)


def sweep_document() -> dict[str, Any]:
    doc = document(OLD, [0.1])
    for i, (nodeid, entry) in enumerate(sorted(doc["tests"].items())):
        entry["sweep"] = {
            "cell": nodeid,
            "knobs": {"sndbuf": 4096 << i, "force": bool(i), "budget": 8, "budget_usecs": 2000},
            "eagain_rate": 0.1 * i,
            "pps": 1e5,
            "time_squeeze": 2,
            "wfree_p99_us": 9.0,
        }
    doc["sweep"] = {"target": 0.05, "smallest_change": EVIL, "interrupted": True}
    return doc


BASE, WORSE = [0.01, 0.012, 0.011, 0.013, 0.01], [0.3, 0.31, 0.32, 0.3, 0.33]


def test_the_report_shows_markup_from_a_results_file_as_text():
    new, base = document(NEW, WORSE), document(OLD, BASE)
    page = report.render(new, base)
    assert_inert(page, "report")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    new["gate"] = compare.gate_record(compare.Settings(), 1, base, compare.compare_docs(base, new, compare.Settings()))
    assert_inert(report.render(new), "report with the gate's recorded verdicts")


def test_the_fanin_page_and_the_upgrade_view_show_markup_as_text():
    olds = [fanin.units_of(document(OLD, BASE), f"old-{EVIL}-{i}.json")[0] for i in range(2)]
    news = [fanin.units_of(document(NEW, WORSE), f"new-{EVIL}-{i}.json")[0] for i in range(2)]
    assert_inert(fanin_report.render_many(news, olds, {}), "fan-in page with a baseline")
    assert_inert(fanin_report.render_many([*olds, *news], [], {}), "fan-in page without a baseline")
    mixed = copy.deepcopy(news)
    mixed[1] = fanin.Unit(mixed[1].source, {**mixed[1].environment, "backend": "timestamp" + EVIL}, mixed[1].tests)
    assert_inert(fanin_report.render_many(mixed, olds, {}), "fan-in page with a refused group")
    view = upgrade_report.render([*olds, *news])
    assert "Upgrade view" in view
    assert_inert(view, "upgrade view")
    merged = {"format": store.FORMAT, "environment": {}, "tests": {}, "runs": [u.run() for u in [*olds, *news]]}
    assert_inert(report.render(merged), "report of a merged document")


@pytest.mark.parametrize("interrupted", [True, False])
def test_the_sweep_page_shows_markup_as_text(interrupted):
    doc = sweep_document()
    doc["sweep"]["interrupted"] = interrupted
    section = sweep_report.render(doc)
    assert "Remedy sweep" in section
    assert_inert(section, "sweep section")
    assert_inert(report.render(doc), "report with a sweep")


def test_the_report_opens_with_an_overview_linked_to_each_test_s_section():
    """issue 29 item 5: test, verdict, EAGAIN, pps, sock_wfree p99 and the first diagnosis line per test."""
    import re

    page = report.render(document(NEW, WORSE), document(OLD, BASE))
    overview = page.split('<table class="overview">')[1].split("</table>")[0]
    assert page.index('<table class="overview">') < page.index("<h2>Environment</h2>")
    links = re.findall(r'<a href="#([^"]+)">', overview)
    assert len(links) == 2 and all(f'id="{a}"' in page for a in links)
    assert (
        "regression: eagain_rate" in overview and "31.00%" in overview and "100,000" in overview and "12 us" in overview
    )
    assert "finding &lt;script&gt;" in overview


CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium to render the report")
def test_in_a_browser_the_hostile_report_has_no_element_from_the_data(tmp_path):
    """What Chromium builds from the page: our overview, sections and plots, no script or image from the data."""
    import subprocess

    page = tmp_path / "r.html"
    page.write_text(report.render(document(NEW, WORSE), document(OLD, BASE)))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert_inert(
        dom.stdout, "the DOM Chromium built", (SCRIPT, "<script", "<img", IMG)
    )  # a quote in text stays a quote
    assert (
        '<table class="overview">' in dom.stdout and '<h2 id="test-1">' in dom.stdout and dom.stdout.count("<svg") >= 6
    )

"""What a person sees first, checked in a real browser (headless Chromium): the docs site's index
and a report, as the DOM Chromium builds from them, not as the HTML strings we wrote.

CI installs Debian's chromium (ci/test.sh) and sets UDPSEND_NEED_CHROMIUM=1, so there a missing
browser fails these tests instead of skipping them; elsewhere they skip with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_udpsend.results import report, store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("UDPSEND_NEED_CHROMIUM") == "1":
            pytest.fail("chromium is not installed: ci/test.sh installs it with apt-get (Debian package chromium)")
        pytest.skip("needs Debian's chromium (apt-get install chromium) to render pages")
    return CHROMIUM


def dom(browser: str, page: Path, profile: Path) -> str:
    """The page's DOM after Chromium loaded and laid it out."""
    done = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def sample(rate: float) -> dict[str, object]:
    series = {"bucket_ms": 10, "attempts": [100] * 50, "eagain": [int(rate * 100)] * 50, "outq_max": [8192] * 50}
    hist = {"edges_us": [1, 10, 100], "counts": [0, 5, 3, 1]}
    return {
        "eagain_rate": rate,
        "pps": 1e5,
        "kernel": "6.1",
        "topology": "veth",
        "series": series,
        "softnet": {"0": {"time_squeeze": 1}, "1": {"time_squeeze": 9}},
        "wfree": {"backend": "bpf", "histograms": {"inline": hist, "softirq": hist}},
    }


def test_a_report_opens_with_its_overview_table_and_draws_plots(chromium, tmp_path):
    """The overview (one row per test, linked to its section) comes before everything else."""
    doc = store.document(
        {"kernel": "6.1.0-56-amd64"},
        {
            "t.py::test_rps": {"outcome": "passed", "samples": [sample(0.1 + i / 1000) for i in range(5)]},
            "t.py::test_plain": {"outcome": "failed", "samples": [sample(0.0) for _ in range(3)]},
        },
    )
    page = tmp_path / "report.html"
    page.write_text(report.render(doc))
    text = dom(chromium, page, tmp_path / "profile")
    overview = text.find('class="overview"')
    assert 0 <= overview < text.find("<h2>Environment</h2>"), "the overview table is not the first thing"
    table = text[overview : text.find("</table>", overview)]
    assert "test_rps" in table and "test_plain" in table and 'href="#test-' in table
    assert text.count("<svg") >= 2 and "EAGAIN rate over the run" in text


def test_the_docs_index_renders_with_its_navigation(chromium, tmp_path):
    """The docs build (as ci/docs.sh builds them) and their index shows the four parts in its navigation."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    text = dom(chromium, site / "index.html", tmp_path / "profile")
    words = re.sub(r"<[^>]+>", "", text)  # the highlighted example is split into spans
    assert "pytest-udpsend" in words and "@pytest.mark.topology(rps_cpus=[1])" in words
    for part in ("Tutorials", "How-to", "Reference", "Explanation"):
        assert part in text, f"the docs index has no {part} in its navigation"
    reference = dom(chromium, site / "reference" / "markers" / "index.html", tmp_path / "profile")
    assert "eagain_rate" in reference and "candidate" in reference


def test_a_two_run_test_shows_named_series_readable_ticks_and_no_empty_plot(chromium, tmp_path):
    """The story's remedy test as Chromium lays it out: its two runs are named by their send buffer, the
    EAGAIN axis reads 0 to 40%, and the all-zero time_squeeze is a line of text, not an empty frame."""

    def run(rate: float, effective: int, force: bool) -> dict[str, object]:
        return {
            **sample(rate),
            "softnet": {"0": {"time_squeeze": 0}, "1": {"time_squeeze": 0}},
            "sndbuf_requested": 8 << 20,
            "sndbuf_effective": effective,
            "params": {"sndbuf": 8 << 20, "force_sndbuf": force},
        }

    doc = store.document(
        {"kernel": "6.18"},
        {"t.py::test_remedy": {"outcome": "passed", "samples": [run(0.36, 9216, False), run(0.0, 16 << 20, True)]}},
    )
    page = tmp_path / "report.html"
    page.write_text(report.render(doc))
    text = dom(chromium, page, tmp_path / "profile")
    eagain = text[text.find("<title>EAGAIN rate over the run</title>") :]
    eagain = eagain[: eagain.find("</svg>")]
    assert "sndbuf 9 KB clamped" in eagain and "sndbuf 16 MB forced" in eagain and "run 1" not in eagain
    assert all(f">{tick}</text>" in eagain for tick in ("10%", "20%", "30%", "40%", "100 ms", "400 ms"))
    assert "<title>time_squeeze per CPU" not in text and "time_squeeze (sndbuf 16 MB forced): 0 on every CPU" in text

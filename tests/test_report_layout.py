"""The report's layout, as a reader meets it: series named by what differs between a test's runs, no
plot drawn for a series of zeros (one line of text instead), and axis ticks at readable numbers."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from typing import Any

import pytest

from pytest_udpsend.results import report, store


class Plots(HTMLParser):
    """Per inline SVG: its title and the text of its <text> elements; and the page's flat lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.svgs: list[dict[str, Any]] = []
        self.flat: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            self.svgs.append({"title": "", "texts": []})
        elif tag == "title" and self.svgs and not self.svgs[-1]["title"] and self._in is None:
            self._in = "title"
        elif tag == "text" and self.svgs:
            self._in = "text"
            self.svgs[-1]["texts"].append("")
        elif tag == "p" and ("class", "flat") in attrs:
            self._in = "flat"
            self.flat.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "text", "p") and self._in in (tag, "flat" if tag == "p" else None):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.svgs[-1]["title"] += data
        elif self._in == "text":
            self.svgs[-1]["texts"][-1] += data
        elif self._in == "flat":
            self.flat[-1] += data

    def plot(self, title: str) -> dict[str, Any]:
        """The first plot whose title starts so (the story's test comes first on the page)."""
        found = [s for s in self.svgs if s["title"].startswith(title)]
        assert found, f"no plot titled {title!r} in {[s['title'] for s in self.svgs]}"
        return found[0]


def parse(page: str) -> Plots:
    plots = Plots()
    plots.feed(page)
    return plots


def run(
    rate: float, effective: int, force: bool, squeeze: tuple[int, int] = (0, 0), outq: int = 8192
) -> dict[str, Any]:
    """A sample as the plugin saves it: the sender asked for 8 MB in both runs; what differs is SO_SNDBUFFORCE."""
    series = {"bucket_ms": 10, "attempts": [100] * 37, "eagain": [round(rate * 100)] * 37, "outq_max": [outq] * 37}
    hist = {"edges_us": [1, 10, 100], "counts": [0, 5, 3, 1]}
    return {
        "eagain_rate": rate,
        "pps": 1e5,
        "kernel": "6.18",
        "topology": "veth rps_cpus=[1]",
        "series": series,
        "sndbuf_requested": 8 << 20,
        "sndbuf_effective": effective,
        "params": {"sndbuf": 8 << 20, "force_sndbuf": force, "cpu": 0, "receiver_cpu": 1, "duration": 1.0},
        "sysctls": {"net.core.wmem_max": "4608"},
        "softnet": {"0": {"time_squeeze": squeeze[0]}, "1": {"time_squeeze": squeeze[1]}},
        "wfree": {"backend": "bpf", "p99_us": 12.0, "histograms": {"inline": hist}},
    }


STORY = "examples/test_eagain_story.py::test_a_forced_send_buffer_absorbs_the_deferral"


def story_page() -> Plots:
    """The story's remedy test (the clamped, then the forced buffer, no time_squeeze anywhere) and a test
    repeated three times with no EAGAIN and no SIOCOUTQ at all."""
    doc = store.document(
        {"kernel": "6.18"},
        {
            STORY: {"outcome": "passed", "samples": [run(0.36, 9216, False), run(0.0, 16 << 20, True, outq=2300)]},
            "t.py::test_repeated": {
                "outcome": "passed",
                "samples": [run(0.0, 9216, False, (1, 9), outq=0) for _ in range(3)],
            },
        },
    )
    return parse(report.render(doc))


# ---- item: series labelled by what they are


def test_a_test_s_two_runs_are_named_by_the_send_buffer_they_had():
    page = story_page()
    for title in ("EAGAIN rate over the run", "SIOCOUTQ occupancy"):
        texts = page.plot(title)["texts"]
        assert "sndbuf 9 KB clamped" in texts and "sndbuf 16 MB forced" in texts, texts
        assert not [t for t in texts if t.startswith("run ")], f"{title}: series still named run 1 / run 2"
    # the plots of one run (the last) say which run they show
    assert page.plot("sock_wfree latency histogram by context (sndbuf 16 MB forced)")


def test_run_labels_name_what_differs_and_number_only_repeats():
    clamped, forced = run(0.3, 9216, False), run(0.0, 16 << 20, True)
    assert report.run_labels([clamped, forced]) == ["sndbuf 9 KB clamped", "sndbuf 16 MB forced"]
    assert report.run_labels([clamped, clamped, clamped]) == ["run 1", "run 2", "run 3"]  # repeats: nothing differs
    assert report.run_labels([clamped, forced, clamped, forced]) == [
        "sndbuf 9 KB clamped (1)",
        "sndbuf 16 MB forced (1)",
        "sndbuf 9 KB clamped (2)",
        "sndbuf 16 MB forced (2)",
    ]
    budget = {**clamped, "sysctls": {"net.core.wmem_max": "4608", "net.core.netdev_budget": "8"}}
    assert report.run_labels([clamped, budget]) == ["run 1", "netdev_budget=8"]  # a sysctl only one run recorded
    rps = {**clamped, "params": {**clamped["params"], "receiver_cpu": 0}, "pressure": "2 hogs on CPUs [1]"}
    assert report.run_labels([clamped, rps]) == [
        "no CPU pressure, receiver_cpu=1",
        "2 hogs on CPUs [1], receiver_cpu=0",
    ]


def test_interleaved_runs_are_named_by_their_arm_and_round():
    base, cand = run(0.1, 9216, False), run(0.3, 9216, False)
    entry = {
        "outcome": "passed",
        "samples": [base, base],
        "interleave": {
            "rounds": [
                {"order": "BC", "baseline": [base], "candidate": [cand]},
                {"order": "CB", "baseline": [base], "candidate": [cand]},
            ],
            "paired": [],
        },
    }
    assert [name for name, _ in report.runs(entry)] == [
        "baseline, round 1",
        "candidate, round 1",
        "baseline, round 2",
        "candidate, round 2",
    ]
    texts = parse(report.render(store.document({"kernel": "6.18"}, {"t.py::test_ab": entry}))).plot(
        "EAGAIN rate over the run"
    )["texts"]
    assert "candidate, round 2" in texts and "baseline, round 1" in texts


# ---- item: draw only what carries information


def test_an_all_zero_time_squeeze_is_a_line_of_text_not_an_empty_plot():
    page = story_page()
    story = [s for s in page.svgs if s["title"].startswith("time_squeeze")]
    assert len(story) == 1, "only the repeated test had time_squeeze to draw"
    assert "cpu1" in story[0]["texts"]
    assert "time_squeeze (sndbuf 16 MB forced): 0 on every CPU" in page.flat


def test_a_test_without_eagain_or_queueing_gets_lines_not_flat_plots():
    page = story_page()
    titles = [s["title"] for s in page.svgs]
    assert (
        titles.count("EAGAIN rate over the run") == 1 and sum(t.startswith("SIOCOUTQ") for t in titles) == 1
    )  # the story's only
    assert "EAGAIN: 0 throughout all 3 runs" in page.flat
    assert "SIOCOUTQ occupancy: 0 bytes throughout all 3 runs" in page.flat


def test_a_baseline_metric_that_is_zero_on_both_sides_is_a_line():
    zero = [run(0.0, 9216, False) for _ in range(5)]
    new = store.document({"kernel": "6.18"}, {"t.py::x": {"outcome": "passed", "samples": zero}})
    base = store.document({"kernel": "6.18"}, {"t.py::x": {"outcome": "passed", "samples": zero}})
    page = parse(report.render(new, base))
    assert not [s for s in page.svgs if s["title"].startswith("eagain_rate:")]
    assert any(line.startswith("eagain_rate: 0 in every baseline and new sample") for line in page.flat)
    assert [s for s in page.svgs if s["title"].startswith("pps:")], "a metric that is not zero is still drawn"


# ---- item: readable ticks


@pytest.mark.parametrize(
    ("top", "ticks"),
    [
        (0.735, [0, 0.2, 0.4, 0.6, 0.8]),  # not 0, 0.367, 0.735
        (1.0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.36, [0, 0.1, 0.2, 0.3, 0.4]),
        (12, [0, 2.5, 5, 7.5, 10, 12.5]),
        (9216, [0, 2000, 4000, 6000, 8000, 10000]),
        (0.0042, [0, 0.001, 0.002, 0.003, 0.004, 0.005]),
        (3, [0, 1, 2, 3]),
        (0, [0, 1]),
        (math.nan, [0, 1]),
    ],
)
def test_nice_ticks(top, ticks):
    assert report.nice_ticks(top) == pytest.approx(ticks)


def test_nice_ticks_are_1_2_2_5_or_5_times_a_power_of_ten_and_reach_the_top():
    for k in range(-40, 40):
        top = 1.37**k
        ticks = report.nice_ticks(top)
        step = ticks[1] - ticks[0]
        mantissa = round(step / 10 ** math.floor(math.log10(step) + 1e-9), 6)
        assert mantissa in (1, 2, 2.5, 5), (top, ticks)
        assert ticks[0] == 0 and ticks[-1] >= top * (1 - 1e-9) and ticks[-2] < top and len(ticks) <= 6, (top, ticks)


def test_integer_ticks_for_counts_and_rounds():
    assert report.nice_ticks(12, integer=True) == [0, 5, 10, 15]  # no step of 2.5 rounds
    assert report.nice_ticks(0.4, integer=True) == [0, 1]


def test_tick_labels_carry_the_unit_in_one_scale():
    assert report.axis(0.36, "%").labels() == ["0", "10%", "20%", "30%", "40%"]
    assert report.axis(9216, "B").labels() == ["0", "2 kB", "4 kB", "6 kB", "8 kB", "10 kB"]
    assert report.axis(0.37, "s").labels() == ["0", "100 ms", "200 ms", "300 ms", "400 ms"]
    assert report.axis(1.0, "s").labels() == ["0", "0.2 s", "0.4 s", "0.6 s", "0.8 s", "1.0 s"]
    assert report.axis(12, "").labels() == ["0", "2.5", "5.0", "7.5", "10.0", "12.5"]
    assert report.axis(2500, "us").labels() == ["0", "0.5 ms", "1.0 ms", "1.5 ms", "2.0 ms", "2.5 ms"]


def test_the_rendered_plots_show_those_ticks():
    page = story_page()
    eagain = page.plot("EAGAIN rate over the run")["texts"]  # rates up to 0.36, 37 buckets of 10 ms
    assert [t for t in eagain if t.endswith("%") or t == "0"][:5] == ["0", "10%", "20%", "30%", "40%"]
    assert {"100 ms", "200 ms", "300 ms", "400 ms"} <= set(eagain)
    outq = page.plot("SIOCOUTQ occupancy")["texts"]
    assert {"2 kB", "4 kB", "6 kB", "8 kB", "10 kB"} <= set(outq)
    assert not [t for t in eagain + outq if "0.36" in t or "4.1e+03" in t or "0.18" in t], "a tick at a data value"


def test_the_ran_with_table_lists_each_parameter_value_the_runs_had():
    doc = store.document(
        {"kernel": "6.18"}, {STORY: {"outcome": "passed", "samples": [run(0.3, 9216, False), run(0.0, 16 << 20, True)]}}
    )
    assert "force_sndbuf=False | True" in report.render(doc)

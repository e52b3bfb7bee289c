"""Remedy sweeps: the fixture, the ``udpsend sweep`` command, its report, and Ctrl-C in the middle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_udpsend.errors import ConfigError
from pytest_udpsend.measure.result import SendResult
from pytest_udpsend.results import store, sweep_report
from pytest_udpsend.results.sweep import Cell, CellResult, Grid, baseline, make_grid, smallest_change
from tests.own_sender import counts, own_sender

UDPSEND = [sys.executable, "-m", "pytest_udpsend.cli"]


@pytest.mark.topology(rps_cpus=[1])
@pytest.mark.udpsend(duration=0.3, cpu=0, receiver_cpu=1)
def test_a_4x3_sweep_finishes_and_restores_the_knobs(host_unchanged, udpsend_sweep):
    sweep = udpsend_sweep(sndbuf=[16 << 10, 64 << 10, 256 << 10, 8 << 20], force="yes", budget=[8, 64, 300], repeat=1)
    wall = sum(c.wall_s for c in sweep.cells)  # the cells' own time: not a wait for another worker's lock
    assert [c.cell.id() for c in sweep.cells][:2] == [
        "sweep[sndbuf=16384,force=yes,budget=8]",
        "sweep[sndbuf=16384,force=yes,budget=64]",
    ]
    assert len(sweep.cells) == 12 and not sweep.interrupted
    for c in sweep.cells:
        (s,) = c.samples
        assert s.sysctls["net.core.netdev_budget"] == str(c.cell.budget)  # each cell ran with its own budget
        assert s.sndbuf_effective == 2 * c.cell.sndbuf and s.sent > 0
    assert wall < 12 * 3.0, f"12 cells of 0.3 s took {wall:.1f} s"
    assert sweep.cell(sndbuf=8 << 20, budget=300).samples[0].eagain_rate < 0.01  # 8 MB forced absorbs RPS deferral
    assert "unchanged" in sweep.smallest_change(0.5) or "no change needed" in sweep.smallest_change(0.5)


def test_bad_grids_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="at least two cells"):
        make_grid(sndbuf=[65536])
    with pytest.raises(ConfigError, match="force='maybe'"):
        make_grid(sndbuf=[65536], force="maybe")
    with pytest.raises(ConfigError, match="budget="):
        make_grid(budget=[0, 300])


def _cell(rate: float, **knobs) -> CellResult:
    return CellResult(Cell(**knobs), [SendResult(eagain_rate=rate)])


def test_the_smallest_change_is_the_fewest_and_smallest_steps():
    grid = Grid(sndbuf=(8 << 20, 256 << 10), force=(False, True), budget=(300, 600))
    base = baseline(grid, {"net.core.netdev_budget": 300, "net.core.netdev_budget_usecs": 8000}, 0)
    cells = [
        _cell(0.2, sndbuf=8 << 20, budget=300),
        _cell(0.002, sndbuf=256 << 10, force=True, budget=300),
        _cell(0.004, sndbuf=8 << 20, force=True, budget=300),
        _cell(0.001, sndbuf=8 << 20, force=True, budget=600),
        _cell(0.1, sndbuf=8 << 20, budget=600),
    ]
    assert smallest_change(cells, base, 0.01) == "sndbuf 8 MB forced, budget unchanged: 0.40% (target 1.00%)"
    assert smallest_change(cells[:1], base, 0.5).startswith("no change needed")
    assert smallest_change([cells[0], cells[4]], base, 0.01).startswith("no cell brings EAGAIN under 1.00%")


def _hogs_of(pid: int) -> list[str]:
    """CPU hogs started by ``pid`` still alive (their argv ends with the parent's pid)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and b"PR_SET_PDEATHSIG" in b" ".join(argv) and argv[-2] == str(pid).encode():
            out.append(cmdline.parent.name)
    return out


def test_ctrl_c_mid_sweep_restores_the_host_and_keeps_the_cells(tmp_path, host_unchanged):
    out = tmp_path / "sweep.json"
    argv = [
        *UDPSEND,
        "sweep",
        "--rps-cpus",
        "1-1",
        "--cpu",
        "0",
        "--receiver-cpu",
        "1",
        "--cpu-pressure",
        "1-1:2",
        "--duration",
        "0.3",
        "--sndbuf",
        "8M,64K",
        "--force",
        "both",
        "--budget",
        "8,32,64,300",
        "--json",
        str(out),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("udpsend sweep: 3/16"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + stderr
    doc = json.loads(out.read_text())
    assert doc["sweep"]["interrupted"] is True and 3 <= doc["sweep"]["cells"] < 16
    assert len(doc["tests"]) == doc["sweep"]["cells"] and "smallest change:" in stdout
    assert not _hogs_of(proc.pid)
    assert sweep_report.render(store.load(out)).count("<svg") >= 1


def test_udpsend_report_shows_the_heatmap(tmp_path):
    """Rendered from a saved sweep document (no measurement): one rect per cell, the answer on top."""
    cells = [
        _cell(r, sndbuf=s, force=True, budget=b)
        for s, r0 in ((16 << 10, 0.3), (8 << 20, 0.0))
        for b, r in ((8, r0), (300, r0 / 2))
    ]
    doc = store.document(
        {"kernel": os.uname().release},
        {
            c.cell.id(): {"outcome": "passed", "samples": [s.to_dict() for s in c.samples], "sweep": c.summary()}
            for c in cells
        },
    )
    doc["sweep"] = {"target": 0.01, "smallest_change": "sndbuf 8 MB forced, budget unchanged: 0.00%"}
    path = tmp_path / "s.json"
    store.write(path, doc)
    subprocess.run([*UDPSEND, "report", str(path), "-o", str(tmp_path / "r.html")], check=True, capture_output=True)
    page = (tmp_path / "r.html").read_text()
    assert "Remedy sweep: 4 cells" in page and "smallest change:</strong> sndbuf 8 MB forced" in page
    assert page.count('stroke="#1a7f37"') == 2  # the two cells under the target are outlined
    assert "EAGAIN rate against sndbuf, per budget" in page and "<script" not in page


def test_a_sweep_runs_your_own_program_at_every_cell(tmp_path, host_unchanged):
    """``udpsend sweep --exec``: the program runs once per cell and sample, under that cell's budget,
    measured from outside; each sample's EAGAIN is exactly the program's own count."""
    sender = own_sender(tmp_path)
    out = tmp_path / "sweep.json"
    argv = [
        *UDPSEND,
        "sweep",
        "--rps-cpus",
        "1-1",
        "--cpu",
        "0",
        "--receiver-cpu",
        "1",
        "--duration",
        "5",
        "--budget",
        "8,300",
        "--repeat",
        "2",
        "--json",
        str(out),
        "--exec",
        "--",
        str(sender),
        "0.3",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    assert doc["sweep"]["cells"] == 2 and "smallest change:" in done.stdout
    for entry in doc["tests"].values():
        assert len(entry["samples"]) == 2
        for s in entry["samples"]:
            assert s["process"]["argv"] == [str(sender), "0.3"] and s["process"]["exited"]
            own = counts(s["process"]["stdout"])
            assert (s["sent"], s["eagain"]) == (own["sent"], own["eagain"]) and own["sent"] > 0
            assert s["sysctls"]["net.core.netdev_budget"] == str(entry["sweep"]["knobs"]["budget"])
    assert sorted(e["sweep"]["knobs"]["budget"] for e in doc["tests"].values()) == [8, 300]


def test_a_sweep_of_your_own_program_refuses_the_send_buffer(tmp_path):
    done = subprocess.run(
        [*UDPSEND, "sweep", "--sndbuf", "64K,1M", "--json", str(tmp_path / "s.json"), "--exec", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "udpsend sweep: a sweep of your own program (--exec) cannot sweep --sndbuf: the "
        "send buffer is your program's own SO_SNDBUF, out of the plugin's reach; sweep "
        "--budget, --budget-usecs or --workers, or run your program once per buffer size"
    ]
    assert not (tmp_path / "s.json").exists()

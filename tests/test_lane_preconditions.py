"""--udpsend-kernel checks everything the lane needs before anything runs: a missing part is a
usage error (exit 4) with one sentence per part naming the fix, never a traceback.  No VM boots."""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import pytest

from pytest_udpsend.frontend.guest import GuestSelection
from pytest_udpsend.lane import vm

VENV_BIN = str(Path(sys.executable).parent)


def fake_image(root: Path, release: str = "9.9.9-fake") -> Path:
    """A file with a bzImage setup header naming ``release``, at ROOT/boot/vmlinuz-RELEASE."""
    header = bytearray(0x400)
    header[0x202:0x206] = b"HdrS"
    header[0x20E:0x210] = (0x100).to_bytes(2, "little")
    header[0x300 : 0x300 + len(release) + 1] = release.encode() + b"\0"
    image = root / "boot" / f"vmlinuz-{release}"
    image.parent.mkdir(parents=True)
    image.write_bytes(bytes(header))
    return image


def run_without(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    """pytest from the system python (whose directory holds no vng) with PATH lacking the venv."""
    pytester.makepyfile("def test_x():\n    pass\n")
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setenv("PYTHONPATH", f"{Path(vm.__file__).parents[2]}:{sysconfig.get_paths()['purelib']}")
    return pytester.run("/usr/bin/python3", "-m", "pytest", "-p", "no:cacheprovider", *args)


@pytest.mark.skipif(
    not Path("/usr/bin/python3").exists() or Path("/usr/bin/vng").exists(), reason="needs a system python beside no vng"
)
def test_no_virtme_ng_no_modules_no_headers_is_one_usage_error(pytester, monkeypatch, tmp_path):
    image = fake_image(tmp_path / "root")
    result = run_without(pytester, monkeypatch, "--udpsend-kernel", str(image), "--udpsend-backend", "bpf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "virtme-ng (vng) is not installed for /usr/bin/python3: pip install 'virtme-ng>=1.42'" in err
    assert f"the image's modules are not at {tmp_path}/root/lib/modules/9.9.9-fake" in err
    assert "udpsend prepare-kernel 9.9.9-fake sets it up" in err
    assert "INTERNALERROR" not in err + result.stdout.str() and "Traceback" not in err


def test_missing_headers_for_bcc_are_named_under_the_bpf_backend(tmp_path):
    image = fake_image(tmp_path / "root")
    moddir = tmp_path / "root/lib/modules/9.9.9-fake"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("")
    bpf = vm.preconditions(image, "9.9.9-fake", "bpf")
    assert any(
        f"needs the kernel headers linked at {moddir}/build for bcc: apt-get install linux-headers-9.9.9-fake" in p
        for p in bpf
    )
    assert not any("headers" in p for p in vm.preconditions(image, "9.9.9-fake", "timestamp"))


def test_no_qemu_on_path_is_named(pytester, monkeypatch, tmp_path):
    image = fake_image(tmp_path / "root")
    pytester.makepyfile("def test_x():\n    pass\n")
    monkeypatch.setenv("PATH", VENV_BIN)  # vng is there, qemu is not
    result = pytester.runpytest_subprocess("--udpsend-kernel", str(image), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "qemu-system-x86_64 is not on PATH: apt-get install qemu-system-x86" in result.stderr.str()


def test_guest_selection_keeps_exactly_the_hosts_ids(tmp_path):
    """Ids with spaces and brackets are compared as strings: nothing to quote or parse."""
    (tmp_path / "selection.json").write_text(json.dumps(["t.py::a[x y]", "t.py::b[[1]]"]))
    sel = GuestSelection(tmp_path / "selection.json")

    class Item:
        def __init__(self, nodeid: str) -> None:
            self.nodeid = nodeid

    class Hook:
        deselected: list[Item] = []

        def pytest_deselected(self, items: list[Item]) -> None:
            self.deselected += items

    class Config:
        hook = Hook()

    items = [Item("t.py::a[x y]"), Item("t.py::a[x]"), Item("t.py::b[[1]]")]
    sel.pytest_collection_modifyitems(Config(), items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == ["t.py::a[x y]", "t.py::b[[1]]"]
    assert [i.nodeid for i in Config.hook.deselected] == ["t.py::a[x]"]
    assert json.loads((tmp_path / "collected.json").read_text()) == ["t.py::a[x y]", "t.py::a[x]", "t.py::b[[1]]"]

"""netem, prio and mq descriptions, and kinds whose sch_* module the kernel lacks."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
from pathlib import Path

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from pytest_udpsend.errors import ConfigError, PrivilegeError
from pytest_udpsend.host import qdisc


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("netem delay 10ms 2ms loss 1%", {"delay": 10_000, "jitter": 2000, "loss": 1.0}),
        (
            "netem delay 100ms 10ms 25% loss random 0.5 25%",
            {"delay": 100_000, "jitter": 10_000, "delay_corr": 25.0, "loss": 0.5, "loss_corr": 25.0},
        ),
        (
            "netem delay 5ms reorder 25% 50% gap 5",
            {"delay": 5000, "prob_reorder": 25.0, "corr_reorder": 50.0, "gap": 5},
        ),
        ("netem duplicate 1% corrupt 0.1%", {"duplicate": 1.0, "prob_corrupt": 0.1}),
        ("netem rate 10mbit limit 3000", {"rate": 1_250_000, "limit": 3000}),
        ("netem delay 1s", {"delay": 1_000_000}),
    ],
)
def test_netem_parses_as_tc_netem_reads_it(text, params):
    spec = qdisc.parse(text)
    assert spec.kind == "netem" and spec.params == params


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("netem delay", "netem delay needs a value"),
        ("netem delay 10ms loss", "netem loss needs a value"),
        ("netem delay soon", "netem delay: 'soon' is not a time"),
        ("netem loss 150%", "not a percentage from 0 to 100"),
        ("netem delay 10ms 2ms 25% 4", "netem has no parameter '4'"),
        ("netem slot 1ms", "netem has no parameter 'slot'; accepted: delay, loss, duplicate, reorder, corrupt, gap"),
        ("netem reorder 25%", "reorder needs a delay"),
        ("netem delay 10ms gap 5", "gap needs reorder"),
        ("netem rate 100gbit", "netem rate: '100gbit' is above 34gbit"),
        ("prio bands 1", "prio needs 2 to 16 bands"),
        ("prio bands 2", "every priomap entry below bands"),
        ("prio priomap 1 2", "accepted: bands N, priomap followed by 16 band numbers"),
    ],
)
def test_netem_and_prio_errors_name_the_part(text, message):
    with pytest.raises(ConfigError) as info:
        qdisc.parse(text)
    assert message in str(info.value) and text in str(info.value)


def test_prio_defaults_to_tc_priomap():
    assert qdisc.parse("prio").params == {"bands": 3, "priomap": (1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)}
    assert qdisc.parse("prio bands 2 priomap " + "1 0 " * 8).params["bands"] == 2


def _root(
    tmp_path: Path, config: str | None = None, dep: str | None = None, builtin: str = "", loaded: str = ""
) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text(loaded)
    if config is not None:
        (tmp_path / "proc/config.gz").write_bytes(gzip.compress(config.encode()))
    if dep is not None:
        moddir = tmp_path / "lib/modules/6.1.0-x"
        moddir.mkdir(parents=True)
        (moddir / "modules.dep").write_text(dep)
        (moddir / "modules.builtin").write_text(builtin)
    return tmp_path


@pytest.mark.parametrize(
    ("config", "dep", "builtin", "loaded", "why"),
    [
        ("# CONFIG_NET_SCH_NETEM is not set\n", None, "", "", "CONFIG_NET_SCH_NETEM is not set"),
        ("CONFIG_NET_SCH_NETEM=y\n", None, "", "", None),
        ("CONFIG_NET_SCH_NETEM=m\n", "kernel/net/core/veth.ko:\n", "", "", "built as a module but not installed"),
        ("CONFIG_NET_SCH_NETEM=m\n", "kernel/net/sched/sch_netem.ko.xz:\n", "", "", None),
        (None, "kernel/net/core/veth.ko:\n", "kernel/net/sched/sch_tbf.ko\n", "", "no sch_netem in"),
        (None, "", "kernel/net/sched/sch_netem.ko\n", "", None),
        (None, None, "", "sch_netem 40960 0 - Live 0x0\n", None),
        (None, None, "", "", None),  # nothing to tell by: the kernel is asked
    ],
)
def test_missing_module_reads_modules_builtin_dep_and_config(tmp_path, config, dep, builtin, loaded, why):
    root = _root(tmp_path, config, dep, builtin, loaded)
    found = qdisc.missing_module("netem", "6.1.0-x", root)
    assert found == why if why is None else why in found
    assert qdisc.missing_module("pfifo", "6.1.0-x", root) is None  # part of the core


def test_the_sentence_names_the_module_and_the_fix(tmp_path):
    root = _root(tmp_path, "# CONFIG_NET_SCH_NETEM is not set\n")
    text = qdisc.unavailable(qdisc.parse("netem delay 10ms"), "6.1.0-x", root)
    assert text == (
        "qdisc 'netem delay 10ms': kernel 6.1.0-x has no sch_netem (CONFIG_NET_SCH_NETEM is not set): "
        "modprobe sch_netem where it is a module, or run on a kernel built with CONFIG_NET_SCH_NETEM "
        "(e.g. a Debian kernel through --udpsend-kernel)"
    )


class RefusingIpr:
    def __init__(self, code: int) -> None:
        self.code = code

    def tc(self, *args, **kwargs):
        raise NetlinkError(self.code, os.strerror(self.code))


def test_a_kind_the_kernel_does_not_know_gets_the_module_sentence(monkeypatch):
    monkeypatch.setattr(qdisc, "missing_module", lambda kind, release=None, root=None: None)  # undecidable
    with pytest.raises(
        PrivilegeError, match=r"has no sch_tbf \(the kernel does not know this qdisc kind\): modprobe sch_tbf"
    ):
        qdisc.apply(qdisc.parse("tbf rate 1mbit burst 10kb latency 5ms"), RefusingIpr(errno.ENOENT), 2)
    with pytest.raises(ConfigError, match="mq needs a device with several TX queues"):
        qdisc.apply(qdisc.parse("mq"), RefusingIpr(errno.EOPNOTSUPP), 2)
    with pytest.raises(NetlinkError, match="Invalid argument"):
        qdisc.apply(qdisc.parse("pfifo limit 10"), RefusingIpr(errno.EINVAL), 2)


@pytest.mark.skipif(qdisc.missing_module("netem") is None, reason="this kernel has sch_netem (or cannot tell)")
def test_netem_on_a_kernel_without_sch_netem_is_one_sentence_not_a_traceback(pytester):
    """This host's kernel (6.18, CONFIG_NET_SCH_NETEM unset, no modules): the test that asks
    for netem errors at set-up with the sentence; the others in the run are untouched."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.topology(qdisc="netem delay 10ms loss 1%")
        def test_netem(veth):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--udpsend-require-privileges")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "has no sch_netem" in out and "modprobe sch_netem" in out and "CONFIG_NET_SCH_NETEM" in out
    assert "Traceback" not in out and "INTERNALERROR" not in out


@pytest.mark.topology(qdisc="mq")
def test_mq_on_the_sender_veth(veth):
    """mq, with no clsact: the veth has more than one TX queue, so the kernel takes it."""
    out = subprocess.run(
        ["tc", "-n", veth.sender.name, "qdisc", "show", "dev", veth.sender.ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "qdisc mq 1: root" in out

"""Issue 24 item 10: bad input is refused in one sentence at collection or option-parse time.

Every number a user gives (a marker argument, an option, an ini value) goes through the one
check in ``measure/params.number``: a real int or float (a bool is not a number here, though
Python counts True as 1), finite, within the range the argument accepts.
"""

from __future__ import annotations

import pytest

from pytest_udpsend import cli


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("eagain_rate(max=float('nan'))", "@pytest.mark.eagain_rate: max=nan: must be a number from 0 to 1"),
        ("eagain_rate(min=5)", "@pytest.mark.eagain_rate: min=5: must be a number from 0 to 1"),
        ("eagain_rate(max=True)", "@pytest.mark.eagain_rate: max=True: must be a number from 0 to 1"),
        ("time_squeeze(max=float('inf'))", "@pytest.mark.time_squeeze: max=inf: must be a finite number of 0 or more"),
        (
            "wfree_latency(p99_us=float('nan'))",
            "@pytest.mark.wfree_latency: p99_us=nan: must be a finite number of 0 or more",
        ),
        ("wfree_latency()", "@pytest.mark.wfree_latency: no bound given, so nothing would be checked"),
        ("wfree_latency(kernel='<6.5')", "@pytest.mark.wfree_latency: no bound given, so nothing would be checked"),
        (
            "udpsend_baseline(tolerance=float('nan'))",
            "@pytest.mark.udpsend_baseline: tolerance=nan: must be a finite number of 0 or more",
        ),
        ("udpsend_baseline(tolerance=True)", "@pytest.mark.udpsend_baseline: tolerance=True: must be a finite number"),
        ("cpu_pressure(nice=True)", "@pytest.mark.cpu_pressure: nice=True: must be an integer from -20 to 19"),
        ("cpu_pressure(cpu_max=True)", "@pytest.mark.cpu_pressure: cpu_max=True: must be a number from 0.01 to 1"),
        (
            "cpu_pressure(cpu_max=float('nan'))",
            "@pytest.mark.cpu_pressure: cpu_max=nan: must be a number from 0.01 to 1",
        ),
        ("udpsend(rate=float('inf'))", "@pytest.mark.udpsend: rate=inf: must be a number from 1 to 5e+07"),
        (
            "topology(qdisc='tbf rate 1bit burst 32kb latency 50ms')",
            "@pytest.mark.topology: qdisc 'tbf rate 1bit burst 32kb latency 50ms': rate: '1bit' is below 8kbit",
        ),
        (
            "topology(qdisc='netem delay 99999999999s')",
            "@pytest.mark.topology: qdisc 'netem delay 99999999999s': netem delay: '99999999999s' is above 274s",
        ),
        ("topology(qdisc='netem delay 10ms rate 7bit')", "netem rate: '7bit' is below 8kbit"),
        ("topology(qdisc='tbf rate 50gbit burst 32kb latency 50ms')", "rate: '50gbit' is above 34gbit"),
        ("topology(qdisc='tbf rate 200mbit burst 32kb latency 200s')", "rate x latency + burst is 5e+09 bytes"),
        ("topology(qdisc='pfifo limit 99999999999')", "limit: '99999999999' is above 4294967295"),
    ],
)
def test_bad_marker_number_is_one_sentence_at_collection(pytester, marker, expected):
    pytester.makepyfile(f"import pytest\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    result = pytester.runpytest()
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, out
    assert "ERROR collecting" in out and expected in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--udpsend-lock-timeout", "nan"],
            "argument --udpsend-lock-timeout: 'nan': must be a number from 0 to 604800 (seconds)",
        ),
        (
            ["--udpsend-lock-timeout", "inf"],
            "argument --udpsend-lock-timeout: 'inf': must be a number from 0 to 604800",
        ),
        (["--udpsend-lock-timeout", "-5"], "argument --udpsend-lock-timeout: '-5': must be a number from 0 to 604800"),
        (
            ["--udpsend-kernel-timeout", "-1"],
            "argument --udpsend-kernel-timeout: '-1': must be a number from 1 to 604800",
        ),
        (
            ["--udpsend-kernel-timeout", "nan"],
            "argument --udpsend-kernel-timeout: 'nan': must be a number from 1 to 604800",
        ),
        (["--udpsend-repeat", "0"], "argument --udpsend-repeat: '0': must be an integer from 1 to 1000"),
        (
            ["--udpsend-nic-pair=../../../etc,lo"],
            "--udpsend-nic-pair '../../../etc,lo': '../../../etc' is not an interface name",
        ),
        (
            ["--udpsend-nic-pair=eth0,a-name-of-16-byte"],
            "--udpsend-nic-pair 'eth0,a-name-of-16-byte': 'a-name-of-16-byte' is not an interface name",
        ),
        (["--udpsend-nic-pair=..,lo"], "--udpsend-nic-pair '..,lo': '..' is not an interface name"),
        (["--udpsend-nic-pair=eth 0,lo"], "--udpsend-nic-pair 'eth 0,lo': 'eth 0' is not an interface name"),
        (["-o", "udpsend_tolerance=nan"], "udpsend ini options: tolerance=nan: must be a finite number of 0 or more"),
        (["-o", "udpsend_tolerance=inf"], "udpsend ini options: tolerance=inf: must be a finite number of 0 or more"),
    ],
)
def test_bad_option_is_one_sentence_at_parse_time(pytester, args, expected):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert expected in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["compare", "--tolerance", "nan", "a.json", "--new", "b.json"],
            "argument --tolerance: 'nan': must be a finite number of 0 or more",
        ),
        (
            ["compare", "--tolerance", "-1", "a.json", "--new", "b.json"],
            "argument --tolerance: '-1': must be a finite number of 0 or more",
        ),
        (
            ["compare", "--alpha", "nan", "a.json", "--new", "b.json"],
            "argument --alpha: 'nan': must be a number from 0 to 1",
        ),
        (["run", "--repeat", "0"], "argument --repeat: '0': must be an integer from 1 to 1000"),
    ],
)
def test_udpsend_command_refuses_bad_numbers_at_parse_time(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("bad", [True, False, float("nan"), float("inf"), -float("inf"), "1", None, -1, 11])
def test_the_shared_number_check_refuses_bools_non_finite_and_out_of_range(bad):
    from pytest_udpsend.errors import ConfigError
    from pytest_udpsend.measure.params import number

    with pytest.raises(ConfigError, match=r"^x=.*: must be a number from 0 to 10$"):
        number("x", bad, 0, 10)
    assert number("x", 3, 0, 10) == 3 and number("x", 2.5, 0, 10) == 2.5


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("ens1f0", True),
        ("a" * 15, True),
        ("a" * 16, False),
        ("", False),
        (".", False),
        ("..", False),
        ("../etc", False),
        ("eth0:1", False),
        ("eth\t0", False),
        ("ä" * 8, False),
    ],
)
def test_interface_names_as_the_kernel_takes_them(name, valid):
    from pytest_udpsend.host.nics import valid_ifname

    assert valid_ifname(name) is valid

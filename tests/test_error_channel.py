"""One error channel for user mistakes (issue 29): UdpsendError subclasses, never a bare ValueError.

``udpsend`` prints a UdpsendError as one line and exits 2 (the documented status of a usage error);
any other exception, a ValueError from a bug included, keeps its traceback.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_udpsend.errors import ConfigError, InputError, ResultsFileError, UdpsendError
from pytest_udpsend.frontend import configure, options
from pytest_udpsend.results import fanin, store

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_udpsend"

# Modules whose ``raise ValueError`` never reaches a person: each is caught and said again as a ConfigError
# or a fallback (qdisc's value parsers, the BTF reader in tploader), or is a bug in the package itself
# (templating; tpprobe's skb span check).
INTERNAL_VALUE_ERRORS = {"host/qdisc.py", "measure/tploader.py", "measure/tpprobe.py", "results/templating.py"}


def udpsend(*args: str, prelude: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom pytest_udpsend.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def one_sentence(run: subprocess.CompletedProcess[str], command: str) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"udpsend {command}: "), run.stderr
    return lines[0]


def results_file(path: Path) -> Path:
    path.write_text(json.dumps(store.document({"kernel": "6.1.0-test"}, {})))
    return path


def test_a_bad_metric_is_one_sentence_and_exit_2(tmp_path):
    a, b = results_file(tmp_path / "a.json"), results_file(tmp_path / "b.json")
    line = one_sentence(udpsend("compare", str(a), str(b), "--metrics", "eagain"), "compare")
    assert "unknown metric(s) eagain; accepted: eagain_rate" in line


def test_one_file_that_is_not_interleaved_is_one_sentence_and_exit_2(tmp_path):
    a = results_file(tmp_path / "a.json")
    line = one_sentence(udpsend("compare", str(a)), "compare")
    assert line.endswith(
        "has no interleaved tests (--udpsend-interleave): to compare two runs, write udpsend compare "
        "BASELINE.json NEW.json"
    )


def test_a_missing_results_file_is_one_sentence_and_exit_2(tmp_path):
    a = results_file(tmp_path / "a.json")
    line = one_sentence(udpsend("compare", str(a), str(tmp_path / "gone.json")), "compare")
    assert line.endswith("gone.json: no such file")
    line = one_sentence(udpsend("merge", str(tmp_path / "out.json"), str(tmp_path / "none-*.json")), "merge")
    assert "none-*.json: no file matches" in line


def test_an_internal_value_error_keeps_its_traceback(tmp_path):
    """A bug is not a user mistake: before, cli.main printed any ValueError as one line and exited 2."""
    prelude = (
        "from pytest_udpsend.results import fanin\n"
        "def broken(paths):\n    raise ValueError('an internal bug')\n"
        "fanin.merge = broken\n"
    )
    a = results_file(tmp_path / "a.json")
    run = udpsend("merge", str(tmp_path / "out.json"), str(a), prelude=prelude)
    assert run.returncode == 1, run.stderr
    assert "Traceback (most recent call last)" in run.stderr and run.stderr.rstrip().endswith(
        "ValueError: an internal bug"
    )


def test_user_errors_of_the_library_are_udpsend_errors_and_still_value_errors(tmp_path):
    """What the options, the results store and the merge raise for a user's input is a UdpsendError; it is
    still a ValueError, so callers that caught ValueError before keep working."""
    cases = [
        (lambda: options.parse_labels(["runner"]), InputError),
        (lambda: options.gate_settings("x", None, None, False, where="here"), InputError),
        (lambda: configure.candidate_sysctls(["net.core.netdev_budget=8"], 0), InputError),
        (lambda: store.load(tmp_path / "gone.json"), ResultsFileError),
        (lambda: store.validate({"format": "pytest-udpsend/²"}, "x.json"), ResultsFileError),
        (lambda: fanin.expand([str(tmp_path / "none-*.json")]), InputError),
    ]
    for call, kind in cases:
        with pytest.raises(kind) as info:
            call()
        assert isinstance(info.value, UdpsendError) and isinstance(info.value, ConfigError)
        assert isinstance(info.value, ValueError)


def test_json_python_will_not_convert_is_a_results_file_error(tmp_path):
    """A number of more digits than int() takes is a ValueError that is not a JSONDecodeError."""
    path = tmp_path / "big.json"
    path.write_text('{"format": ' + "9" * 5000 + "}")
    with pytest.raises(ResultsFileError, match=rf"^{path}: not a pytest-udpsend results file \("):
        store.load(path)


def test_no_user_error_is_raised_as_a_bare_value_error():
    """A new ``raise ValueError`` is either a user's mistake (raise a ConfigError/UdpsendError subclass from
    errors.py instead) or internal and caught (add it to INTERNAL_VALUE_ERRORS, saying why)."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and getattr(node.exc.func, "id", "") == "ValueError"
            ):
                found.add(path.relative_to(PACKAGE).as_posix())
    assert found <= INTERNAL_VALUE_ERRORS, sorted(found - INTERNAL_VALUE_ERRORS)

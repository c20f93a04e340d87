"""The code's layout: import contracts hold (import-linter), the README's layer list is the contract's, nothing
imports the command line, and no machine-specific absolute path is written anywhere in the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from test.conftest import REPO

TEXT_SUFFIXES = {".py", ".md", ".sh", ".json", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".ini", ""}
MACHINE_PATH = re.compile(r"(?<![\w.$~-])/(work|home|Users|mnt/[a-z]|scratch)/(?!user\b)[\w.-]+")
"""An absolute path under a developer's or a build machine's folders (under ``/work``, ``/home``, ...). The image's
own non-root user (``/home/user``, made by the Dockerfile) is not a machine path."""


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_are_kept() -> None:
    """``lint-imports`` (import-linter, pinned in requirements-test.txt) passes: layers and no cycles."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    assert Path(lint).is_file(), "import-linter is not installed: ./setup.sh --test installs it"
    result = subprocess.run([lint], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_readme_layers_are_the_contracts_layers() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- layers:", 1)[1].split("```", 2)[1]
    lines = [line.strip() for line in block.splitlines() if line.strip() and line.strip() != "layers:"]
    readme_layers = [re.split(r"\s{2,}", line)[0] for line in lines]
    contract = next(c for c in _contracts() if c["type"] == "layers")
    assert readme_layers == contract["layers"]


def test_every_package_is_in_the_contracts() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"test"}
    roots = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"])
    assert packages == roots


def test_nothing_imports_the_command_line() -> None:
    """process.py is the top of the stack: a module importing it would be a back-edge import-linter cannot see."""
    pattern = re.compile(r"^\s*(from process import|import process\b)", re.M)
    offenders = [str(p.relative_to(REPO)) for p in REPO.rglob("*.py")
                 if ".venv" not in p.parts and pattern.search(p.read_text(errors="replace"))]
    assert offenders == []


def tracked_files() -> list[Path]:
    """The repository's files (git's list when this is a checkout, else every file outside .venv/.git)."""
    result = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode == 0 and result.stdout:
        return [REPO / name for name in result.stdout.split("\0") if name]
    return [p for p in REPO.rglob("*") if p.is_file() and not {".venv", ".git"} & set(p.parts)]


def test_no_machine_specific_absolute_path_in_the_repository() -> None:
    hits = []
    for path in tracked_files():
        if path.suffix not in TEXT_SUFFIXES or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert hits == [], "\n".join(hits)


def test_the_machine_path_check_can_fail() -> None:
    root = "/"  # built here so that this file does not hold the paths it tests for
    assert MACHINE_PATH.search(f'OPENKBP = Path("{root}work/shared/data/openkbp_hn_ct")')
    assert MACHINE_PATH.search(f"see {root}home/alice/nnunet_results")
    assert not MACHINE_PATH.search("/opt/ml/model and /input/images/ct and /output and ../shared/data")

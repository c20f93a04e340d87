"""``pip install .`` gives the in-memory API and the ``hanseg-oar`` console script (in a throwaway venv that sees
this interpreter's packages, so nothing is downloaded and the shared environment is not touched)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test.conftest import REPO
from test.test_layout import tracked_files


@pytest.mark.slow
def test_pip_install_gives_the_api_and_the_console_script(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for path in tracked_files():
        if path.is_file() and path.relative_to(REPO).parts[0] not in {"test", "benchmarks", "weights", "sample"}:
            target = source / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "outer-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, SimpleITK, pip...
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import hanseg, process, SimpleITK as sitk; "
            f"assert hanseg.__file__.startswith({purelib!r}), hanseg.__file__; "
            "print(hanseg.__version__, callable(hanseg.segment), hanseg.Settings().tile_step)")
    check = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.split() == ["0.1.0", "True", "0.5"]
    script = venv / "bin" / "hanseg-oar"
    bad = subprocess.run([script, "--threads", "two"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --threads: "), bad.stderr

"""Install the project's trainers into the installed nnunetv2 package so nnU-Net finds them by class name.

nnU-Net (``nnUNetv2_train -tr NAME`` and its predictor) looks trainer classes up recursively inside the
``nnunetv2.training.nnUNetTrainer`` package. This puts ``training/trainers.py`` there as ``hanseg_trainers.py``:

    python -m training.install_trainers            # copy (robust; re-run after editing training/trainers.py)
    python -m training.install_trainers --symlink  # symlink (development: edits take effect at once)
    python -m training.install_trainers --check    # exit 1 if missing or out of date
    python -m training.install_trainers --uninstall
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import logging
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "trainers.py"
INSTALLED_NAME = "hanseg_trainers.py"
MODULES: dict[Path, str] = {
    SOURCE: INSTALLED_NAME,
    SOURCE.parent / "partial_label_loss.py": "hanseg_partial_label_loss.py",  # imported by the trainers
    SOURCE.parents[1] / "model" / "cpu_heap.py": "hanseg_cpu_heap.py",  # imported by the trainers (stdlib only)
}
"""Repository module -> name inside ``nnunetv2/training/nnUNetTrainer/`` (the trainers and what they import)."""


def trainer_package_dir() -> Path:
    """Folder of the installed ``nnunetv2.training.nnUNetTrainer`` package."""
    spec = importlib.util.find_spec("nnunetv2.training.nnUNetTrainer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nnunetv2 is not installed in this interpreter (pip install -r requirements-train.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def target_path() -> Path:
    return trainer_package_dir() / INSTALLED_NAME


def is_installed() -> bool:
    """True if every installed module exists and has the same content as its repository source."""
    folder = trainer_package_dir()
    return all((folder / name).exists() and filecmp.cmp(folder / name, src, shallow=False)
               for src, name in MODULES.items())


def install(symlink: bool = False) -> Path:
    """Copy (or symlink) the trainer modules (:data:`MODULES`) into nnunetv2; return the trainers' installed path."""
    folder = trainer_package_dir()
    for src, name in MODULES.items():
        target = folder / name
        if target.exists() or target.is_symlink():
            target.unlink()
        if symlink:
            target.symlink_to(src)
        else:
            shutil.copyfile(src, target)
        for cache in (folder / "__pycache__").glob(f"{target.stem}*.pyc"):
            cache.unlink()
        log.info("installed %s -> %s (%s)", src, target, "symlink" if symlink else "copy")
    return target_path()


def uninstall() -> None:
    folder = trainer_package_dir()
    for name in MODULES.values():
        target = folder / name
        if target.exists() or target.is_symlink():
            target.unlink()
            log.info("removed %s", target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--symlink", action="store_true")
    group.add_argument("--check", action="store_true")
    group.add_argument("--uninstall", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.check:
        ok = is_installed()
        log.info("%s is %s", target_path(), "installed and up to date" if ok else "MISSING or out of date")
        return 0 if ok else 1
    if args.uninstall:
        uninstall()
        return 0
    install(symlink=args.symlink)
    return 0


if __name__ == "__main__":
    sys.exit(main())

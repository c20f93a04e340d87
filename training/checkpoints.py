"""Small committed snapshots of nnU-Net training checkpoints, so a fresh checkout can RESUME a run.

nnU-Net's data folders live in ``work_dirs/`` (gitignored) and are gone in a later session's fresh checkout. The
preprocessed data is regenerable (``training/run_shipped_model.sh``), the training state is not. ``snapshot`` copies
each fold's newest checkpoint (``checkpoint_final.pth`` if present, else ``checkpoint_latest.pth``) from a results
folder into ``training/checkpoints/<Dataset>/<Trainer__Plans__Config>/fold_N/`` with the optimiser's moment tensors
stored as bfloat16 (same range as float32, fewer mantissa bits: harmless for Adam/SGD statistics) so a small net's
checkpoint stays well under 20 MB; a FINISHED fold's snapshot has no optimiser state at all (it is exported or used
to initialise another run, never resumed: a 3-D fold of the CPU plans is then 22 MB instead of 45). ``restore``
copies snapshots back (as float32) for folds that have no local checkpoint. Network weights are kept in float32
exactly.

    python -m training.checkpoints snapshot --results work_dirs/nnUNet_results [--max-mb 20]
    python -m training.checkpoints restore  --results work_dirs/nnUNet_results
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SNAPSHOT_ROOT = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth")
RUN_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
"""The run folder's own files (beside ``fold_N``) that export needs and nnU-Net writes only when a fold trains."""


def _cast_optimizer_state(state: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Return a copy of an optimizer state_dict with floating per-parameter tensors (not ``step``) cast."""
    out = {"param_groups": state["param_groups"], "state": {}}
    for key, per_param in state["state"].items():
        out["state"][key] = {
            k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "step" else v)
            for k, v in per_param.items()
        }
    return out


def _fold_dirs(results: Path) -> list[Path]:
    return sorted(p for p in results.glob("Dataset*/*__*__*/fold_*") if p.is_dir())


def _copy_run_files(src_run: Path, dst_run: Path, keep_existing: bool) -> None:
    """Copy the run folder's :data:`RUN_FILES` that ``src_run`` has into ``dst_run`` (skipping those ``dst_run``
    already has when ``keep_existing``)."""
    for name in RUN_FILES:
        if (src_run / name).is_file() and not (keep_existing and (dst_run / name).exists()):
            shutil.copyfile(src_run / name, dst_run / name)


def snapshot(results: Path, dest: Path = SNAPSHOT_ROOT, max_mb: float = 20.0) -> list[Path]:
    """Snapshot every fold's newest checkpoint under ``results`` into ``dest``; return the written files.

    Folds whose snapshot would exceed ``max_mb`` are skipped with an error message.
    """
    written = []
    runs_copied: set[Path] = set()
    for fold_dir in _fold_dirs(results):
        src = next((fold_dir / n for n in CHECKPOINT_NAMES if (fold_dir / n).is_file()), None)
        if src is None:
            continue
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
        if src.name == CHECKPOINT_NAMES[0]:  # finished: exported or used as an init, never resumed
            ckpt["optimizer_state"] = None
        elif ckpt.get("optimizer_state") is not None:
            ckpt["optimizer_state"] = _cast_optimizer_state(ckpt["optimizer_state"], torch.bfloat16)
        ckpt["snapshot_of"] = src.name
        rel = fold_dir.relative_to(results)
        out_dir = dest / rel
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / src.name
        tmp = out.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        size_mb = tmp.stat().st_size / 2**20
        if size_mb > max_mb:
            tmp.unlink()
            log.error("%s: snapshot would be %.1f MB > %.1f MB, skipped", rel, size_mb, max_mb)
            continue
        tmp.replace(out)
        for other in CHECKPOINT_NAMES:  # keep only the newest kind
            if other != src.name and (out_dir / other).exists():
                (out_dir / other).unlink()
        log.info("%s: %s epoch %s -> %s (%.1f MB)", rel, src.name, ckpt.get("current_epoch"), out, size_mb)
        written.append(out)
        if fold_dir.parent not in runs_copied:  # once per run, not per fold
            _copy_run_files(fold_dir.parent, out_dir.parent, keep_existing=False)
            runs_copied.add(fold_dir.parent)
    return written


def restore(results: Path, source: Path = SNAPSHOT_ROOT) -> list[Path]:
    """Copy snapshots back into ``results`` for folds with no local checkpoint; return the restored files."""
    restored = []
    for snap in sorted(source.glob("Dataset*/*__*__*/fold_*/checkpoint_*.pth")):
        rel = snap.parent.relative_to(source)
        fold_dir = results / rel
        if any((fold_dir / n).is_file() for n in CHECKPOINT_NAMES):
            log.info("%s: local checkpoint present, snapshot not restored", rel)
            continue
        ckpt = torch.load(snap, map_location="cpu", weights_only=False)
        if ckpt.get("optimizer_state") is not None:
            ckpt["optimizer_state"] = _cast_optimizer_state(ckpt["optimizer_state"], torch.float32)
        ckpt.pop("snapshot_of", None)
        fold_dir.mkdir(parents=True, exist_ok=True)
        # a restored finished fold is not retrained, so nnU-Net would never write them
        _copy_run_files(snap.parent.parent, fold_dir.parent, keep_existing=True)
        out = fold_dir / snap.name
        torch.save(ckpt, out)
        log.info("%s: restored %s (epoch %s)", rel, snap.name, ckpt.get("current_epoch"))
        restored.append(out)
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("snapshot", "restore"))
    parser.add_argument("--results", type=Path, required=True, help="nnUNet_results folder")
    parser.add_argument("--dest", type=Path, default=SNAPSHOT_ROOT)
    parser.add_argument("--max-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.action == "snapshot":
        snapshot(args.results, args.dest, args.max_mb)
    else:
        restore(args.results, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

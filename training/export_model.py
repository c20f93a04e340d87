"""Export a trained nnU-Net run into ``weights/``: the results folder nnU-Net's predictor loads, minus training state.

Input: a run folder ``nnUNet_results/<Dataset>/<Trainer>__<Plans>__<Config>/`` with ``plans.json``, ``dataset.json``
and ``fold_N/checkpoint_final.pth``. Output (``--out``, default ``weights/``)::

    plans.json, dataset.json               copied unchanged
    fold_N/checkpoint_final.pth            network_weights, init_args, trainer_name,
                                           inference_allowed_mirroring_axes, current_epoch -- NO optimizer_state,
                                           grad_scaler_state or logging
    training_curve.json                    per fold and epoch: train/val loss, pseudo Dice per label, epoch seconds
    README.md                              the model card (training.model_card); the held-out metrics table is
                                           filled by ``python -m training.evaluate_heldout``

Only ``checkpoint_final.pth`` is exported unless ``--allow-unfinished`` is given, in which case a fold without it
falls back to ``checkpoint_best.pth`` / ``checkpoint_latest.pth`` and the model card says so.

    python -m training.export_model \
        --run work_dirs/nnUNet_results/Dataset501_OpenKBPHaN/nnUNetTrainerCPU__nnUNetPlansCPU__2d \
        --folds 0 1 --out weights [--max-mb 60]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

KEEP_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")
FALLBACK_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            return obj.tolist()
    return obj


def training_curve(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch values from an nnU-Net checkpoint's ``logging`` entry (losses, pseudo Dice, epoch seconds)."""
    logging_state = checkpoint.get("logging") or {}
    starts = logging_state.get("epoch_start_timestamps", [])
    ends = logging_state.get("epoch_end_timestamps", [])
    curve = {
        "train_losses": logging_state.get("train_losses", []),
        "val_losses": logging_state.get("val_losses", []),
        "pseudo_dice_per_label": logging_state.get("dice_per_class_or_region", []),
        "mean_pseudo_dice": logging_state.get("mean_fg_dice", []),
        "ema_pseudo_dice": logging_state.get("ema_fg_dice", []),
        "learning_rates": logging_state.get("lrs", []),
        "epoch_seconds": [e - s for s, e in zip(starts, ends)],
    }
    return _jsonable(curve)


def strip_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The inference subset of a training checkpoint (see module docstring)."""
    missing = [k for k in ("network_weights", "init_args", "trainer_name") if k not in checkpoint]
    if missing:
        raise KeyError(f"checkpoint lacks {missing}")
    out = {k: checkpoint[k] for k in KEEP_KEYS if k in checkpoint}
    out["network_weights"] = {k: v.detach().cpu().contiguous() for k, v in checkpoint["network_weights"].items()}
    return out


def export(run: Path, folds: list[str], out: Path, allow_unfinished: bool = False, max_mb: float = 60.0,
           train_command: str | None = None) -> dict[str, Any]:
    """Export ``run``'s folds into ``out``; return a summary (per fold: source checkpoint, epoch, curve).

    Raises:
        FileNotFoundError: if a fold has no usable checkpoint.
        RuntimeError: if the export exceeds ``max_mb``.
    """
    from training.model_card import write_model_card

    out.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(run / name, out / name)
    summary: dict[str, Any] = {"run": str(run), "folds": {}}
    curves = {}
    for fold in folds:
        fold_dir = run / f"fold_{fold}"
        names = FALLBACK_CHECKPOINTS if allow_unfinished else FALLBACK_CHECKPOINTS[:1]
        src = next((fold_dir / n for n in names if (fold_dir / n).is_file()), None)
        if src is None:
            raise FileNotFoundError(f"{fold_dir}: none of {names} (train to the end, or --allow-unfinished)")
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
        curves[f"fold_{fold}"] = training_curve(ckpt)
        stripped = strip_checkpoint(ckpt)
        (out / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(stripped, out / f"fold_{fold}" / "checkpoint_final.pth")
        summary["folds"][fold] = {"source": src.name, "epochs_done": ckpt.get("current_epoch"),
                                  "finished": src.name == "checkpoint_final.pth",
                                  "trainer": ckpt.get("trainer_name")}
        log.info("fold %s: exported %s (epoch %s)", fold, src, ckpt.get("current_epoch"))
    for stale in out.glob("fold_*"):
        if stale.is_dir() and stale.name.removeprefix("fold_") not in folds:
            shutil.rmtree(stale)
            log.info("removed stale %s", stale)
    (out / "training_curve.json").write_text(json.dumps(curves) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    summary["size_mb"] = round(total, 2)
    if total > max_mb:
        raise RuntimeError(f"{out} is {total:.1f} MB > {max_mb} MB")
    write_model_card(out, summary, curves, train_command=train_command)
    log.info("exported %d fold(s) into %s (%.1f MB)", len(folds), out, total)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="<Trainer>__<Plans>__<Config> results folder")
    parser.add_argument("--folds", nargs="+", default=["0", "1"])
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--allow-unfinished", action="store_true")
    parser.add_argument("--max-mb", type=float, default=60.0)
    parser.add_argument("--train-command", default=None, help="the command that trained the run (model card)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export(args.run, args.folds, args.out, args.allow_unfinished, args.max_mb, args.train_command)
    return 0


if __name__ == "__main__":
    sys.exit(main())

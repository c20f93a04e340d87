"""Export a trained nnU-Net run into ``weights/``: the results folder nnU-Net's predictor loads, minus training state.

Input: a run folder ``nnUNet_results/<Dataset>/<Trainer>__<Plans>__<Config>/`` with ``plans.json``, ``dataset.json``
and ``fold_N/checkpoint_final.pth``. Output (``--out``, default ``weights/``)::

    plans.json, dataset.json               copied unchanged
    fold_N/checkpoint_final.pth            network_weights, init_args, trainer_name,
                                           inference_allowed_mirroring_axes, current_epoch -- NO optimizer_state,
                                           grad_scaler_state or logging
    training_curve.json                    per fold and epoch: train/val loss, pseudo Dice per label, epoch seconds
    README.md                              a NEW model card (training.model_card) for this model; its held-out table
                                           says "not measured yet" until ``python -m training.evaluate_heldout``
                                           fills it (no table of an earlier model is carried over)

Only ``checkpoint_final.pth`` is exported unless ``--allow-unfinished`` is given, in which case a fold without it
falls back to ``checkpoint_best.pth`` / ``checkpoint_latest.pth`` and the model card says so.

Safety (a failed export leaves ``--out`` byte-identical):

1. Checks before anything is written: ``plans.json`` / ``dataset.json`` parse, every requested fold has a usable
   checkpoint (``network_weights``, ``init_args``, ``trainer_name``), and the stripped weights fit ``--max-mb``
   (counted from the tensors' bytes before they are saved).
2. The new folder is built in a temporary sibling of ``--out`` (same file system), then loaded back by the
   project's own predictor code (``model.model_folder`` + ``model.network``: every fold's weights must fit the
   network that plans.json describes) and measured on disk against ``--max-mb`` again.
3. Swap: the existing ``--out`` is renamed to ``<out>.previous-<UTC time>`` and the new folder renamed into its
   place (two renames on one file system; if the second fails the first is undone). Nothing is deleted: folds of
   the old model that the new export does not have stay in that backup, they are never mixed into the new model.

Size budget: the default ``--max-mb 60`` is for the small CPU model committed in git. nnU-Net's default 3d_fullres
network (6 stages, 32..320 features) is ~120 MB per fold without optimiser state, so a 5-fold HaN-Seg model needs
``--max-mb 700`` (5 x ~120 MB = ~600 MB plus JSON; the platform's model tarball, not git, carries it).

Exit codes: 0 exported; 4 the run folder is not exportable (missing/unusable checkpoint or JSON, weights that do
not fit plans.json); 3 the output cannot be written (over ``--max-mb``, file system errors); 1 a bug.

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
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from contract.errors import EXIT_OK, ModelFolderError, OutputError, error_line, exit_code

log = logging.getLogger(__name__)

KEEP_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")
REQUIRED_KEYS = ("network_weights", "init_args", "trainer_name")
FALLBACK_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
DEFAULT_MAX_MB = 60.0


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
    """The inference subset of a training checkpoint (see module docstring).

    Raises:
        KeyError: if a required entry is missing.
    """
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise KeyError(f"checkpoint lacks {missing}")
    out = {k: checkpoint[k] for k in KEEP_KEYS if k in checkpoint}
    out["network_weights"] = {k: v.detach().cpu().contiguous() for k, v in checkpoint["network_weights"].items()}
    return out


def tensor_megabytes(state: dict[str, torch.Tensor]) -> float:
    """Size in MiB of a state_dict's tensor data (what ``torch.save`` writes, less a few kB of pickle).

    Storage shared by several keys counts once, as torch.save writes it once: nnU-Net's U-Nets list each encoder
    weight up to 4 times (``conv`` and ``all_modules.0``, under ``encoder.`` and ``decoder.encoder.``), which
    counted per key made a 21.6 MB 3-D fold read as 68.7 MB.
    """
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    return sum(storages.values()) / 2**20


def folder_megabytes(folder: Path) -> float:
    """Size in MiB of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def find_checkpoint(run: Path, fold: str, allow_unfinished: bool) -> Path:
    """The checkpoint file to export for ``fold``.

    Raises:
        ModelFolderError: if the fold has none of the accepted checkpoint names.
    """
    fold_dir = run / f"fold_{fold}"
    names = FALLBACK_CHECKPOINTS if allow_unfinished else FALLBACK_CHECKPOINTS[:1]
    src = next((fold_dir / n for n in names if (fold_dir / n).is_file()), None)
    if src is None:
        raise ModelFolderError(fold_dir, f"none of {list(names)} (train to the end, or --allow-unfinished)")
    return src


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint on the CPU (nnU-Net pickles more than tensors: only export runs you made).

    Raises:
        ModelFolderError: if it cannot be loaded or lacks network_weights / init_args / trainer_name.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is an unusable checkpoint
        raise ModelFolderError(path, f"cannot load checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict):
        raise ModelFolderError(path, "not an nnU-Net checkpoint (not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ModelFolderError(path, f"not an nnU-Net checkpoint (lacks {missing})")
    if not ckpt["network_weights"]:
        raise ModelFolderError(path, "network_weights is empty")
    return ckpt


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFolderError(path, f"cannot read JSON ({err})") from None


def verify_model_folder(folder: Path, folds: list[str]) -> None:
    """Load ``folder`` the way ``process.py`` does and put every fold's weights into the plans' network.

    Raises:
        ModelFolderError: if the predictor would refuse the folder.
    """
    from model.model_folder import load_model_folder
    from model.network import build_network, load_fold_weights

    model = load_model_folder(folder, folds)
    network = build_network(model)
    for fold in model.folds:
        load_fold_weights(network, fold.weights, str(fold.path))


def swap_into_place(new: Path, out: Path) -> Path | None:
    """Put the finished folder ``new`` at ``out``; the previous ``out`` (if any) becomes a backup, not deleted.

    Returns:
        The backup folder, or None if ``out`` did not exist.

    Raises:
        OutputError: if a rename fails (``out`` is then as it was).
    """
    backup = None
    if out.exists() or out.is_symlink():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = out.with_name(f"{out.name}.previous-{stamp}")
        n = 1
        while backup.exists():
            backup = out.with_name(f"{out.name}.previous-{stamp}-{n}")
            n += 1
        try:
            out.rename(backup)
        except OSError as err:
            raise OutputError(out, f"cannot move the previous export aside ({err})") from None
    try:
        new.rename(out)
    except OSError as err:
        if backup is not None:
            backup.rename(out)
        raise OutputError(out, f"cannot move the new export into place ({err})") from None
    return backup


def export(run: Path, folds: list[str], out: Path, allow_unfinished: bool = False, max_mb: float = DEFAULT_MAX_MB,
           train_command: str | None = None, hardware: str | None = None) -> dict[str, Any]:
    """Export ``run``'s folds into ``out`` safely (module docstring); return a summary (per fold: source, epoch).

    ``hardware``: what the run was trained on, for the model card (default: this machine's description).

    Raises:
        ModelFolderError: if the run folder is not exportable (``out`` untouched).
        OutputError: if the export exceeds ``max_mb`` or cannot be written (``out`` untouched).
    """
    from training.model_card import write_model_card

    plans_src, dataset_src = run / "plans.json", run / "dataset.json"
    for path in (plans_src, dataset_src):
        _read_json(path)
    sources = {fold: find_checkpoint(run, fold, allow_unfinished) for fold in folds}  # all found before any work

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        for path in (plans_src, dataset_src):
            shutil.copyfile(path, tmp / path.name)
        summary: dict[str, Any] = {"run": str(run), "folds": {}, "hardware": hardware}
        curves = {}
        total_mb = folder_megabytes(tmp)
        for fold, src in sources.items():
            ckpt = load_checkpoint(src)
            stripped = strip_checkpoint(ckpt)
            total_mb += tensor_megabytes(stripped["network_weights"])
            if total_mb > max_mb:
                raise OutputError(out, f"export would exceed --max-mb {max_mb:g} at fold {fold} "
                                       f"(>= {total_mb:.1f} MB; a 5-fold 3d_fullres model needs ~600 MB)")
            curves[f"fold_{fold}"] = training_curve(ckpt)
            (tmp / f"fold_{fold}").mkdir()
            torch.save(stripped, tmp / f"fold_{fold}" / "checkpoint_final.pth")
            summary.setdefault("mirror_axes", stripped.get("inference_allowed_mirroring_axes"))
            summary["folds"][fold] = {"source": src.name, "epochs_done": ckpt.get("current_epoch"),
                                      "finished": src.name == "checkpoint_final.pth",
                                      "trainer": ckpt.get("trainer_name")}
            log.info("fold %s: stripped %s (epoch %s)", fold, src, ckpt.get("current_epoch"))
            del ckpt, stripped
        (tmp / "training_curve.json").write_text(json.dumps(curves) + "\n")
        verify_model_folder(tmp, list(folds))
        total = folder_megabytes(tmp)
        summary["size_mb"] = round(total, 2)
        if total > max_mb:
            raise OutputError(out, f"export is {total:.1f} MB > --max-mb {max_mb:g}")
        write_model_card(tmp, summary, curves, train_command=train_command)
        backup = swap_into_place(tmp, out)
    except OSError as err:
        raise OutputError(out, f"cannot write the export ({err})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # our own temporary folder only; ``out`` is untouched on failure
    if backup is not None:
        log.info("previous %s kept as %s (delete it when the new model is verified)", out, backup)
    summary["previous"] = None if backup is None else str(backup)
    log.info("exported %d fold(s) into %s (%.1f MB)", len(folds), out, total)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="<Trainer>__<Plans>__<Config> results folder")
    parser.add_argument("--folds", nargs="+", default=["0", "1"])
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--allow-unfinished", action="store_true")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"size budget of the exported folder (default {DEFAULT_MAX_MB:g}; 5-fold 3d_fullres: 700)")
    parser.add_argument("--train-command", default=None, help="the command that trained the run (model card)")
    parser.add_argument("--hardware", default=None, help="what the run was trained on, e.g. '1x A100 40 GB' "
                                                         "(model card; default: this machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export(args.run, args.folds, args.out, args.allow_unfinished, args.max_mb, args.train_command, args.hardware)
    except (ModelFolderError, OutputError) as err:
        print(error_line(err), file=sys.stderr)
        return exit_code(err)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""Measure an exported model on held-out cases, with and without the T1 channel, and fill the model card table.

Held-out cases are a raw dataset's ``imagesTs`` (``<case>_0000`` CT, ``<case>_0001`` T1) and ``labelsTs`` (dataset
label values). Steps:

1. Predict with nnU-Net's own predictor (``nnUNetPredictor``, all exported folds, no mirroring unless the model
   allows it) twice: with the T1 channel as converted, and with the T1 channel replaced by zeros (= no usable MR).
2. Map predictions and ground truth from the model's label values to HaN-Seg values BY NAME
   (``contract.labels.model_to_hanseg_lookup``).
3. Score with the project's evaluation package (``evaluation.evaluate.evaluate_folder``: DSC, HD95 per OAR).
4. Write the tables into ``<work>/`` and the per-OAR Dice/HD95 table into ``<model>/README.md``
   and ``<model>/heldout_metrics.json``.

    python -m training.evaluate_heldout --model weights \
        --raw work_dirs/nnUNet_raw/Dataset501_OpenKBPHaN --work work_dirs/heldout_eval
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.labels import model_to_hanseg_lookup

log = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"


def _to_hanseg(src: Path, dst: Path, lut: np.ndarray) -> None:
    img = sitk.ReadImage(str(src))
    arr = lut[sitk.GetArrayFromImage(img).astype(np.int64)]
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst), useCompression=True)


def _inputs_without_t1(images: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for ct in sorted(images.glob(f"*_0000{FILE_ENDING}")):
        shutil.copyfile(ct, dst / ct.name)
        img = sitk.ReadImage(str(ct))
        zeros = sitk.Image(img.GetSize(), sitk.sitkFloat32)
        zeros.CopyInformation(img)
        sitk.WriteImage(zeros, str(dst / ct.name.replace("_0000", "_0001")), useCompression=True)


def predict(model: Path, images: Path, out: Path, folds: tuple[str, ...] | None = None) -> float:
    """Predict every case in ``images`` with nnU-Net's predictor on CPU; return seconds per case."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(1)
    fold_names = folds or tuple(p.name.removeprefix("fold_") for p in sorted(model.glob("fold_*")))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=tuple(
        int(f) if f.isdigit() else f for f in fold_names), checkpoint_name="checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    n = len(list(images.glob(f"*_0000{FILE_ENDING}")))
    t0 = time.time()
    predictor.predict_from_files(str(images), str(out), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return (time.time() - t0) / max(1, n)


def evaluate(model: Path, raw: Path, work: Path) -> dict[str, Any]:
    """Run steps 1-4 (module docstring); return ``{"with_t1": summary, "without_t1": summary, ...}``."""
    from evaluation.evaluate import evaluate_folder, write_outputs

    dataset = json.loads((model / "dataset.json").read_text())
    lut = np.asarray(model_to_hanseg_lookup(dataset["labels"]), dtype=np.uint8)
    gt_dir = work / "gt_hanseg"
    gt_dir.mkdir(parents=True, exist_ok=True)
    for lab in sorted((raw / "labelsTs").glob(f"*{FILE_ENDING}")):
        _to_hanseg(lab, gt_dir / lab.name, lut)
    no_t1 = work / "imagesTs_no_t1"
    _inputs_without_t1(raw / "imagesTs", no_t1)
    results: dict[str, Any] = {"model": str(model), "cases": sorted(p.name for p in gt_dir.iterdir())}
    for variant, images in (("with_t1", raw / "imagesTs"), ("without_t1", no_t1)):
        pred_raw = work / f"pred_{variant}_model_labels"
        secs = predict(model, images, pred_raw)
        pred = work / f"pred_{variant}"
        pred.mkdir(exist_ok=True)
        for p in sorted(pred_raw.glob(f"*{FILE_ENDING}")):
            _to_hanseg(p, pred / p.name, lut)
        ev = evaluate_folder(pred, gt_dir)
        write_outputs(ev, work / f"eval_{variant}")
        results[variant] = {"seconds_per_case": round(secs, 1), "summary": ev.summary}
        log.info("%s: mean DSC %.3f", variant, ev.summary["all"]["dsc"]["mean"])
    return results


def heldout_markdown(results: dict[str, Any], labels: list[str]) -> str:
    """The model-card table: Dice and HD95 (mean over cases) per OAR, with and without T1."""
    w, wo = results["with_t1"]["summary"], results["without_t1"]["summary"]

    def cell(s: dict[str, Any], key: str, digits: int) -> str:
        v = s[key]["mean"]
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [
        f"Cases: {', '.join(c.split('.')[0] for c in results['cases'])} (OpenKBP validation-pats, never trained on). "
        "nnU-Net predictor, all exported folds averaged, CPU; HD95 of an empty prediction counted as the image "
        "diagonal (evaluation package).",
        "",
        "| OAR | Dice with T1 | Dice without T1 | HD95 mm with T1 | HD95 mm without T1 |",
        "|---|---|---|---|---|",
    ]
    for name in labels:
        a, b = w["per_oar"][name], wo["per_oar"][name]
        lines.append(f"| {name} | {cell(a, 'dsc', 3)} | {cell(b, 'dsc', 3)} | {cell(a, 'hd95_mm', 1)} | "
                     f"{cell(b, 'hd95_mm', 1)} |")
    lines.append(f"| **mean (all OAR x case pairs)** | **{cell(w['all'], 'dsc', 3)}** | "
                 f"**{cell(wo['all'], 'dsc', 3)}** | {cell(w['all'], 'hd95_mm', 1)} | "
                 f"{cell(wo['all'], 'hd95_mm', 1)} |")
    lines.append("")
    lines.append(f"Prediction time per case (2 shared CPU cores, 1 thread): {results['with_t1']['seconds_per_case']} s "
                 f"with T1, {results['without_t1']['seconds_per_case']} s without. \"With T1\" means the SYNTHETIC T1 "
                 "channel (these patients have no MR).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("weights"))
    parser.add_argument("--raw", type=Path, default=Path("work_dirs/nnUNet_raw/Dataset501_OpenKBPHaN"))
    parser.add_argument("--work", type=Path, default=Path("work_dirs/heldout_eval"))
    parser.add_argument("--no-card", action="store_true", help="do not write into <model>/README.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.model_card import fill_heldout

    results = evaluate(args.model, args.raw, args.work)
    labels = [n for n in json.loads((args.model / "dataset.json").read_text())["labels"] if n != "background"]
    (args.model / "heldout_metrics.json").write_text(json.dumps(
        {k: v for k, v in results.items()}, indent=1, default=str) + "\n")
    md = heldout_markdown(results, labels)
    print(md)
    if not args.no_card:
        fill_heldout(args.model, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

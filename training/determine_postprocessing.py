"""Decide, on cross-validation cases, which OARs get largest-component post-processing (nnU-Net's rule).

nnU-Net determines its post-processing on the cross-validation predictions of the training cases and keeps "all but
the largest component removed" for a class when that does not lower the class's mean Dice. This module does the
same for a model trained on the shared OpenKBP data with nnU-Net's default 5-fold split (``training.convert_openkbp``
+ ``nnUNetv2_train``), without needing the training run's folders:

1. the split: the train-pats case ids of the shared OpenKBP folders, sorted, through nnU-Net's own
   ``generate_crossval_split`` (seed 12345, 5 folds), the split the trainer used;
2. each exported fold predicts ITS validation cases (never seen by that fold) through ``process.py`` (dataset mode,
   CT only, ``--folds F``; the model's test-time augmentation as shipped);
3. every OAR a case annotates (``cases.json``) is scored with and without keeping its largest component
   (Dice and HD95 by ``evaluation.metrics``);
4. an OAR is listed when its mean Dice over the cases that annotate it does not drop (nnU-Net's criterion).

The held-out validation-pats are never touched. ``--write`` puts the list into the model folder's dataset.json
(``largest_component``); the table (stdout, and ``--report`` JSON) goes into the model card's A/B section.

    python -m training.determine_postprocessing --model weights [--folds 0 1] [--max-cases 12] [--write]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.labels import HANSEG_LABELS
from evaluation.metrics import compute_oar_metrics
from model.model_folder import load_model_folder
from preprocessing.components import largest_component
from training.convert_openkbp import OPENKBP_TO_HANSEG, annotated_openkbp_names, default_sources, openkbp_to_hanseg_lut

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
TRAIN_SPLIT = "train-pats"


def openkbp_training_cases(sources: Sequence[Path]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Case id -> (case folder, cases.json entry) of every train-pats case of the shared OpenKBP folders."""
    cases: dict[str, tuple[Path, dict[str, Any]]] = {}
    for source in sources:
        for case, entry in json.loads((source / "cases.json").read_text()).items():
            if entry.get("split") == TRAIN_SPLIT:
                cases[case] = (source / "cases" / case, entry)
    return cases


def training_reference(folder: Path, entry: dict[str, Any]) -> tuple[sitk.Image, np.ndarray, list[str]]:
    """A train-pats case's reference (``folder/oar_labels.nii.gz``, its ``cases.json`` ``entry``): the image, its
    array (z, y, x) in HaN-Seg label values, and the HaN-Seg names of the OARs the case annotates."""
    image = sitk.ReadImage(str(folder / "oar_labels.nii.gz"))
    array = openkbp_to_hanseg_lut()[sitk.GetArrayFromImage(image).astype(np.int64)]
    return image, array, [OPENKBP_TO_HANSEG[n] for n in annotated_openkbp_names(entry)]


def crossval_validation_cases(case_ids: Sequence[str], fold: int, n_splits: int = 5) -> list[str]:
    """The validation cases of ``fold`` in nnU-Net's default split of ``case_ids`` (sorted, seed 12345)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits = generate_crossval_split(sorted(case_ids), seed=12345, n_splits=n_splits)
    return sorted(str(c) for c in splits[fold]["val"])


def without_postprocessing(model: Path, dest: Path) -> Path:
    """A copy of the model folder without its ``largest_component`` declaration: the raw predictions are the
    baseline the post-processed ones are compared with."""
    shutil.copytree(model, dest)
    dataset = json.loads((dest / "dataset.json").read_text())
    dataset.pop("largest_component", None)
    (dest / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return dest


def predict_fold(model: Path, fold: str, cases: dict[str, tuple[Path, dict[str, Any]]], work: Path,
                 threads: int | None) -> Path:
    """process.py (dataset mode, CT only) with one fold on ``cases``; returns the folder of label maps."""
    root, out = work / f"input_fold_{fold}", work / f"pred_fold_{fold}"
    for case, (folder, _) in cases.items():
        (root / case).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(folder / "ct.nii.gz")), str(root / case / f"{case}_IMG_CT.nrrd"),
                        useCompression=True)
    cmd = [sys.executable, str(REPO / "process.py"), "--input", str(root), "--output", str(out), "--model",
           str(model), "--folds", fold, "--no-progress"]
    if threads:
        cmd += ["--threads", str(threads)]
    log.info("fold %s: predicting %d validation case(s)", fold, len(cases))
    result = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"process.py failed on fold {fold}: {result.stderr.strip().splitlines()[-3:]}")
    return out


def _prediction_file(pred_dir: Path, case: str) -> Path:
    found = sorted(p for p in pred_dir.rglob("*") if p.is_file() and p.name.startswith(case)
                   and p.name[len(case):len(case) + 1] in (".", "_"))
    if len(found) != 1:
        raise FileNotFoundError(f"{pred_dir}: expected one label map of {case}, found {[p.name for p in found]}")
    return found[0]


def score_case(pred: np.ndarray, gt_hanseg: np.ndarray, oars: Sequence[str], spacing_zyx: Sequence[float],
               ) -> dict[str, dict[str, float]]:
    """Per annotated OAR: Dice / HD95 of the raw prediction and of its largest component."""
    out: dict[str, dict[str, float]] = {}
    for name in oars:
        value = HANSEG_LABELS[name]
        gt = gt_hanseg == value
        if not gt.any():
            continue
        raw = pred == value
        kept = largest_component(raw)
        m_raw = compute_oar_metrics(raw, gt, spacing_zyx)
        m_kept = compute_oar_metrics(kept, gt, spacing_zyx)
        out[name] = {"dice": m_raw.dsc, "dice_lcc": m_kept.dsc, "hd95": m_raw.hd95_mm, "hd95_lcc": m_kept.hd95_mm}
    return out


def decide(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per OAR: n, mean Dice / HD95 (finite ones) without and with the largest component, and the decision."""
    table: dict[str, dict[str, Any]] = {}
    names = sorted({n for scores in per_case.values() for n in scores}, key=lambda n: HANSEG_LABELS[n])
    for name in names:
        rows = [scores[name] for scores in per_case.values() if name in scores]

        def mean(key: str, rows: list[dict[str, float]] = rows) -> float:
            values = [r[key] for r in rows if np.isfinite(r[key])]
            return float(np.mean(values)) if values else float("nan")

        entry = {"n": len(rows), "dice": mean("dice"), "dice_lcc": mean("dice_lcc"), "hd95": mean("hd95"),
                 "hd95_lcc": mean("hd95_lcc")}
        entry["apply"] = bool(entry["dice_lcc"] >= entry["dice"])
        table[name] = entry
    return table


def markdown(table: dict[str, dict[str, Any]], folds: Sequence[str], n_cases: int) -> str:
    lines = [f"Largest-component post-processing on {n_cases} cross-validation cases (folds {', '.join(folds)}, "
             "each case predicted by the fold that did not train on it; CT only):", "",
             "| OAR | n | Dice raw | Dice largest component | HD95 mm raw | HD95 mm largest component | applied |",
             "|---|---|---|---|---|---|---|"]
    for name, e in table.items():
        lines.append(f"| {name} | {e['n']} | {e['dice']:.3f} | {e['dice_lcc']:.3f} | {e['hd95']:.1f} | "
                     f"{e['hd95_lcc']:.1f} | {'yes' if e['apply'] else 'no'} |")
    return "\n".join(lines)


def write_decision(model: Path, names: Sequence[str]) -> None:
    """Set ``largest_component`` in the model folder's dataset.json (written to a temporary file, then renamed)."""
    path = model / "dataset.json"
    dataset = json.loads(path.read_text())
    dataset["largest_component"] = list(names)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataset, indent=4) + "\n")
    os.replace(tmp, path)
    load_model_folder(model)  # the written declaration must load (names the model outputs)


def card_section(model: Path, table_markdown: str, chosen: Sequence[str]) -> None:
    """Put the decision and its table into the model card (the section is added before the held-out one if the
    card predates it)."""
    from training.model_card import (
        POSTPROCESSING_PLACEHOLDER,
        POSTPROCESSING_SECTION,
        POSTPROCESSING_TITLE,
        ensure_section,
        fill_section,
    )

    ensure_section(model, POSTPROCESSING_SECTION, POSTPROCESSING_TITLE, POSTPROCESSING_PLACEHOLDER)
    applied = ", ".join(chosen) if chosen else "none"
    fill_section(model, POSTPROCESSING_SECTION, f"Applied to: **{applied}** (nnU-Net's rule: kept where the "
                 f"cross-validation mean Dice does not drop; `training.determine_postprocessing`).\n\n"
                 f"{table_markdown}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "weights")
    parser.add_argument("--folds", nargs="+", help="folds to use (default: every fold in the model folder)")
    parser.add_argument("--max-cases", type=int, help="at most this many validation cases per fold (sorted ids)")
    parser.add_argument("--threads", type=int, help="process.py --threads")
    parser.add_argument("--report", type=Path, help="write the per-case scores and the table as JSON here")
    parser.add_argument("--write", action="store_true", help="write the decision into the model's dataset.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    model = load_model_folder(args.model)
    folds = args.folds or [f.name for f in model.folds]
    cases = openkbp_training_cases(default_sources())
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="postprocessing_") as tmp:
        raw_model = without_postprocessing(args.model, Path(tmp) / "model")
        for fold in folds:
            val = crossval_validation_cases(list(cases), int(fold))[: args.max_cases]
            pred_dir = predict_fold(raw_model, fold, {c: cases[c] for c in val}, Path(tmp), args.threads)
            for case in val:
                gt_img, gt, oars = training_reference(*cases[case])
                pred = sitk.GetArrayFromImage(sitk.ReadImage(str(_prediction_file(pred_dir, case))))
                per_case[case] = score_case(pred, gt, oars, gt_img.GetSpacing()[::-1])
    table = decide(per_case)
    print(markdown(table, folds, len(per_case)))
    chosen = [n for n, e in table.items() if e["apply"]]
    print(f"RESULT largest_component: {chosen}")
    if args.report:
        args.report.write_text(json.dumps({"folds": folds, "per_case": per_case, "table": table}, indent=1))
    if args.write:
        write_decision(args.model, chosen)
        log.info("%s: largest_component = %s", args.model / "dataset.json", chosen)
        if (args.model / "README.md").is_file():
            card_section(args.model, markdown(table, folds, len(per_case)), chosen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

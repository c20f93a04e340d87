"""Measure an exported model on held-out cases, with and without the T1 channel, and fill the model card table.

Held-out cases are a raw dataset's ``imagesTs`` (``<case>_0000`` CT) and ``labelsTs`` (HaN-Seg values when the raw
dataset.json says ``"labelsTs_values": "hanseg"``, as the partial-label converter writes them; else the dataset's
label values). An OAR a held-out case does not annotate is absent from its label map and is not scored for that case
(the evaluation package's ``missing_gt``): every per-OAR mean is over the cases that have the OAR.
Steps:

1. Predict with THIS project's command line, ``process.py`` in dataset mode (registration, preprocessing, all
   exported folds, export: the whole shipped pipeline), twice: with a T1 MR, and with the CT alone. The T1 MR of
   an OpenKBP case is the SAME synthetic one the converter made (``training.t1_channel.synthetic_mr`` with the
   case's seed) in its own moved scanner geometry, so process.py registers it like a real MR.
2. Map the ground truth from the model's label values to HaN-Seg values BY NAME
   (``contract.labels.model_to_hanseg_lookup``); process.py already writes HaN-Seg values.
3. Score with the project's evaluation package (``evaluation.evaluate.evaluate_folder``: DSC, HD95 per OAR).
4. Write the tables into ``<work>/`` and the per-OAR Dice/HD95 table into ``<model>/README.md``
   and ``<model>/heldout_metrics.json``.

    python -m training.evaluate_heldout --model weights \
        --raw work_dirs/nnUNet_raw/Dataset502_OpenKBPHaNPartial --work work_dirs/heldout_eval \
        [--baseline work_dirs/heldout_old/heldout_metrics.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.labels import MAX_LABEL, model_to_hanseg_lookup

log = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"


def _to_hanseg(src: Path, dst: Path, lut: np.ndarray) -> None:
    img = sitk.ReadImage(str(src))
    arr = lut[sitk.GetArrayFromImage(img).astype(np.int64)]
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst), useCompression=True)


def source_mr_files(source: Path) -> dict[str, Path]:
    """Case id -> the case's own T1 MR file, for every case under a HaN-Seg-layout ``source`` that has one."""
    from training.convert_hanseg import MR_SUFFIX, find_cases

    return {case: d / f"{case}{MR_SUFFIX}" for case, d in find_cases(source).items()
            if (d / f"{case}{MR_SUFFIX}").is_file()}


def process_inputs(images: Path, root: Path, with_mr: bool, mr_files: dict[str, Path] | None = None) -> int:
    """Dataset-mode input for process.py: ``root/<case>/<case>_IMG_CT.nrrd`` (+ ``_IMG_MR_T1.nrrd``). The MR is the
    case's own file from ``mr_files`` (a HaN-Seg source; a case without one gets none), else the case's synthetic
    T1 in its own geometry (OpenKBP). Returns the number of cases."""
    from training.convert_openkbp import case_seed
    from training.t1_channel import synthetic_mr

    cts = sorted(images.glob(f"*_0000{FILE_ENDING}"))
    for ct_path in cts:
        case = ct_path.name.removesuffix(f"_0000{FILE_ENDING}")
        (root / case).mkdir(parents=True, exist_ok=True)
        ct = sitk.ReadImage(str(ct_path))
        sitk.WriteImage(ct, str(root / case / f"{case}_IMG_CT.nrrd"), useCompression=True)
        if with_mr and mr_files is not None:
            if case in mr_files:
                shutil.copyfile(mr_files[case], root / case / f"{case}_IMG_MR_T1.nrrd")
        elif with_mr:
            mr, _ = synthetic_mr(ct, case_seed(case))
            sitk.WriteImage(mr, str(root / case / f"{case}_IMG_MR_T1.nrrd"), useCompression=True)
    return len(cts)


def predict(model: Path, root: Path, out: Path, n_cases: int, threads: int | None = None) -> float:
    """Run ``process.py`` (dataset mode) on ``root``; return wall seconds per case (whole process included)."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "process.py"), "--input", str(root), "--output", str(out), "--model",
           str(model), "--no-progress"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.time()
    result = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"process.py failed on {root}: {result.stderr.strip().splitlines()[-1:]}")
    return (time.time() - t0) / max(1, n_cases)


def evaluate(model: Path, raw: Path, work: Path, threads: int | None = None,
             source: Path | None = None) -> dict[str, Any]:
    """Run steps 1-4 (module docstring); return ``{"with_t1": summary, "without_t1": summary, ...}``.

    ``source``: the HaN-Seg-layout folder the raw dataset was converted from; its real MRs are used.
    """
    from evaluation.evaluate import evaluate_folder, write_outputs

    raw_dataset = json.loads((raw / "dataset.json").read_text())
    if raw_dataset.get("labelsTs_values") == "hanseg":
        lut = np.arange(MAX_LABEL + 1, dtype=np.uint8)
    else:
        lut = np.asarray(model_to_hanseg_lookup(raw_dataset["labels"]), dtype=np.uint8)
    gt_dir = work / "gt_hanseg"
    shutil.rmtree(gt_dir, ignore_errors=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for lab in sorted((raw / "labelsTs").glob(f"*{FILE_ENDING}")):
        _to_hanseg(lab, gt_dir / lab.name, lut)
    mr_files = None if source is None else source_mr_files(source)
    results: dict[str, Any] = {"model": str(model), "cases": sorted(p.name for p in gt_dir.iterdir()),
                               "predictor": "process.py", "heldout_note": heldout_note(raw, source)}
    for variant, with_mr in (("with_t1", True), ("without_t1", False)):
        root, pred = work / f"input_{variant}", work / f"pred_{variant}"
        for stale in (root, pred):  # an earlier run's files would be scored again (or twice)
            shutil.rmtree(stale, ignore_errors=True)
        n_cases = process_inputs(raw / "imagesTs", root, with_mr, mr_files)
        secs = predict(model, root, pred, n_cases, threads)
        ev = evaluate_folder(pred, gt_dir)
        write_outputs(ev, work / f"eval_{variant}")
        results[variant] = {"seconds_per_case": round(secs, 1), "summary": ev.summary}
        log.info("%s: mean DSC %.3f", variant, ev.summary["all"]["dsc"]["mean"])
    return results


def heldout_note(raw: Path, source: Path | None) -> dict[str, str]:
    """Where the held-out cases and their T1 come from, for the model card."""
    if source is not None:
        return {"cases": f"imagesTs of {raw.name}, held out at conversion, never trained on",
                "t1": f"\"With T1\" uses each case's own MR file from {source.name} (registered by process.py)."}
    return {"cases": "OpenKBP validation-pats, never trained on",
            "t1": "\"With T1\" means the SYNTHETIC T1 (these patients have no MR)."}


def output_oar_names(dataset: dict[str, Any]) -> list[str]:
    """HaN-Seg OAR names a model writes: its labels, each merged L/R label (``lr_split``) as its two sides."""
    split = dataset.get("lr_split") or {}
    names: list[str] = []
    for name in dataset["labels"]:
        if name != "background":
            names.extend(split.get(name, [name]))
    return names


def mean_of_oar_means(summary: dict[str, Any], labels: list[str]) -> float | None:
    """Mean over OARs of the per-OAR mean Dice (each OAR averaged over the cases that have it)."""
    values = [summary["per_oar"][n]["dsc"]["mean"] for n in labels]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table_row(cells: Sequence[str], baseline_cells: Sequence[str] = ()) -> str:
    """One row of the model-card table: ``cells`` then ``baseline_cells`` (the baseline's columns; none without a
    baseline), each as ``| cell``; an empty cell is ``| |``."""
    return "|" + "".join(f" {c} |" if c else " |" for c in (*cells, *baseline_cells))


def heldout_markdown(results: dict[str, Any], labels: list[str], baseline: dict[str, Any] | None = None,
                     baseline_name: str = "previous model") -> str:
    """The model-card table: Dice and HD95 (mean over the cases that have the OAR) per OAR, with and without T1;
    with ``baseline`` (another model's results on the same cases) its Dice columns beside."""
    w, wo = results["with_t1"]["summary"], results["without_t1"]["summary"]

    def cell(s: dict[str, Any], key: str, digits: int) -> str:
        v = s[key]["mean"]
        return "-" if v is None else f"{v:.{digits}f}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    note = results.get("heldout_note") or heldout_note(Path("raw"), None)
    base_cols = f" {baseline_name} Dice with T1 | {baseline_name} Dice without T1 |" if baseline else ""
    lines = [
        f"Cases ({len(results['cases'])}): {', '.join(c.split('.')[0] for c in results['cases'])} "
        f"({note['cases']}). Predicted by process.py (dataset mode: registration of the case's T1, all exported "
        "folds, export), CPU; each OAR scored on the cases that have it (n); HD95 of an empty prediction counted as "
        "the image diagonal (evaluation package).",
        "",
        f"| OAR | n | Dice with T1 | Dice without T1 | HD95 mm with T1 | HD95 mm without T1 |{base_cols}",
        "|---|---|---|---|---|---|" + ("---|---|" if baseline else ""),
    ]
    bw, bwo = (baseline["with_t1"]["summary"], baseline["without_t1"]["summary"]) if baseline else ({}, {})
    for name in labels:
        a, b = w["per_oar"][name], wo["per_oar"][name]
        lines.append(table_row(
            [name, f"{a['n']}", cell(a, "dsc", 3), cell(b, "dsc", 3), cell(a, "hd95_mm", 1), cell(b, "hd95_mm", 1)],
            [cell(bw["per_oar"][name], "dsc", 3), cell(bwo["per_oar"][name], "dsc", 3)] if baseline else []))
    lines.append(table_row(
        ["**mean of the per-OAR means**", "", f"**{num(mean_of_oar_means(w, labels))}**",
         f"**{num(mean_of_oar_means(wo, labels))}**", "", ""],
        [num(mean_of_oar_means(bw, labels)), num(mean_of_oar_means(bwo, labels))] if baseline else []))
    lines.append(table_row(
        ["mean (all OAR x case pairs)", "", cell(w["all"], "dsc", 3), cell(wo["all"], "dsc", 3),
         cell(w["all"], "hd95_mm", 1), cell(wo["all"], "hd95_mm", 1)],
        [cell(bw["all"], "dsc", 3), cell(bwo["all"], "dsc", 3)] if baseline else []))
    lines.append("")
    lines.append(f"Wall time per case of process.py (2 shared CPU cores; registration included with T1): "
                 f"{results['with_t1']['seconds_per_case']} s with T1, {results['without_t1']['seconds_per_case']} s "
                 f"without. {note['t1']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("weights"))
    parser.add_argument("--raw", type=Path, default=Path("work_dirs/nnUNet_raw/Dataset502_OpenKBPHaNPartial"))
    parser.add_argument("--work", type=Path, default=Path("work_dirs/heldout_eval"))
    parser.add_argument("--no-card", action="store_true",
                        help="write nothing into the model folder (README.md, heldout_metrics.json)")
    parser.add_argument("--threads", type=int, help="process.py --threads (default: all cores)")
    parser.add_argument("--source", type=Path,
                        help="HaN-Seg-layout folder the raw dataset came from: use the cases' own MR files")
    parser.add_argument("--baseline", type=Path,
                        help="heldout_metrics.json of another model on the same cases: its Dice beside in the table")
    parser.add_argument("--baseline-name", default="previous model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.model_card import fill_heldout

    results = evaluate(args.model, args.raw, args.work, args.threads, args.source)
    labels = output_oar_names(json.loads((args.model / "dataset.json").read_text()))
    metrics = json.dumps(results, indent=1, default=str) + "\n"
    (args.work / "heldout_metrics.json").write_text(metrics)
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    md = heldout_markdown(results, labels, baseline, args.baseline_name)
    print(md)
    if not args.no_card:
        (args.model / "heldout_metrics.json").write_text(metrics)
        fill_heldout(args.model, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

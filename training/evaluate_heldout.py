"""Measure an exported model on held-out cases, with and without the T1 channel, and fill the model card table.

Held-out cases are a raw dataset's ``imagesTs`` (``<case>_0000`` CT) and ``labelsTs`` (dataset label values).
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
        --raw work_dirs/nnUNet_raw/Dataset501_OpenKBPHaN --work work_dirs/heldout_eval
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

    dataset = json.loads((model / "dataset.json").read_text())
    lut = np.asarray(model_to_hanseg_lookup(dataset["labels"]), dtype=np.uint8)
    gt_dir = work / "gt_hanseg"
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


def heldout_markdown(results: dict[str, Any], labels: list[str]) -> str:
    """The model-card table: Dice and HD95 (mean over cases) per OAR, with and without T1."""
    w, wo = results["with_t1"]["summary"], results["without_t1"]["summary"]

    def cell(s: dict[str, Any], key: str, digits: int) -> str:
        v = s[key]["mean"]
        return "-" if v is None else f"{v:.{digits}f}"

    note = results.get("heldout_note") or heldout_note(Path("raw"), None)
    lines = [
        f"Cases: {', '.join(c.split('.')[0] for c in results['cases'])} ({note['cases']}). "
        "Predicted by process.py (dataset mode: registration of the case's T1, all exported folds, export), "
        "CPU; HD95 of an empty prediction counted as the image diagonal (evaluation package).",
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
    lines.append(f"Wall time per case of process.py (2 shared CPU cores; registration included with T1): "
                 f"{results['with_t1']['seconds_per_case']} s with T1, {results['without_t1']['seconds_per_case']} s "
                 f"without. {note['t1']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("weights"))
    parser.add_argument("--raw", type=Path, default=Path("work_dirs/nnUNet_raw/Dataset501_OpenKBPHaN"))
    parser.add_argument("--work", type=Path, default=Path("work_dirs/heldout_eval"))
    parser.add_argument("--no-card", action="store_true",
                        help="write nothing into the model folder (README.md, heldout_metrics.json)")
    parser.add_argument("--threads", type=int, help="process.py --threads (default: all cores)")
    parser.add_argument("--source", type=Path,
                        help="HaN-Seg-layout folder the raw dataset came from: use the cases' own MR files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.model_card import fill_heldout

    results = evaluate(args.model, args.raw, args.work, args.threads, args.source)
    labels = [n for n in json.loads((args.model / "dataset.json").read_text())["labels"] if n != "background"]
    metrics = json.dumps(results, indent=1, default=str) + "\n"
    (args.work / "heldout_metrics.json").write_text(metrics)
    md = heldout_markdown(results, labels)
    print(md)
    if not args.no_card:
        (args.model / "heldout_metrics.json").write_text(metrics)
        fill_heldout(args.model, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What limits an OAR's Dice on the shared OpenKBP data: where contours start and stop along z, and voxel size.

Two measurements, both on train-pats cases only (the held-out validation-pats are never read):

* ``extent``: a prediction's error for one OAR split into the part on the axial slices that both the reference and
  the prediction contain (the outline) and the part on slices only one of them contains (the extent). OpenKBP's
  esophagus and larynx are contoured over very different lengths; this says whether a better outline would lift
  an OAR or whether its Dice is lost where the contours stop.
* ``shift``: the Dice of each reference against itself moved by one voxel of its own grid (OpenKBP's CTs range
  from 2.7 to 5.1 mm in-plane and 1.5 to 3.3 mm along z; the report gives the mean and range per OAR): how much a
  one-voxel displacement costs each OAR at this resolution, the scale against which a model's Dice (and a target
  such as 0.80) is read.

Arrays are numpy z, y, x (axis 0 = axial slice, cranio-caudal); spacing is given in the same order, in mm.

    python -m training.dice_limits extent --pred work_dirs/cv_preds [--oars Esophagus_S Larynx_SG] [--report out.json]
    python -m training.dice_limits shift [--report out.json]

``--pred`` holds label maps in HaN-Seg values named ``<case>.mha`` (any depth: e.g. the cross-validation
predictions of ``training.determine_postprocessing``); the references are the shared train-pats cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from contract.labels import HANSEG_LABELS
from evaluation.metrics import dice
from training.convert_openkbp import default_sources
from training.determine_postprocessing import openkbp_training_cases, training_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtentSplit:
    """One case's error for one OAR, split by slice.

    dice: Dice over the whole volume; dice_shared_slices: Dice over the slices both masks contain (1.0 would mean
    a perfect outline wherever both have the organ); missing_mm / extra_mm: length along z of the slices only the
    reference / only the prediction contains; extent_error_fraction: share of the error voxels (false positives +
    false negatives) on those slices.
    """

    dice: float
    dice_shared_slices: float
    missing_mm: float
    extra_mm: float
    extent_error_fraction: float


def split_by_extent(pred: np.ndarray, ref: np.ndarray, slice_mm: float) -> ExtentSplit:
    """Split the disagreement of two boolean masks (z, y, x) into shared-slice and extent parts.

    ``slice_mm`` is the slice spacing (axis 0) in mm. The reference must be non-empty.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    if not ref.any():
        raise ValueError("the reference mask is empty")
    in_pred, in_ref = pred.any(axis=(1, 2)), ref.any(axis=(1, 2))
    shared = in_pred & in_ref
    errors = np.logical_xor(pred, ref).sum(axis=(1, 2))
    n_errors = int(errors.sum())
    return ExtentSplit(
        dice=dice(pred, ref),
        dice_shared_slices=dice(pred[shared], ref[shared]) if shared.any() else 0.0,
        missing_mm=float((in_ref & ~in_pred).sum() * slice_mm),
        extra_mm=float((in_pred & ~in_ref).sum() * slice_mm),
        extent_error_fraction=float(errors[~shared].sum() / n_errors) if n_errors else 0.0,
    )


def summarise(splits: Sequence[ExtentSplit]) -> dict[str, float]:
    """Means over cases of every field, plus the number of cases."""
    rows = [asdict(s) for s in splits]
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} if rows else {}
    return {"cases": len(rows), **out}


def shifted_dice(mask: np.ndarray, axis: int, voxels: int = 1) -> float:
    """Dice of a boolean mask (z, y, x) against itself translated by ``voxels`` along ``axis`` (no wrap-around:
    what leaves the grid is lost, what enters is background)."""
    if not mask.any():
        raise ValueError("the mask is empty")
    moved = np.zeros_like(mask)
    n = mask.shape[axis]
    src = [slice(None)] * mask.ndim
    dst = [slice(None)] * mask.ndim
    src[axis], dst[axis] = slice(0, max(n - voxels, 0)), slice(voxels, n)
    moved[tuple(dst)] = mask[tuple(src)]
    return dice(mask, moved)


def _prediction_files(pred_root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(pred_root.rglob("*.mha")):
        case = path.name.removesuffix(".mha")
        if case in found:
            raise ValueError(f"{pred_root}: two predictions of {case}: {found[case]} and {path}")
        found[case] = path
    return found


def extent_report(pred_root: Path, oars: Sequence[str]) -> dict[str, Any]:
    """Per OAR: per-case :class:`ExtentSplit` fields and their means, over the predictions in ``pred_root``."""
    cases = openkbp_training_cases(default_sources())
    preds = _prediction_files(pred_root)
    unknown = sorted(set(preds) - set(cases))
    if unknown:
        raise ValueError(f"{pred_root}: predictions of cases that are not shared train-pats: {unknown[:5]}")
    per_case: dict[str, dict[str, dict[str, float]]] = {o: {} for o in oars}
    for case, path in tqdm(sorted(preds.items()), desc="extent", unit="case"):
        ref_img, ref, annotated = training_reference(*cases[case])
        pred_img = sitk.ReadImage(str(path))
        if pred_img.GetSize() != ref_img.GetSize():
            raise ValueError(f"{path}: size {pred_img.GetSize()} differs from the reference {ref_img.GetSize()}")
        pred = sitk.GetArrayFromImage(pred_img)
        for oar in oars:
            value = HANSEG_LABELS[oar]
            if oar in annotated and (ref == value).any():
                per_case[oar][case] = asdict(split_by_extent(pred == value, ref == value, ref_img.GetSpacing()[2]))
    summary = {oar: summarise([ExtentSplit(**v) for v in rows.values()]) for oar, rows in per_case.items()}
    for oar, m in summary.items():
        if m["cases"]:
            log.info("%s over %d cases: Dice %.3f, Dice on shared slices %.3f, missing %.1f mm, extra %.1f mm, "
                     "%.0f %% of the error voxels on slices only one mask has", oar, m["cases"], m["dice"],
                     m["dice_shared_slices"], m["missing_mm"], m["extra_mm"], 100 * m["extent_error_fraction"])
    return {"summary": summary, "per_case": per_case}


def shift_report() -> dict[str, dict[str, float]]:
    """Per OAR: mean over the train-pats cases that annotate it of :func:`shifted_dice` by one voxel along z
    (axis 0) and along x (axis 2, left-right in-plane), with the mean, smallest and largest voxel size in mm of
    those cases (each case is moved by one voxel of its own grid)."""
    cases = openkbp_training_cases(default_sources())
    scores: dict[str, dict[str, list[float]]] = {}
    for case in tqdm(sorted(cases), desc="shift", unit="case"):
        ref_img, ref, annotated = training_reference(*cases[case])
        x_mm, _, z_mm = ref_img.GetSpacing()
        for oar in sorted(annotated):
            mask = ref == HANSEG_LABELS[oar]
            if mask.any():
                row = scores.setdefault(oar, {"z": [], "x": [], "z_mm": [], "x_mm": []})
                row["z"].append(shifted_dice(mask, 0))
                row["x"].append(shifted_dice(mask, 2))
                row["z_mm"].append(z_mm)
                row["x_mm"].append(x_mm)
    out: dict[str, dict[str, float]] = {}
    for oar, r in sorted(scores.items()):
        m = {"cases": len(r["z"]), "dice_shift_z": float(np.mean(r["z"])), "dice_shift_x": float(np.mean(r["x"]))}
        for axis in ("z_mm", "x_mm"):
            m.update({axis: float(np.mean(r[axis])), f"{axis}_min": float(np.min(r[axis])),
                      f"{axis}_max": float(np.max(r[axis]))})
        out[oar] = m
        log.info("%s over %d cases: one voxel along z (mean %.1f mm, %.1f-%.1f) %.3f, along x (mean %.1f mm, "
                 "%.1f-%.1f) %.3f", oar, m["cases"], m["z_mm"], m["z_mm_min"], m["z_mm_max"], m["dice_shift_z"],
                 m["x_mm"], m["x_mm_min"], m["x_mm_max"], m["dice_shift_x"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    extent = sub.add_parser("extent", help="split a prediction's error into outline and z-extent parts")
    extent.add_argument("--pred", type=Path, required=True, help="folder of <case>.mha label maps (HaN-Seg values)")
    extent.add_argument("--oars", nargs="+", default=["Esophagus_S", "Larynx_SG"])
    shift = sub.add_parser("shift", help="Dice of each reference against itself moved by one voxel")
    for p in (extent, shift):
        p.add_argument("--report", type=Path, help="write the result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "extent":
        unknown = [o for o in args.oars if o not in HANSEG_LABELS]
        if unknown:
            parser.error(f"unknown OAR name(s) {unknown}; names are the contract's label names")
        try:
            result: dict[str, Any] = extent_report(args.pred, args.oars)
        except (ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 1
    else:
        result = shift_report()
    if args.report:
        args.report.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a folder of predicted label maps against HaN-Seg ground truth; write per-case and summary tables.

Outputs in ``out_dir`` (see ``evaluation/README.md`` for the columns):

- ``metrics_per_case.csv`` / ``metrics_per_case.json``: one row per (case, OAR), including the OARs skipped for
  missing ground truth (``status = missing_gt``) with the reason;
- ``summary.csv`` / ``summary.json``: per-OAR mean, sd and median over cases, plus an ``ALL`` row over every scored
  (case, OAR) pair;
- ``summary.txt``: the printed per-OAR table.

HD95 of an empty prediction is ``inf`` in the per-case tables (``"inf"`` in JSON, which has no infinity). Means and
standard deviations use the *penalised* HD95 instead: the case's image diagonal ``|(size - 1) * spacing|`` in mm,
the largest distance two voxel centres of that grid can have, so an empty prediction never scores better than any
real one. Medians are taken over the raw values (``inf`` included).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from contract.atomic import write_atomic
from contract.errors import InputError
from contract.imageio import read_image
from contract.labels import HANSEG_LABELS, HANSEG_OAR_NAMES, MAX_LABEL
from evaluation.cases import (
    CasePair,
    GroundTruthCase,
    check_same_grid,
    discover_ground_truth,
    discover_predictions,
    find_image,
    match_cases,
    read_label_map,
    read_mask,
)
from evaluation.metrics import DEFAULT_TOLERANCE_MM, HD_PERCENTILE, bounding_box, compute_oar_metrics, union_crop

log = logging.getLogger(__name__)

PENALTY_DESCRIPTION = (
    "HD95 of an empty prediction is +inf; means and sds use instead the case's image diagonal "
    "|(size - 1) * spacing| in mm (largest possible distance between two voxel centres of the grid)"
)

STATUS_OK = "ok"
STATUS_MISSING_GT = "missing_gt"

CSV_COLUMNS = (
    "case_id", "oar", "label", "status", "dsc", "hd95_mm", "hd95_penalised_mm", "surface_dice",
    "gt_volume_ml", "pred_volume_ml", "note",
)


@dataclass
class OarResult:
    """One (case, OAR) row. Metrics are None when the OAR has no ground truth (``status == "missing_gt"``).

    ``hd95_mm`` is ``inf`` for an empty prediction; ``hd95_penalised_mm`` then holds the case's penalty.
    Volumes are in ml; ``surface_dice`` is at the tolerance stated in the output metadata (2 mm by default).
    """

    case_id: str
    oar: str
    label: int
    status: str
    dsc: float | None = None
    hd95_mm: float | None = None
    hd95_penalised_mm: float | None = None
    surface_dice: float | None = None
    gt_volume_ml: float | None = None
    pred_volume_ml: float = 0.0
    note: str = ""


@dataclass
class CaseResult:
    """All OAR rows of one case, with the files and grid they came from (spacing in mm, x, y, z order)."""

    case_id: str
    prediction: str
    ground_truth: str
    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    penalty_hd95_mm: float
    oars: list[OarResult] = field(default_factory=list)

    @property
    def missing_gt(self) -> list[str]:
        """Names of the OARs not scored for lack of ground truth."""
        return [r.oar for r in self.oars if r.status == STATUS_MISSING_GT]


@dataclass
class Evaluation:
    """Everything :func:`evaluate_folder` computed."""

    cases: list[CaseResult]
    summary: dict[str, Any]
    unmatched_predictions: list[str]
    cases_without_prediction: list[str]
    tolerance_mm: float


def image_diagonal_mm(image: sitk.Image) -> float:
    """Largest distance between two voxel centres of the grid of ``image``: ``|(size - 1) * spacing|`` in mm."""
    extent = (np.asarray(image.GetSize(), dtype=float) - 1.0) * np.asarray(image.GetSpacing(), dtype=float)
    return float(np.linalg.norm(extent))


def _score(
    case_id: str, name: str, pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float], voxel_ml: float,
    penalty: float, tolerance_mm: float,
) -> OarResult:
    m = compute_oar_metrics(pred, gt, spacing_zyx, tolerance_mm=tolerance_mm, percentile=HD_PERCENTILE)
    return OarResult(
        case_id, name, HANSEG_LABELS[name], STATUS_OK, dsc=m.dsc, hd95_mm=m.hd95_mm,
        hd95_penalised_mm=m.hd95_mm if math.isfinite(m.hd95_mm) else penalty, surface_dice=m.surface_dice,
        gt_volume_ml=m.gt_voxels * voxel_ml, pred_volume_ml=m.pred_voxels * voxel_ml,
    )


def evaluate_case(
    pair: CasePair, tolerance_mm: float = DEFAULT_TOLERANCE_MM, keep_gt_labels: bool = False
) -> tuple[CaseResult, sitk.Image, sitk.Image | None]:
    """Score one prediction against its ground truth, OAR by OAR.

    Args:
        pair: the matched prediction and ground truth.
        tolerance_mm: surface-Dice tolerance in mm.
        keep_gt_labels: also return the ground truth as a label map (for QA pictures; with the case-folder layout,
            where masks may overlap, the higher label value wins).

    Returns:
        The :class:`CaseResult`, the prediction image, and the ground-truth label map (or None).

    Raises:
        InputError: unreadable files, invalid label values, or a grid mismatch (naming both files).
    """
    gt_case = pair.ground_truth
    pred_img, pred = read_label_map(pair.prediction, "prediction")
    spacing_xyz = tuple(float(s) for s in pred_img.GetSpacing())
    spacing_zyx = spacing_xyz[::-1]
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    penalty = image_diagonal_mm(pred_img)
    pred_boxes = ndimage.find_objects(pred, max_label=MAX_LABEL)
    pred_counts = [0] + [0 if box is None else int(np.count_nonzero(pred[box] == v))
                         for v, box in enumerate(pred_boxes, start=1)]
    result = CaseResult(
        pair.case_id, str(pair.prediction), str(gt_case.path), tuple(pred_img.GetSize()), spacing_xyz, penalty
    )
    gt_labels: np.ndarray | None = None

    def missing(name: str, note: str) -> OarResult:
        value = HANSEG_LABELS[name]
        return OarResult(pair.case_id, name, value, STATUS_MISSING_GT, pred_volume_ml=pred_counts[value] * voxel_ml,
                         note=note)

    if gt_case.is_folder:
        if keep_gt_labels:
            gt_labels = np.zeros(pred.shape, dtype=np.uint8)
        for name in HANSEG_OAR_NAMES:
            value = HANSEG_LABELS[name]
            path = gt_case.mask_files.get(name)
            if path is None:
                result.oars.append(missing(name, "no ground-truth mask file"))
                continue
            mask = read_mask(path, pred_img, pair.prediction)
            gt_box = bounding_box(mask)
            if gt_box is None:
                result.oars.append(missing(name, f"ground-truth mask is empty ({path.name})"))
                continue
            if gt_labels is not None:
                gt_labels[mask] = value
            crop = union_crop([gt_box, pred_boxes[value - 1]], pred.shape)
            result.oars.append(
                _score(pair.case_id, name, pred[crop] == value, mask[crop], spacing_zyx, voxel_ml, penalty,
                       tolerance_mm)
            )
        gt_image = None
        if gt_labels is not None:
            gt_image = sitk.GetImageFromArray(gt_labels)
            gt_image.CopyInformation(pred_img)
    else:
        gt_image, gt = read_label_map(gt_case.path, "ground-truth label map")
        check_same_grid(pred_img, pair.prediction, gt_image, gt_case.path)
        gt_boxes = ndimage.find_objects(gt, max_label=MAX_LABEL)
        for name in HANSEG_OAR_NAMES:
            value = HANSEG_LABELS[name]
            if gt_boxes[value - 1] is None:
                result.oars.append(missing(name, "label absent from the ground-truth label map"))
                continue
            crop = union_crop([gt_boxes[value - 1], pred_boxes[value - 1]], pred.shape)
            result.oars.append(
                _score(pair.case_id, name, pred[crop] == value, gt[crop] == value, spacing_zyx, voxel_ml, penalty,
                       tolerance_mm)
            )
        if not keep_gt_labels:
            gt_image = None
    scored = [r for r in result.oars if r.status == STATUS_OK]
    if scored:
        log.info(
            "%s: %d OARs scored, mean DSC %.3f, %d empty predictions, %d without ground truth",
            pair.case_id, len(scored), float(np.mean([r.dsc for r in scored])),
            sum(1 for r in scored if not math.isfinite(r.hd95_mm)), len(result.missing_gt),
        )
    else:
        log.warning("%s: no OAR has ground truth; nothing scored", pair.case_id)
    return result, pred_img, gt_image


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    """mean, sample sd (ddof=1; None for fewer than 2 values), median, min, max of finite values."""
    if not values:
        return {"mean": None, "sd": None, "median": None, "min": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def _group_summary(rows: Sequence[OarResult]) -> dict[str, Any]:
    scored = [r for r in rows if r.status == STATUS_OK]
    raw_hd = [float(r.hd95_mm) for r in scored]  # type: ignore[arg-type]
    return {
        "n": len(scored),
        "n_missing_gt": sum(1 for r in rows if r.status == STATUS_MISSING_GT),
        "n_empty_prediction": sum(1 for h in raw_hd if not math.isfinite(h)),
        "dsc": _stats([r.dsc for r in scored]),  # type: ignore[misc]
        "hd95_mm": _stats([r.hd95_penalised_mm for r in scored]),  # type: ignore[misc]
        "hd95_median_raw_mm": float(np.median(raw_hd)) if raw_hd else None,
        "surface_dice": _stats([r.surface_dice for r in scored]),  # type: ignore[misc]
    }


def summarise(cases: Sequence[CaseResult]) -> dict[str, Any]:
    """Per-OAR statistics over cases (only cases with ground truth for the OAR), and an ``ALL`` entry.

    ``hd95_mm`` statistics use the penalised HD95; ``hd95_median_raw_mm`` is the median of the raw values
    (``inf`` if more than half the predictions are empty).
    """
    rows = [r for c in cases for r in c.oars]
    per_oar = {name: _group_summary([r for r in rows if r.oar == name]) for name in HANSEG_OAR_NAMES}
    return {"per_oar": per_oar, "all": _group_summary(rows)}


def _pm(stats: dict[str, float | None], digits: int) -> str:
    if stats["mean"] is None:
        return "-"
    sd = "-" if stats["sd"] is None else f"{stats['sd']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {sd}"


def format_table(summary: dict[str, Any], n_cases: int, tolerance_mm: float, cases: Sequence[CaseResult] = ()) -> str:
    """The per-OAR table (mean ± sd over cases), as printed by the command line."""
    head = (
        f"{'OAR':<17}{'n':>4}  {'DSC':>15}  {'HD95 (mm)':>17}  {f'SDSC@{tolerance_mm:g}mm':>15}  {'empty':>5}"
    )
    lines = [
        f"HaN-Seg evaluation over {n_cases} case(s): mean ± sd over cases; HD95 of empty predictions counted as the "
        "image diagonal",
        head,
        "-" * len(head),
    ]

    def row(name: str, s: dict[str, Any]) -> str:
        return (
            f"{name:<17}{s['n']:>4}  {_pm(s['dsc'], 3):>15}  {_pm(s['hd95_mm'], 2):>17}  "
            f"{_pm(s['surface_dice'], 3):>15}  {s['n_empty_prediction']:>5}"
        )

    for name in HANSEG_OAR_NAMES:
        s = summary["per_oar"][name]
        if s["n"]:
            lines.append(row(name, s))
    lines.append("-" * len(head))
    lines.append(row("ALL", summary["all"]))
    absent = [name for name in HANSEG_OAR_NAMES if summary["per_oar"][name]["n"] == 0]
    if absent:
        lines.append(f"No ground truth in any case (not scored): {', '.join(absent)}")
    partly = [f"{c.case_id}: {', '.join(m for m in c.missing_gt if m not in absent)}" for c in cases]
    partly = [p for p in partly if not p.endswith(": ")]
    if partly:
        lines.append("Missing ground truth (not scored): " + "; ".join(partly))
    return "\n".join(lines)


def json_value(value: Any) -> Any:
    """``value`` made strict-JSON-safe, recursively: non-finite floats as ``"inf"`` / ``"-inf"`` / ``None`` (NaN),
    tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else None)
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, np.generic):
        return json_value(value.item())
    return value


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:.6g}"
    return str(value)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (:func:`contract.atomic.write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""), what="evaluation output")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (``\n`` line ends): ``header``, then ``rows`` with None as an empty cell, floats to 6
    significant digits and infinity as ``inf``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


def metadata(tolerance_mm: float) -> dict[str, Any]:
    """Definitions recorded in every JSON output."""
    return {
        "metrics": {
            "dsc": "2|P&G|/(|P|+|G|)",
            "hd95_mm": f"max of the two directed {HD_PERCENTILE:g}th percentiles (numpy linear interpolation) of "
            "surface-voxel to nearest-surface-voxel Euclidean distances, physical spacing, mm",
            "surface_dice": f"fraction of surface voxels of P and G within {tolerance_mm:g} mm of the other surface",
            "surface": "mask voxels with a face neighbour outside the mask (6-connectivity); array border = outside",
        },
        "surface_dice_tolerance_mm": tolerance_mm,
        "hd95_empty_prediction": "inf",
        "hd95_penalty": PENALTY_DESCRIPTION,
        "sd": "sample standard deviation (ddof=1), null for n < 2",
        "labels": dict(HANSEG_LABELS),
    }


def write_outputs(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write the per-case and summary CSV/JSON files and ``summary.txt`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    rows = [r for c in evaluation.cases for r in c.oars]
    meta = metadata(evaluation.tolerance_mm)
    per_case = {
        "metadata": meta,
        "cases": {
            c.case_id: {
                "prediction": c.prediction,
                "ground_truth": c.ground_truth,
                "size_xyz": list(c.size_xyz),
                "spacing_xyz_mm": list(c.spacing_xyz),
                "penalty_hd95_mm": c.penalty_hd95_mm,
                "missing_gt": c.missing_gt,
                "oars": {r.oar: {k: v for k, v in asdict(r).items() if k not in ("case_id", "oar")} for r in c.oars},
            }
            for c in evaluation.cases
        },
    }
    summary = {
        "metadata": meta,
        "n_cases": len(evaluation.cases),
        "cases": [c.case_id for c in evaluation.cases],
        "unmatched_predictions": evaluation.unmatched_predictions,
        "cases_without_prediction": evaluation.cases_without_prediction,
        "missing_gt": {c.case_id: c.missing_gt for c in evaluation.cases if c.missing_gt},
        **evaluation.summary,
    }
    summary_rows = []
    for name, s in [*evaluation.summary["per_oar"].items(), ("ALL", evaluation.summary["all"])]:
        summary_rows.append([
            name, HANSEG_LABELS.get(name, ""), s["n"], s["n_missing_gt"], s["n_empty_prediction"],
            s["dsc"]["mean"], s["dsc"]["sd"], s["dsc"]["median"],
            s["hd95_mm"]["mean"], s["hd95_mm"]["sd"], s["hd95_median_raw_mm"],
            s["surface_dice"]["mean"], s["surface_dice"]["sd"], s["surface_dice"]["median"],
        ])
    table = format_table(evaluation.summary, len(evaluation.cases), evaluation.tolerance_mm, evaluation.cases)
    outputs = {
        "metrics_per_case.csv": csv_text(CSV_COLUMNS, ([getattr(r, c) for c in CSV_COLUMNS] for r in rows)),
        "metrics_per_case.json": json.dumps(json_value(per_case), indent=1, allow_nan=False) + "\n",
        "summary.csv": csv_text(
            ("oar", "label", "n", "n_missing_gt", "n_empty_prediction", "dsc_mean", "dsc_sd", "dsc_median",
             "hd95_mean_mm", "hd95_sd_mm", "hd95_median_raw_mm", "surface_dice_mean", "surface_dice_sd",
             "surface_dice_median"),
            summary_rows,
        ),
        "summary.json": json.dumps(json_value(summary), indent=1, allow_nan=False) + "\n",
        "summary.txt": table + "\n",
    }
    paths = []
    for name, text in outputs.items():
        write_text_atomic(out_dir / name, text)
        paths.append(out_dir / name)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def load_rows(path: str | Path) -> list[OarResult]:
    """Read the (case, OAR) rows back from a ``metrics_per_case.json`` written by :func:`write_outputs`.

    Raises:
        InputError: if the file is missing or not such a file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = []
        for case_id, case in data["cases"].items():
            for oar, r in case["oars"].items():
                values = {k: (math.inf if v == "inf" else v) for k, v in r.items()}
                rows.append(OarResult(case_id=case_id, oar=oar, **values))
    except FileNotFoundError:
        raise InputError(path, "evaluation results file does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        problem = f"not a metrics_per_case.json written by this tool ({type(err).__name__}: {err})"
        raise InputError(path, problem) from None
    return rows


def evaluate_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    allow_missing: bool = False,
    qa_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> Evaluation:
    """Evaluate every prediction in ``pred_dir`` against the ground truth in ``gt_dir``.

    Args:
        pred_dir: folder of predicted label maps, one per case.
        gt_dir: ground truth, HaN-Seg case folders or label maps (see :mod:`evaluation.cases`).
        out_dir: where to write the tables (see the module docstring); None writes nothing.
        tolerance_mm: surface-Dice tolerance in mm.
        allow_missing: score only the cases that have a prediction instead of failing when some have none.
        qa_dir: if given, write a QA picture and volume JSON per case for the prediction (``<case>_pred``) and the
            ground truth (``<case>_gt``) on the case's CT; cases without a CT are skipped with a warning.
        images_dir: where to look for CTs (``<case>_IMG_CT.*`` or ``<case>_0000.*``) when the ground-truth folder
            has none (label-map layout).

    Raises:
        InputError: bad folders or files, unmatched names, grid mismatch; cases without prediction unless
            ``allow_missing``.
    """
    if tolerance_mm < 0 or not math.isfinite(tolerance_mm):
        raise InputError(None, f"the surface-Dice tolerance must be a finite number >= 0 mm, got {tolerance_mm}")
    ground_truth = discover_ground_truth(gt_dir)
    matching = match_cases(discover_predictions(pred_dir), ground_truth)
    for path in matching.unmatched_predictions:
        log.warning("%s: no ground-truth case with a matching name; ignored", path)
    if not matching.pairs:
        raise InputError(pred_dir, f"no prediction matches a ground-truth case name in {gt_dir}")
    if matching.cases_without_prediction:
        message = f"no prediction for {len(matching.cases_without_prediction)} case(s): " + ", ".join(
            matching.cases_without_prediction
        )
        if not allow_missing:
            raise InputError(pred_dir, message + " (use --allow-missing to score only the others)")
        log.warning("%s; they are not scored", message)
    log.info("evaluating %d case(s) from %s against %s", len(matching.pairs), pred_dir, gt_dir)
    cases: list[CaseResult] = []
    for pair in matching.pairs:
        result, pred_img, gt_img = evaluate_case(pair, tolerance_mm, keep_gt_labels=qa_dir is not None)
        cases.append(result)
        if qa_dir is not None:
            _write_case_qa(pair.ground_truth, pred_img, gt_img, pair.prediction, Path(qa_dir), images_dir)
    evaluation = Evaluation(
        cases, summarise(cases), [str(p) for p in matching.unmatched_predictions],
        list(matching.cases_without_prediction), float(tolerance_mm),
    )
    if out_dir is not None:
        write_outputs(evaluation, Path(out_dir))
    return evaluation


def _write_case_qa(
    gt_case: GroundTruthCase, pred_img: sitk.Image, gt_img: sitk.Image | None, pred_path: Path, qa_dir: Path,
    images_dir: str | Path | None,
) -> None:
    from evaluation.qa import write_qa  # Pillow is imported only when QA pictures are asked for

    ct_path = gt_case.ct_path
    if ct_path is None and images_dir is not None:
        ct_path = find_image(images_dir, gt_case.case_id)
    if ct_path is None:
        log.warning("%s: no CT found for the QA picture (use --images DIR); skipped", gt_case.case_id)
        return
    try:
        ct = read_image(ct_path, "CT")
        check_same_grid(pred_img, pred_path, ct, ct_path)
    except InputError as err:
        log.warning("no QA picture for %s: %s", gt_case.case_id, err)
        return
    write_qa(ct, pred_img, qa_dir, f"{gt_case.case_id}_pred")
    if gt_img is not None:
        write_qa(ct, gt_img, qa_dir, f"{gt_case.case_id}_gt")

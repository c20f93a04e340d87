"""Finding ground truth and predictions on disk, matching them by case id, and reading them with validation.

Ground truth comes in one of two layouts (detected automatically):

- **HaN-Seg case folders**: ``GT/case_XX/case_XX_OAR_<Name>.seg.nrrd``, one binary mask per OAR (non-zero = inside),
  ``<Name>`` from :data:`contract.labels.HANSEG_OAR_NAMES`; the CT (``*_IMG_CT.*``) and MR (``*_IMG_MR_T1.*``) of the
  folder are used for QA pictures only.
- **Label maps**: ``GT/<case>.<ext>``, one image per case with HaN-Seg label values 0..30.

Predictions are label maps ``PRED/<name>.<ext>`` (``.mha``, ``.nrrd``, ``.nii.gz``, ... as
:data:`contract.imageio.SUPPORTED_EXTENSIONS`). A prediction belongs to a case when both names carry the same
HaN-Seg case number (``case_7``, ``case_07``, ``Case-07`` are the same case), or otherwise when one file stem equals
the other or starts with it followed by ``_``, ``-`` or ``.``.

SimpleITK images are indexed (x, y, z); the numpy arrays returned here are indexed (z, y, x).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from contract.errors import InputError
from contract.imageio import image_extension, image_stem, read_image
from contract.labels import HANSEG_LABELS, MAX_LABEL
from evaluation.geometry import geometry_difference

log = logging.getLogger(__name__)

_CASE_NUMBER = re.compile(r"(?i)(?<![a-z0-9])case[_-]?(\d+)(?![0-9])")
_SEPARATORS = ("_", "-", ".")
_INTEGER_PIXEL_IDS = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64,
}


@dataclass(frozen=True)
class GroundTruthCase:
    """One ground-truth case.

    Attributes:
        case_id: the case folder name (folder layout) or the label-map file stem.
        path: the case folder or the label-map file.
        mask_files: folder layout only: OAR name -> mask file.
        ct_path: the case's CT, if known (QA pictures only).
        mr_path: the case's T1 MR, if known (not used for QA: HaN-Seg MRs are not registered to the CT).
        ignored_files: image files in a case folder that are not a recognised OAR mask, CT or MR.
    """

    case_id: str
    path: Path
    mask_files: Mapping[str, Path] = field(default_factory=dict)
    ct_path: Path | None = None
    mr_path: Path | None = None
    ignored_files: tuple[Path, ...] = ()

    @property
    def is_folder(self) -> bool:
        """True for the HaN-Seg case-folder layout, False for a label map."""
        return self.path.is_dir()


@dataclass(frozen=True)
class CasePair:
    """A prediction matched to its ground truth."""

    case_id: str
    prediction: Path
    ground_truth: GroundTruthCase


@dataclass(frozen=True)
class Matching:
    """Result of :func:`match_cases`: the pairs, predictions without ground truth, cases without prediction."""

    pairs: list[CasePair]
    unmatched_predictions: list[Path]
    cases_without_prediction: list[str]


def case_key(name: str) -> str | None:
    """Canonical HaN-Seg case id (``case_07``) found in a file or folder name, or None if there is none."""
    found = _CASE_NUMBER.findall(name)
    return f"case_{int(found[0]):02d}" if len(found) == 1 else None


def names_match(a: str, b: str) -> bool:
    """Whether two file stems / case ids denote the same case (see the module docstring for the rule)."""
    ka, kb = case_key(a), case_key(b)
    if ka is not None and kb is not None:
        return ka == kb
    if a == b:
        return True
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return long_.startswith(short) and long_[len(short)] in _SEPARATORS


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and image_extension(p) is not None)


def _mask_name(path: Path) -> str | None:
    stem = image_stem(path)
    if stem.endswith(".seg"):
        stem = stem[: -len(".seg")]
    if "_OAR_" not in stem:
        return None
    return stem.split("_OAR_", 1)[1]


def _read_case_folder(folder: Path) -> GroundTruthCase:
    masks: dict[str, Path] = {}
    ignored: list[Path] = []
    ct = mr = None
    for path in _image_files(folder):
        stem = image_stem(path)
        name = _mask_name(path)
        if name is not None and name in HANSEG_LABELS:
            if name in masks:
                raise InputError(path, f"second ground-truth mask for {name} in the case folder (first: {masks[name]})")
            masks[name] = path
        elif stem.endswith("_IMG_CT"):
            ct = path
        elif stem.endswith("_IMG_MR_T1"):
            mr = path
        else:
            ignored.append(path)
    for path in ignored:
        log.warning("%s: not a HaN-Seg OAR mask (expected <case>_OAR_<Name>.seg.nrrd, HaN-Seg name); ignored", path)
    return GroundTruthCase(folder.name, folder, masks, ct, mr, tuple(ignored))


def discover_ground_truth(gt_dir: str | Path) -> dict[str, GroundTruthCase]:
    """Find the ground-truth cases in ``gt_dir`` (layout detected, see the module docstring).

    Returns:
        case id -> :class:`GroundTruthCase`, sorted by case id.

    Raises:
        InputError: if the folder does not exist, holds no case, or mixes case folders and label maps.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(gt_dir, "ground-truth folder does not exist")
    folders = [
        p for p in sorted(gt_dir.iterdir())
        if p.is_dir() and any(_mask_name(f) is not None for f in _image_files(p))
    ]
    label_maps = _image_files(gt_dir)
    if folders and label_maps:
        raise InputError(
            gt_dir,
            f"holds both HaN-Seg case folders ({folders[0].name}, ...) and label-map images ({label_maps[0].name}, "
            "...); use one layout per folder",
        )
    cases: dict[str, GroundTruthCase] = {}
    if folders:
        for folder in folders:
            cases[folder.name] = _read_case_folder(folder)
    else:
        for path in label_maps:
            case_id = image_stem(path)
            if case_id in cases:
                raise InputError(path, f"second ground-truth label map for case {case_id} ({cases[case_id].path})")
            cases[case_id] = GroundTruthCase(case_id, path)
    if not cases:
        raise InputError(
            gt_dir,
            "no ground truth found: expected case folders with <case>_OAR_<Name>.seg.nrrd masks or label-map images",
        )
    return dict(sorted(cases.items()))


def discover_predictions(pred_dir: str | Path) -> list[Path]:
    """The label-map images directly inside ``pred_dir`` (sorted).

    Raises:
        InputError: if the folder does not exist or holds no image.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist")
    files = _image_files(pred_dir)
    if not files:
        raise InputError(pred_dir, "no prediction images found (.mha, .nrrd, .nii.gz, ...)")
    return files


def match_cases(predictions: list[Path], ground_truth: Mapping[str, GroundTruthCase]) -> Matching:
    """Pair every prediction with its ground-truth case (see the module docstring for the name rule).

    Raises:
        InputError: if a prediction matches several cases, or several predictions match one case.
    """
    by_case: dict[str, Path] = {}
    unmatched: list[Path] = []
    for pred in predictions:
        stem = image_stem(pred)
        candidates = [cid for cid in ground_truth if names_match(stem, cid)]
        if len(candidates) > 1:
            exact = [cid for cid in candidates if cid == stem]
            if len(exact) != 1:
                raise InputError(pred, f"prediction name matches several ground-truth cases: {', '.join(candidates)}")
            candidates = exact
        if not candidates:
            unmatched.append(pred)
            continue
        cid = candidates[0]
        if cid in by_case:
            raise InputError(pred, f"second prediction for case {cid} (first: {by_case[cid]})")
        by_case[cid] = pred
    pairs = [CasePair(cid, by_case[cid], ground_truth[cid]) for cid in ground_truth if cid in by_case]
    missing = [cid for cid in ground_truth if cid not in by_case]
    return Matching(pairs, unmatched, missing)


def find_image(images_dir: str | Path, case_id: str, suffixes: tuple[str, ...] = ("_IMG_CT", "_0000")) -> Path | None:
    """Find a case's image in ``images_dir`` or its case sub-folders by name (e.g. the CT for a QA picture).

    Looks for files whose stem matches ``case_id`` and ends with one of ``suffixes`` (HaN-Seg ``_IMG_CT``,
    nnU-Net ``_0000``); returns None when there is none.
    """
    images_dir = Path(images_dir)
    folders = [images_dir] + [p for p in sorted(images_dir.iterdir()) if p.is_dir()]
    for folder in folders:
        for path in _image_files(folder):
            stem = image_stem(path)
            for suffix in suffixes:
                if stem.endswith(suffix) and names_match(stem[: -len(suffix)], case_id):
                    return path
    return None


def check_same_grid(image: sitk.Image, path: Path, reference: sitk.Image, reference_path: Path) -> None:
    """Raise :class:`InputError` naming both files if ``image`` is not on the grid of ``reference``."""
    difference = geometry_difference(image, reference)
    if difference is not None:
        raise InputError(
            path,
            f"image grid differs from {reference_path}: {difference} (the evaluation never resamples; "
            "put both on the same grid first)",
        )


def label_array(image: sitk.Image, path: Path, role: str) -> np.ndarray:
    """The (z, y, x) uint8 array (a copy) of a HaN-Seg label map, validated.

    Raises:
        InputError: naming ``path`` if voxels are not integers in 0..30.
    """
    array = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() not in _INTEGER_PIXEL_IDS:
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(
                path, f"{role} must hold integer label values, got pixel type {image.GetPixelIDTypeAsString()}"
            )
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > MAX_LABEL:
        values = np.unique(array)
        bad = [int(v) for v in values if v < 0 or v > MAX_LABEL][:10]
        raise InputError(path, f"{role} has label values outside 0..{MAX_LABEL}: {bad}")
    return np.array(array, dtype=np.uint8, copy=True)  # a copy: the view dies with the image


def read_label_map(path: Path, role: str) -> tuple[sitk.Image, np.ndarray]:
    """Read and validate a HaN-Seg label map; returns the image and its (z, y, x) uint8 array."""
    image = read_image(path, role)
    return image, label_array(image, path, role)


def read_mask(path: Path, reference: sitk.Image, reference_path: Path) -> np.ndarray:
    """Read one binary OAR mask (non-zero = inside) on the grid of ``reference``; (z, y, x) boolean array.

    Raises:
        InputError: if it cannot be read or its grid differs from the reference (message names both files).
    """
    image = read_image(path, "ground-truth mask")
    check_same_grid(image, path, reference, reference_path)
    return sitk.GetArrayViewFromImage(image) != 0

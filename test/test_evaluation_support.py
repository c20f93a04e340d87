"""Shared builders for the evaluation tests (no tests here): small synthetic HaN-Seg cases written as real files.

Grid of every synthetic case: SimpleITK size (x, y, z) = (40, 36, 20), spacing (0.8, 0.8, 2.0) mm, so numpy arrays
are (z, y, x) = (20, 36, 40).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from contract.labels import HANSEG_LABELS

SIZE_XYZ = (40, 36, 20)
SPACING_XYZ = (0.8, 0.8, 2.0)
ORIGIN_XYZ = (-12.0, 30.0, 5.0)
SHAPE_ZYX = SIZE_XYZ[::-1]

# Boxes (z, y, x) slices of three OARs in the synthetic cases.
BOXES = {
    "Brainstem": (slice(4, 10), slice(5, 15), slice(5, 15)),
    "SpinalCord": (slice(10, 16), slice(20, 26), slice(18, 24)),
    "Parotid_L": (slice(6, 12), slice(8, 16), slice(28, 36)),
}


def make_image(array: np.ndarray, spacing_xyz: Sequence[float] = SPACING_XYZ,
               origin_xyz: Sequence[float] = ORIGIN_XYZ, direction: Sequence[float] | None = None) -> sitk.Image:
    """SimpleITK image from a (z, y, x) array with the given geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin_xyz))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    return image


def label_map(boxes: Mapping[str, tuple[slice, slice, slice]], shift_x: Mapping[str, int] | None = None) -> np.ndarray:
    """uint8 (z, y, x) HaN-Seg label map with the given OAR boxes, each optionally shifted along x by voxels."""
    arr = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    for name, (sz, sy, sx) in boxes.items():
        k = (shift_x or {}).get(name, 0)
        arr[sz, sy, slice(sx.start + k, sx.stop + k)] = HANSEG_LABELS[name]
    return arr


def synthetic_ct(shape_zyx: Sequence[int] = SHAPE_ZYX) -> np.ndarray:
    """int16 CT-like volume: air (-1000 HU) with a soft-tissue ellipse (40 HU) and a bright 'bone' rim."""
    z, y, x = np.indices(shape_zyx, dtype=float)
    cy, cx = (shape_zyx[1] - 1) / 2, (shape_zyx[2] - 1) / 2
    r = ((y - cy) / (0.48 * shape_zyx[1])) ** 2 + ((x - cx) / (0.48 * shape_zyx[2])) ** 2
    ct = np.full(shape_zyx, -1000, dtype=np.int16)
    ct[r <= 1.0] = 40
    ct[(r > 0.8) & (r <= 1.0)] = 700
    return ct


def write_dataset(root: Path, layout: str, gt_cases: Mapping[str, np.ndarray], with_ct: bool = True) -> Path:
    """Write ground truth under ``root/gt`` in ``layout`` "folder" (HaN-Seg .seg.nrrd masks) or "labelmap".

    Returns the ground-truth folder.
    """
    gt_dir = root / f"gt_{layout}"
    gt_dir.mkdir(parents=True, exist_ok=True)
    for case_id, labels in gt_cases.items():
        if layout == "folder":
            folder = gt_dir / case_id
            folder.mkdir(exist_ok=True)
            for name, value in HANSEG_LABELS.items():
                mask = (labels == value).astype(np.uint8)
                if mask.any():
                    sitk.WriteImage(make_image(mask), str(folder / f"{case_id}_OAR_{name}.seg.nrrd"), True)
            if with_ct:
                sitk.WriteImage(make_image(synthetic_ct()), str(folder / f"{case_id}_IMG_CT.nrrd"), True)
        elif layout == "labelmap":
            sitk.WriteImage(make_image(labels), str(gt_dir / f"{case_id}.nii.gz"), True)
        else:
            raise ValueError(layout)
    return gt_dir


def write_predictions(folder: Path, predictions: Mapping[str, np.ndarray], ext: str = ".mha", **geometry) -> Path:
    """Write one label map per case into ``folder`` as ``<case><ext>``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, labels in predictions.items():
        sitk.WriteImage(make_image(labels, **geometry), str(folder / f"{case_id}{ext}"), True)
    return folder


def standard_cases() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Ground truth and prediction of the 2-case dataset used by the CLI tests.

    case_01: GT Brainstem, SpinalCord, Parotid_L; prediction: Brainstem exact, SpinalCord shifted 1 voxel (0.8 mm)
    along x, Parotid_L missing (empty prediction).
    case_02: GT Brainstem, SpinalCord (no Parotid_L: missing GT); prediction: Brainstem shifted 2 voxels along x,
    SpinalCord exact, and a Parotid_L that has no ground truth.
    """
    gt = {
        "case_01": label_map(BOXES),
        "case_02": label_map({k: v for k, v in BOXES.items() if k != "Parotid_L"}),
    }
    pred = {
        "case_01": label_map({k: v for k, v in BOXES.items() if k != "Parotid_L"}, {"SpinalCord": 1}),
        "case_02": label_map(BOXES, {"Brainstem": 2}),
    }
    return gt, pred

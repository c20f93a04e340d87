"""Overlap and surface-distance metrics of one organ at risk (OAR) on one case.

Arrays are numpy arrays indexed (z, y, x), as returned by ``sitk.GetArrayFromImage``; spacings passed to this module
are therefore in (z, y, x) order, in mm (``image.GetSpacing()[::-1]``). Distances are in mm.

Definitions (see ``evaluation/README.md``):

- **Surface** of a binary mask: its voxels that have at least one face neighbour (6-connectivity) outside the mask;
  voxels on the array border count as surface (the outside of the array is background). This is
  ``mask & ~binary_erosion(mask)`` with scipy's defaults, the definition of MONAI and grand-challenge-metrics.
- **Directed surface distances** A->B: for every surface voxel of A, the Euclidean distance (physical spacing) from
  its centre to the nearest surface-voxel centre of B (exact, ``scipy.ndimage.distance_transform_edt``).
- **DSC** = 2 |P & G| / (|P| + |G|).
- **HD95** = max(p95(P->G), p95(G->P)), p95 = ``numpy.percentile(d, 95)`` (linear interpolation), as MONAI's
  ``compute_hausdorff_distance(percentile=95)``.
- **Surface Dice at tolerance t** = (#{P->G <= t} + #{G->P <= t}) / (#surface(P) + #surface(G)), surface voxels
  counted (not area-weighted), as MONAI's ``compute_surface_dice(use_subvoxels=False)``.
- Empty prediction with non-empty ground truth: DSC 0, HD95 = +inf, surface Dice 0. An empty ground truth is not
  scored (the caller lists the OAR as missing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEFAULT_TOLERANCE_MM = 2.0
"""Surface-Dice tolerance in mm."""

HD_PERCENTILE = 95.0
"""Percentile of the directed surface distances used for HD95."""

_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)

Crop = tuple[slice, slice, slice]


@dataclass(frozen=True)
class OarMetrics:
    """Metrics of one OAR on one case.

    Attributes:
        dsc: Dice similarity coefficient in [0, 1].
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm; ``math.inf`` if the prediction is empty.
        surface_dice: surface Dice at ``tolerance_mm`` in [0, 1].
        tolerance_mm: the surface-Dice tolerance used, in mm.
        gt_voxels: number of ground-truth voxels.
        pred_voxels: number of predicted voxels.
    """

    dsc: float
    hd95_mm: float
    surface_dice: float
    tolerance_mm: float
    gt_voxels: int
    pred_voxels: int


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a 3-D boolean mask (face-connected boundary; array-border voxels are surface)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_CONNECTIVITY, border_value=0)


def directed_surface_distances(
    surface_from: np.ndarray, surface_to: np.ndarray, spacing_zyx: Sequence[float]
) -> np.ndarray:
    """Distances (mm) from every voxel of ``surface_from`` to the nearest voxel of ``surface_to``.

    Args:
        surface_from: boolean (z, y, x) surface mask, non-empty.
        surface_to: boolean (z, y, x) surface mask of the same shape, non-empty.
        spacing_zyx: voxel spacing in mm, (z, y, x) order.

    Returns:
        1-D float64 array, one distance per voxel of ``surface_from`` (C order).
    """
    if not surface_to.any():
        raise ValueError("the target surface is empty")
    distance_map = ndimage.distance_transform_edt(~surface_to, sampling=tuple(float(s) for s in spacing_zyx))
    return np.asarray(distance_map[surface_from], dtype=np.float64)


def bounding_box(mask: np.ndarray) -> Crop | None:
    """Tight bounding box of the non-zero voxels of ``mask`` as (z, y, x) slices, or None if it is empty."""
    boxes = ndimage.find_objects(np.asarray(mask, dtype=bool).view(np.uint8))
    return boxes[0] if boxes and boxes[0] is not None else None


def union_crop(boxes: Sequence[Crop | None], shape: Sequence[int], margin: int = 1) -> Crop | None:
    """Bounding box of several boxes, grown by ``margin`` voxels and clipped to ``shape`` (z, y, x).

    A margin of at least 1 keeps the surface and distances computed on the crop identical to those on the full
    array: every crop face that is not an array face then lies in background of both masks.
    """
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    starts = [max(0, min(b[ax].start for b in boxes) - margin) for ax in range(3)]
    stops = [min(int(shape[ax]), max(b[ax].stop for b in boxes) + margin) for ax in range(3)]
    return (slice(starts[0], stops[0]), slice(starts[1], stops[1]), slice(starts[2], stops[2]))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient 2|P & G| / (|P| + |G|) of two boolean masks (1.0 if both are empty)."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, g).sum()) / total


def compute_oar_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    percentile: float = HD_PERCENTILE,
) -> OarMetrics:
    """DSC, HD95 and surface Dice of one binary prediction against one binary ground truth.

    The masks are cropped to their joint bounding box (plus one voxel) before the distance transforms, so the cost
    depends on the organ size, not on the image size. The array border is treated as the image border (surface
    there); callers passing a crop must therefore leave at least one background voxel around both masks wherever
    the crop is not an image face (see :func:`union_crop`).

    Args:
        pred: predicted mask (z, y, x), any dtype (non-zero = inside).
        gt: ground-truth mask, same shape, must be non-empty.
        spacing_zyx: voxel spacing in mm, (z, y, x) order.
        tolerance_mm: surface-Dice tolerance in mm.
        percentile: the Hausdorff percentile (95 for HD95).

    Returns:
        :class:`OarMetrics`; for an empty prediction DSC 0, HD95 ``inf`` and surface Dice 0.

    Raises:
        ValueError: if the shapes differ, the masks are not 3-D, the spacing is invalid or ``gt`` is empty.
    """
    pred = np.asarray(pred) != 0
    gt = np.asarray(gt) != 0
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"prediction and ground truth must be 3-D arrays of one shape, got {pred.shape}, {gt.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing_zyx}")
    gt_box = bounding_box(gt)
    crop = union_crop([bounding_box(pred), gt_box], gt.shape)
    if gt_box is None or crop is None:
        raise ValueError("the ground-truth mask is empty: nothing to score")
    p, g = pred[crop], gt[crop]
    n_pred, n_gt = int(p.sum()), int(g.sum())
    if n_pred == 0:
        return OarMetrics(0.0, math.inf, 0.0, float(tolerance_mm), n_gt, 0)
    dsc = 2.0 * int(np.logical_and(p, g).sum()) / (n_pred + n_gt)
    surf_p, surf_g = surface(p), surface(g)
    d_pg = directed_surface_distances(surf_p, surf_g, spacing)
    d_gp = directed_surface_distances(surf_g, surf_p, spacing)
    hd = max(float(np.percentile(d_pg, percentile)), float(np.percentile(d_gp, percentile)))
    # The tolerance comparison allows for float rounding of distances that equal the tolerance exactly.
    tol = float(tolerance_mm) + 1e-9
    nsd = (int(np.count_nonzero(d_pg <= tol)) + int(np.count_nonzero(d_gp <= tol))) / (d_pg.size + d_gp.size)
    return OarMetrics(dsc, hd, nsd, float(tolerance_mm), n_gt, n_pred)

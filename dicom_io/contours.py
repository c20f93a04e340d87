"""Label-map slices -> closed planar contours in patient coordinates, on the mask's edges.

Each contour is the iso-line at 0.5 of the binary mask (``skimage.measure.find_contours``, marching squares) on the
slice padded with one background voxel, so it passes half-way between an inside and an outside voxel centre and
is always closed. A rasteriser that fills the voxels whose centres lie inside the polygon (the even-odd rule, as
planning systems and plastimatch do) gets the mask back; a contour traced through the boundary voxels' centres
would lose half of every boundary voxel. Holes come out as separate contours inside the outer one.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from skimage.measure import find_contours


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2-D binary mask, as (n, 2) arrays of (row, column) continuous indices.

    The last point (a repeat of the first) is dropped: DICOM CLOSED_PLANAR contours close implicitly.
    """
    padded = np.pad(mask.astype(np.float32), 1)
    contours = []
    for contour in find_contours(padded, 0.5):
        points = contour[:-1] - 1.0 if np.allclose(contour[0], contour[-1]) else contour - 1.0
        if len(points) >= 3:
            contours.append(points)
    return contours


def to_patient(points_rc: np.ndarray, slice_index: int, image: sitk.Image) -> np.ndarray:
    """(row, column) continuous indices on slice ``slice_index`` -> patient LPS points in mm, shape (n, 3).

    Uses the image's own geometry: point = origin + D @ (spacing * (column, row, slice)).
    """
    origin = np.asarray(image.GetOrigin())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    index = np.column_stack([points_rc[:, 1], points_rc[:, 0], np.full(len(points_rc), float(slice_index))])
    return origin + (index * spacing) @ direction.T


def label_contours(labels: np.ndarray, value: int, image: sitk.Image) -> dict[int, list[np.ndarray]]:
    """Contours of label ``value`` in every slice that holds it: slice index -> list of (n, 3) LPS point arrays.

    Args:
        labels: numpy (z, y, x) label map on ``image``'s grid.
        value: the label.
        image: supplies the geometry (origin, spacing, direction).
    """
    mask = labels == value
    result: dict[int, list[np.ndarray]] = {}
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        result[int(k)] = [to_patient(c, int(k), image) for c in slice_contours(mask[k])]
    return result

"""Index <-> physical point conversion for SimpleITK images, vectorised over (N, 3) point arrays.

Indices are continuous (i, j, k) = (x, y, z) order; physical points are (x, y, z) in mm.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points @ matrix.T`` for ``(N, 3)`` points without BLAS (a threaded BLAS call on a thin matrix is very slow
    when the CPUs are oversubscribed)."""
    return points[:, 0:1] * matrix[:, 0] + points[:, 1:2] * matrix[:, 1] + points[:, 2:3] * matrix[:, 2]


def index_to_physical(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """Continuous indices ``(N, 3)`` (i, j, k = x, y, z order) -> physical points ``(N, 3)`` (mm)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    return origin + apply_matrix(direction, ijk * spacing)


def physical_to_continuous_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Physical points ``(N, 3)`` (mm) -> continuous indices ``(N, 3)`` (i, j, k = x, y, z order)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    return apply_matrix(direction.T, points - origin) / spacing

"""Image-grid comparison with a tight, documented tolerance (never resample silently).

SimpleITK order throughout: size, spacing and origin are (x, y, z); spacing and origin in mm; the direction is the
row-major 3x3 matrix whose columns are the physical directions of the x, y and z index axes.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

SPACING_RTOL = 1e-5
"""Largest relative spacing difference per axis accepted as "the same grid" (float32 / 6-digit header rounding)."""

ORIGIN_ATOL_VOXELS = 0.01
"""Largest origin difference accepted, as a fraction of the smallest voxel spacing (1 % of a voxel)."""

DIRECTION_ATOL = 1e-4
"""Largest absolute difference accepted between direction-cosine matrix entries."""


def geometry_difference(a: sitk.Image, b: sitk.Image) -> str | None:
    """Describe how the grids of ``a`` and ``b`` differ, or return None if they are the same within tolerance.

    Compared: size (exactly), spacing (relative :data:`SPACING_RTOL`), origin (absolute, :data:`ORIGIN_ATOL_VOXELS`
    times the smallest spacing of ``a``, in mm) and direction (absolute :data:`DIRECTION_ATOL`).

    Returns:
        A short one-line description such as ``"size (512, 512, 200) vs (512, 512, 199)"``, or None.
    """
    problems: list[str] = []
    if a.GetDimension() != b.GetDimension():
        return f"dimension {a.GetDimension()} vs {b.GetDimension()}"
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    sa, sb = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    if np.any(np.abs(sa - sb) > SPACING_RTOL * np.maximum(np.abs(sa), np.abs(sb))):
        problems.append(f"spacing {_fmt(sa)} vs {_fmt(sb)} mm")
    oa, ob = np.asarray(a.GetOrigin()), np.asarray(b.GetOrigin())
    if np.any(np.abs(oa - ob) > ORIGIN_ATOL_VOXELS * float(sa.min())):
        problems.append(f"origin {_fmt(oa)} vs {_fmt(ob)} mm")
    da, db = np.asarray(a.GetDirection()), np.asarray(b.GetDirection())
    if np.any(np.abs(da - db) > DIRECTION_ATOL):
        problems.append(f"direction {_fmt(da)} vs {_fmt(db)}")
    return "; ".join(problems) if problems else None


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

"""Head-and-neck region crop before the network, where the model folder asks for it; undone exactly at export.

Declared in dataset.json (nnU-Net ignores the key)::

    "head_neck_crop": {"margin_mm": 20, "max_height_mm": 350}      (or true for these defaults)

The box (numpy z, y, x slices of the CT array): the top of the skull (largest bone component, > ``bone_hu``) gives
the vertex; the box runs from ``margin_mm`` above it down to ``max_height_mm`` below it (physical z, +z superior),
and across the body (largest component above ``body_hu``, so the couch and a separate head rest fall away) within
that height, plus ``margin_mm`` on every side, clipped to the CT. The label map predicted inside the box is pasted
into an all-background map of the CT's shape (:func:`uncrop_labels`): voxel for voxel, no resampling.

Conventions: SimpleITK (x, y, z) mm; numpy arrays (z, y, x).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.errors import ModelFolderError
from preprocessing.components import largest_component
from preprocessing.geometry import index_to_physical

log = logging.getLogger(__name__)

CROP_KEY = "head_neck_crop"


@dataclass(frozen=True)
class CropSettings:
    """Head-and-neck box settings (mm, HU)."""

    margin_mm: float = 20.0
    max_height_mm: float = 350.0
    body_hu: float = -400.0
    bone_hu: float = 300.0
    mask_spacing_mm: float = 4.0


def parse_crop(dataset: Mapping[str, Any], path: str | Path = "dataset.json") -> CropSettings | None:
    """The crop a dataset.json declares (None: no crop). Raises ModelFolderError naming ``path`` if malformed."""
    raw = dataset.get(CROP_KEY)
    if raw is None or raw is False:
        return None
    if raw is True:
        return CropSettings()
    if not isinstance(raw, Mapping) or set(raw) - {"margin_mm", "max_height_mm"}:
        raise ModelFolderError(path, f"'{CROP_KEY}' must be true or {{'margin_mm', 'max_height_mm'}}, got {raw!r}")
    try:
        settings = CropSettings(**{k: float(v) for k, v in raw.items()})
    except (TypeError, ValueError):
        raise ModelFolderError(path, f"'{CROP_KEY}' values must be numbers (mm), got {raw!r}") from None
    if not (0 <= settings.margin_mm < 200 and 50 <= settings.max_height_mm <= 2000):
        raise ModelFolderError(path, f"'{CROP_KEY}': margin_mm must be in [0, 200) and max_height_mm in [50, 2000]")
    return settings


def head_neck_box(ct: sitk.Image, s: CropSettings = CropSettings()) -> tuple[slice, slice, slice]:
    """The head-and-neck box of ``ct`` as numpy (z, y, x) slices; the whole array if no skull is found."""
    full = tuple(slice(0, n) for n in ct.GetSize()[::-1])
    factors = [max(1, int(round(s.mask_spacing_mm / sp))) for sp in ct.GetSpacing()]
    coarse = sitk.BinShrink(ct, factors) if any(f > 1 for f in factors) else ct
    arr = sitk.GetArrayViewFromImage(coarse)
    body = largest_component(arr > s.body_hu)
    bone = largest_component(body & (arr > s.bone_hu))
    if not bone.any():
        log.warning("head-and-neck crop: no bone found, the whole CT is used")
        return full
    kji = np.argwhere(body)
    points = index_to_physical(coarse, kji[:, ::-1].astype(float))
    bone_z = index_to_physical(coarse, np.argwhere(bone)[:, ::-1].astype(float))[:, 2]
    top = float(np.percentile(bone_z, 99.9))
    keep = points[:, 2] >= top - s.max_height_mm
    if not keep.any():
        return full
    # coarse voxel -> full-resolution index range (BinShrink averages blocks of `factors` voxels)
    lo = kji[keep].min(axis=0) * np.asarray(factors[::-1])
    hi = (kji[keep].max(axis=0) + 1) * np.asarray(factors[::-1])
    # the top: margin above the skull top, in physical z -> index along whichever axis
    spacing = np.asarray(ct.GetSpacing()[::-1])
    margin = np.ceil(s.margin_mm / spacing).astype(int)
    lo, hi = lo - margin, hi + margin
    shape = np.asarray(ct.GetSize()[::-1])
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    log.info("head-and-neck crop: %s of %s voxels (z, y, x) kept", tuple(int(b - a) for a, b in zip(lo, hi)),
             tuple(int(n) for n in shape))
    return box


def crop_image(image: sitk.Image, box: tuple[slice, slice, slice]) -> sitk.Image:
    """``image`` restricted to the numpy (z, y, x) ``box``, with its physical geometry (origin moved)."""
    z, y, x = box
    return image[x.start:x.stop, y.start:y.stop, z.start:z.stop]


def uncrop_labels(labels: np.ndarray, box: tuple[slice, slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    """Paste a label array predicted inside ``box`` into an all-background array of ``shape`` (numpy z, y, x)."""
    if labels.shape != tuple(b.stop - b.start for b in box):
        raise AssertionError(f"labels {labels.shape} do not match the crop box {box}")
    out = np.zeros(shape, dtype=labels.dtype)
    out[box] = labels
    return out



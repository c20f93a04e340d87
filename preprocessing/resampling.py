"""Resampling between the image grid and the model's configuration spacing, as nnU-Net v2 does it.

Arrays are channel-first ``(C, Z, Y, X)`` in nnU-Net's transposed axis order; spacings are in mm in the same
order. Image data use cubic splines with nnU-Net's boundary handling (``skimage.transform.resize(order=3,
mode="edge", anti_aliasing=False)``, i.e. ``scipy.ndimage.zoom`` with ``grid_mode=True`` on an edge-padded array,
clipped to the input range). The cubic spline is a tensor product, so it is computed one axis at a time
(:func:`spline_resize`): prefilter and evaluate along one axis, a few planes at a time, then the next axis on the
smaller result. That needs no full-size float64 spline coefficients (2.7 GB per channel of a 1024 x 1024 x 300 CT,
5 GB with scipy's padded copy) and gives nnU-Net's numbers (``test/test_resampling.py``: bit-identical on random
volumes and on a real CT resampled 1024 x 1024 x 300 -> 147 x 147 x 120; the float64 sums run in another order, so
bit-identity is measured, not guaranteed: the tests would show a difference). An axis that keeps its size is left
as it is (the spline reproduces the data at its nodes). When one axis is much coarser than the others ("separate
z"), that axis is resampled with nearest neighbour and the others slice by slice. Logits go back with separable
linear interpolation in torch (``resample_axis``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0
"""A spacing whose max/min ratio exceeds this is resampled with the coarse axis handled separately."""


def compute_new_shape(
    old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """``round(old_spacing / new_spacing * old_shape)`` per axis (voxels)."""
    return tuple(int(round(o / n * s)) for o, n, s in zip(old_spacing, new_spacing, old_shape))


def separate_z_axis(
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    force_separate_z: bool | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> int | None:
    """The axis to resample separately (nearest neighbour), or None for plain 3-D resampling.

    Mirrors nnU-Net: ``force_separate_z`` True/False decides; None looks at the current spacing first, then the
    new one, and picks the single coarsest axis if max/min spacing exceeds ``threshold``.
    """

    def lowres_axes(spacing: Sequence[float]) -> list[int]:
        arr = np.asarray(spacing, dtype=float)
        return list(np.where(max(arr) / arr == 1)[0])

    def anisotropic(spacing: Sequence[float]) -> bool:
        return bool(np.max(spacing) / np.min(spacing) > threshold)

    if force_separate_z is not None:
        axes = lowres_axes(current_spacing) if force_separate_z else None
    elif anisotropic(current_spacing):
        axes = lowres_axes(current_spacing)
    elif anisotropic(new_spacing):
        axes = lowres_axes(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


SPLINE_PAD = 12
"""Edge voxels added on both ends of an axis before its spline prefilter (scipy's ``zoom`` does the same for
``mode="nearest"``, so the coefficients near the border are scipy's)."""

SPLINE_CHUNK_BYTES = 64 * 2**20
"""About the most float64 spline coefficients (bytes) held at once while one axis is resampled."""


def _cubic_bspline_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 coefficients at ``floor(p) - 1 .. floor(p) + 2`` for fractional offsets ``t`` in [0, 1):
    shape ``(len(t), 4)``."""
    t2 = t * t
    t3 = t2 * t
    return np.stack([(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6], -1)


def _spline_taps(old_size: int, new_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the padded axis (``(new_size, 4)``) and their weights for a grid-mode resize (voxel centres
    aligned: output ``i`` samples input position ``(i + 0.5) * old / new - 0.5``)."""
    position = (np.arange(new_size) + 0.5) * (old_size / new_size) - 0.5
    first = np.floor(position)
    index = first.astype(np.int64)[:, None] + np.arange(-1, 3) + SPLINE_PAD
    return index, _cubic_bspline_weights(position - first)


def _spline_resize_axis(array: np.ndarray, axis: int, new_size: int) -> np.ndarray:
    """Cubic-spline resize of ``array`` along ``axis`` to ``new_size`` voxels (float64 out), a few slices of
    another axis at a time."""
    if array.ndim == 1:  # one line: nothing to chunk over
        return _spline_resize_axis(array[None], 1, new_size)[0]
    index, weights = _spline_taps(array.shape[axis], new_size)
    chunk_axis = 1 if axis == 0 else 0
    shape = list(array.shape)
    shape[axis] = new_size
    out = np.empty(shape, dtype=np.float64)
    lines_per_slice = array.size // max(array.shape[chunk_axis] * array.shape[axis], 1)
    slice_bytes = 8 * lines_per_slice * max(array.shape[axis] + 2 * SPLINE_PAD, 4 * new_size)
    step = max(1, SPLINE_CHUNK_BYTES // max(slice_bytes, 1))
    for start in range(0, array.shape[chunk_axis], step):
        part = [slice(None)] * array.ndim
        part[chunk_axis] = slice(start, start + step)
        block = np.moveaxis(array[tuple(part)], axis, -1)
        padded = np.pad(block, [(0, 0)] * (block.ndim - 1) + [(SPLINE_PAD, SPLINE_PAD)], mode="edge")
        coefficients = ndimage.spline_filter1d(padded, 3, axis=-1, output=np.float64, mode="nearest")
        np.moveaxis(out[tuple(part)], axis, -1)[...] = np.einsum("...mk,mk->...m", coefficients[..., index], weights)
    return out


def spline_resize(array: np.ndarray, new_shape: Sequence[int],
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Cubic-spline resize of ``array`` (any dimension, numpy axis order) to ``new_shape``, one axis at a time
    (the most shrunk axis first), clipped to ``value_range`` (default: ``array``'s own), in ``array``'s dtype.

    The same numbers as ``scipy.ndimage.zoom(array, order=3, mode="nearest", grid_mode=True)`` (see the module
    docstring) with at most the result of one axis in float64 plus :data:`SPLINE_CHUNK_BYTES` of coefficients.
    """
    result = array
    for axis in sorted(range(array.ndim), key=lambda a: new_shape[a] / array.shape[a]):
        if result.shape[axis] != new_shape[axis]:
            result = _spline_resize_axis(result, axis, int(new_shape[axis]))
    low, high = value_range if value_range is not None else (array.min(), array.max())
    result = np.clip(result, low, high, out=result if result is not array else None)
    return result.astype(array.dtype, copy=False)


def _zoom_clipped(array: np.ndarray, new_shape: Sequence[int], order: int,
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Spline-resize ``array`` to ``new_shape`` and clip to ``value_range`` (default: its own), like skimage's
    resize, in ``array``'s dtype: cubic axis by axis (:func:`spline_resize`), other orders with scipy's ``zoom``
    (which computes in float64 either way)."""
    if order == 3:
        return spline_resize(array, new_shape, value_range)
    factors = np.divide(array.shape, new_shape)
    out = ndimage.zoom(array, [1 / f for f in factors], order=order, mode="nearest", grid_mode=True)
    low, high = value_range if value_range is not None else (array.min(), array.max())
    np.clip(out, low, high, out=out)
    return out


def nearest_indices(old_size: int, new_size: int) -> np.ndarray:
    """Source index per output index for nearest resampling with half-voxel alignment (align_corners=False)."""
    scale = old_size / new_size
    coords = scale * (np.arange(new_size) + 0.5) - 0.5
    return np.clip(np.floor(coords + 0.5).astype(int), 0, old_size - 1)


def resample_data(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
) -> np.ndarray:
    """Resample image channels ``(C, *spatial)`` to ``new_shape`` (see module docstring).

    Returns an array of ``data``'s dtype; ``data`` itself if the shape does not change.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    if order_z != 0:
        raise NotImplementedError("only nearest-neighbour (order_z=0) resampling of the separate axis is supported")
    axis = separate_z_axis(current_spacing, new_spacing, force_separate_z)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        channel = data[c] if data.dtype == np.float32 else data[c].astype(float, copy=False)
        if axis is not None:  # separate z: the other axes plane by plane, then nearest neighbour along it
            planes = _zoom_planes(channel, axis, new_shape, order)
            out[c] = np.moveaxis(planes[nearest_indices(channel.shape[axis], new_shape[axis])], 0, axis)
            continue
        kept = [a for a in range(channel.ndim) if channel.shape[a] == new_shape[a]]
        if kept and order not in (0, 3):  # other orders: plane by plane along the kept axis, the 3-D clip range
            planes = _zoom_planes(channel, kept[0], new_shape, order, (channel.min(), channel.max()))
            out[c] = np.moveaxis(planes, 0, kept[0])
        else:
            out[c] = _zoom_clipped(channel, new_shape, order)
    return out


def _zoom_planes(channel: np.ndarray, axis: int, new_shape: Sequence[int], order: int,
                 value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Every plane of ``channel`` across ``axis`` resized to ``new_shape`` without that axis, stacked along a new
    first axis. ``value_range``: clip range for all planes (default: each plane's own, as skimage per slice)."""
    plane_shape = [s for a, s in enumerate(new_shape) if a != axis]
    moved = np.moveaxis(channel, axis, 0)
    return np.stack([_zoom_clipped(plane, plane_shape, order, value_range) for plane in moved])


def resample_axis(tensor: torch.Tensor, dim: int, new_size: int, mode: str = "linear") -> torch.Tensor:
    """Resample one axis of a float tensor to ``new_size`` samples.

    ``mode="linear"`` is 1-D linear interpolation with half-voxel alignment (``align_corners=False``) and edge
    clamping, so applying it axis by axis equals ``torch.nn.functional.interpolate(mode="trilinear")``;
    ``mode="nearest"`` picks the nearest source sample (what nnU-Net does on a separate coarse axis).
    """
    old_size = tensor.shape[dim]
    if old_size == new_size:
        return tensor
    if mode == "nearest":
        index = torch.from_numpy(nearest_indices(old_size, new_size)).to(tensor.device)
        return tensor.index_select(dim, index)
    if mode != "linear":
        raise ValueError(f"unknown mode {mode!r}")
    lower, upper, weight = linear_weights(old_size, new_size)
    shape = [1] * tensor.ndim
    shape[dim] = new_size
    w = torch.from_numpy(weight).to(tensor.device, tensor.dtype).reshape(shape)
    a = tensor.index_select(dim, torch.from_numpy(lower).to(tensor.device))
    b = tensor.index_select(dim, torch.from_numpy(upper).to(tensor.device))
    return torch.lerp(a, b, w)


def linear_weights(old_size: int, new_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output sample: lower and upper source index and the weight of the upper one
    (linear interpolation, ``align_corners=False``, source coordinates clamped at the edges)."""
    scale = old_size / new_size
    src = np.maximum(scale * (np.arange(new_size) + 0.5) - 0.5, 0.0)
    lower = np.minimum(np.floor(src).astype(np.int64), old_size - 1)
    upper = np.minimum(lower + 1, old_size - 1)
    return lower, upper, src - lower

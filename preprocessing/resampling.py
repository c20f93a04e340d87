"""Resampling between the image grid and the model's configuration spacing, as nnU-Net v2 does it.

Arrays are channel-first ``(C, Z, Y, X)`` in nnU-Net's transposed axis order; spacings are in mm in the same
order. Image data use cubic splines (``scipy.ndimage.zoom`` with ``grid_mode=True``, edge mode, clipped to the
input range: bit-identical to nnU-Net's ``skimage.transform.resize(order=3, mode="edge", anti_aliasing=False)``).
When one axis is much coarser than the others ("separate z"), that axis is resampled with nearest neighbour and
the others slice by slice. When an axis keeps its size (2-D configurations keep the slice axis), the 3-D spline is
evaluated at that axis's nodes, where it reproduces the data: the result equals resampling the other axes plane by
plane (to float64 rounding; clipped to the whole volume's range), which needs no full-size float64 spline
coefficients (5 GB for a 1024 x 1024 x 300 CT). Logits go back with separable linear interpolation in torch
(``resample_axis``).
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


def _zoom_clipped(array: np.ndarray, new_shape: Sequence[int], order: int,
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Spline-resize ``array`` to ``new_shape`` and clip to its value range, like skimage's resize (float64).

    A float32 ``array`` is NOT converted to float64 first: scipy pads it (float32, exact) and computes the spline
    coefficients and the interpolation in float64 either way, so the result is the same number for number, without
    one full-size float64 copy (1.7 GB for a 1024 x 1024 x 200 channel). The output has ``array``'s dtype.
    ``value_range`` (default: ``array``'s own) is the range the output is clipped to.
    """
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
        if kept and order > 0:  # an axis that keeps its size: plane by plane along it, the 3-D clip range
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

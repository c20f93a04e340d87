"""From model-grid logits back to a label map on the CT grid.

Steps (the reverse of preprocessing): resample the logits from the configuration spacing to the cropped CT shape
(linear; nearest on a separate coarse axis), argmax, paste into the uncropped volume, undo ``transpose_forward``,
map model label indices to HaN-Seg values by name.

Lean and fast, with nnU-Net's answer:

- Linear interpolation is a convex combination of the source voxels around an output voxel (its "cell": 2 per
  linear axis, 1 on a nearest axis). If one class is the argmax at every corner of a cell, it is the argmax of any
  convex combination of them, so every output voxel in that cell gets that label without touching the other
  classes. Only output voxels in *mixed* cells (near label borders) are interpolated, class by class, with the
  same separable lerps (same order, float32, rounded to fp16 before the argmax) as the dense computation.
- Everything runs in chunks of output rows along the first axis: the full-resolution float logits of all classes
  never sit in memory at once (a chunk of mixed voxels holds at most ``CHUNK_VOXELS`` voxels x K classes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.preprocess import PreprocessedCase
from preprocessing.resampling import linear_weights, nearest_indices, separate_z_axis

log = logging.getLogger(__name__)

CHUNK_VOXELS = 4 * 1024 * 1024
"""Output voxels per chunk of rows: bounds the label/index temporaries of one chunk (a few bytes per voxel)."""
POINTS_PER_BATCH = 256 * 1024
"""Mixed voxels interpolated at once: about 6 float32 ``(K, POINTS_PER_BATCH)`` temporaries are alive at a time."""


@dataclass(frozen=True)
class AxisMap:
    """For each output index along one axis: lower/upper source index and the float32 weight of the upper one."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray

    @staticmethod
    def build(old_size: int, new_size: int, mode: str) -> AxisMap:
        """The map from ``old_size`` source to ``new_size`` output indices for ``mode`` ``"none"`` (same size),
        ``"nearest"`` or linear (any other value)."""
        if mode == "none":
            idx = np.arange(new_size)
            return AxisMap(idx, idx, np.zeros(new_size, dtype=np.float32))
        if mode == "nearest":
            idx = nearest_indices(old_size, new_size)
            return AxisMap(idx, idx, np.zeros(new_size, dtype=np.float32))
        lower, upper, weight = linear_weights(old_size, new_size)
        return AxisMap(lower, upper, weight.astype(np.float32))


def _cell_uniform(coarse: torch.Tensor, linear_axes: Sequence[int]) -> torch.Tensor:
    """``uniform[i, j, k]``: the label ``coarse`` is the same on all corners of the cell starting at ``(i, j, k)``
    (2 corners on each linear axis, the upper one clamped at the edge)."""
    low, high = coarse.clone(), coarse.clone()
    for axis in linear_axes:
        n = coarse.shape[axis]
        if n < 2:
            continue
        nxt = torch.arange(1, n + 1).clamp_(max=n - 1)
        low = torch.minimum(low, low.index_select(axis, nxt))
        high = torch.maximum(high, high.index_select(axis, nxt))
    return low == high


def logits_to_labels(
    logits: torch.Tensor,
    target_shape: Sequence[int],
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    force_separate_z: bool | None = None,
    on_device: bool = False,
) -> np.ndarray:
    """Argmax of ``logits`` resampled to ``target_shape``.

    Args:
        logits: ``(K, *spatial)`` logits on the model grid (any float dtype).
        target_shape: spatial shape to resample to (voxels, same axis order).
        current_spacing, target_spacing: spacings (mm) of the logits grid and the target grid.
        force_separate_z: nnU-Net's ``resampling_fn_probabilities_kwargs['force_separate_z']``.
        on_device: resample every class densely where ``logits`` are (:func:`dense_labels`: the GPU path, whose
            output grid buffers must fit there); otherwise chunk by chunk on the host (module docstring).

    Returns:
        ``uint8`` (or ``uint16`` for >255 classes) array of model label indices with ``target_shape``.
    """
    target_shape = tuple(int(s) for s in target_shape)
    n_classes, source_shape = logits.shape[0], tuple(logits.shape[1:])
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    if source_shape == target_shape:
        modes = ["none"] * len(target_shape)
    else:
        sep_axis = separate_z_axis(current_spacing, target_spacing, force_separate_z)
        modes = ["nearest" if a == sep_axis else "linear" for a in range(len(target_shape))]
    maps = [AxisMap.build(o, n, m) for o, n, m in zip(source_shape, target_shape, modes)]
    if on_device:
        return dense_labels(logits, maps).cpu().numpy().astype(dtype, copy=False)
    logits = logits.cpu()
    coarse = chunked_argmax(logits)
    uniform = _cell_uniform(coarse, [a for a, m in enumerate(modes) if m == "linear"])
    out = np.empty(target_shape, dtype=dtype)
    plane = int(np.prod(target_shape[1:]))
    rows_per_chunk = max(1, CHUNK_VOXELS // max(plane, 1))
    n_mixed = 0
    for start in range(0, target_shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, target_shape[0])
        n_mixed += _fill_rows(out, logits, coarse, uniform, maps, start, stop)
    log.debug("export: %d of %d output voxels interpolated (mixed cells)", n_mixed, out.size)
    return out


def chunked_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``int16`` argmax over the class axis of ``(K, *spatial)`` logits, a chunk of rows at a time (torch's argmax
    of the whole volume would make an int64 copy, 8 bytes per voxel). Ties break on the first maximal index, as in
    nnU-Net (its resampled logits are fp16 too)."""
    out = torch.empty(logits.shape[1:], dtype=torch.int16)
    plane = int(np.prod(logits.shape[2:]))
    rows = max(1, CHUNK_VOXELS // max(plane, 1))
    for start in range(0, logits.shape[1], rows):
        out[start:start + rows] = logits[:, start:start + rows].argmax(0)
    return out


def _resample_dense(volume: torch.Tensor, maps: Sequence[AxisMap]) -> torch.Tensor:
    """One class ``volume`` (spatial, float32) resampled to the output grid: the separable float32 lerps of
    :func:`_interpolate_points` (axes 1..n-1 first, then axis 0), for every output voxel."""
    ndim = len(maps)
    for axis in [*range(1, ndim), 0]:
        axis_map = maps[axis]
        lower = torch.from_numpy(axis_map.lower).to(volume.device)
        low = volume.index_select(axis, lower)
        if axis_map.lower is axis_map.upper or bool((axis_map.lower == axis_map.upper).all()):
            volume = low
            continue
        high = volume.index_select(axis, torch.from_numpy(axis_map.upper).to(volume.device))
        shape = [1] * ndim
        shape[axis] = -1
        volume = torch.lerp(low, high, torch.from_numpy(axis_map.weight).to(volume.device).view(shape))
        del low, high
    return volume


def dense_labels(logits: torch.Tensor, maps: Sequence[AxisMap]) -> torch.Tensor:
    """Argmax of every class resampled densely on ``logits``' device (the GPU export), class by class with a
    running fp16 maximum (first maximal class wins ties, as ``argmax``). Output ``uint8`` (``int16`` for > 256
    classes) on that device."""
    best_value: torch.Tensor | None = None
    best = None
    for k in range(logits.shape[0]):
        value = _resample_dense(logits[k].float(), maps).half()
        if best_value is None:
            best_value = value
            best = torch.zeros(value.shape, dtype=torch.uint8 if logits.shape[0] <= 256 else torch.int16,
                               device=value.device)
            continue
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best.masked_fill_(better, k)
        del value, better
    assert best is not None
    return best


def gather_cells(volume: torch.Tensor, maps: Sequence[AxisMap], start: int, stop: int) -> torch.Tensor:
    """``volume`` (spatial) sampled at each output voxel's cell origin (lower index per axis) for rows
    ``start:stop``: separable gathers, one axis at a time."""
    out = volume.index_select(0, torch.from_numpy(maps[0].lower[start:stop]))
    for axis in range(1, len(maps)):
        out = out.index_select(axis, torch.from_numpy(maps[axis].lower))
    return out


def _fill_rows(out: np.ndarray, logits: torch.Tensor, coarse: torch.Tensor, uniform: torch.Tensor,
               maps: Sequence[AxisMap], start: int, stop: int) -> int:
    """Write output rows ``start:stop``; returns the number of voxels that needed interpolation."""
    labels = gather_cells(coarse, maps, start, stop)
    mixed = ~gather_cells(uniform, maps, start, stop)
    positions = mixed.nonzero()  # (N, ndim), row index relative to start
    if len(positions):
        positions[:, 0] += start
        batch = max(1, POINTS_PER_BATCH)
        mixed_labels = torch.cat([
            _interpolate_points(logits, maps, positions[i:i + batch]).half().argmax(0).to(labels.dtype)
            for i in range(0, len(positions), batch)
        ])
        labels[mixed] = mixed_labels
    out[start:stop] = labels.numpy().astype(out.dtype, copy=False)
    return len(positions)


def _interpolate_points(logits: torch.Tensor, maps: Sequence[AxisMap], positions: torch.Tensor) -> torch.Tensor:
    """``(K, N)`` float32 interpolated logits at output voxels ``positions`` (N, ndim).

    Same arithmetic as resampling axis by axis (axes 1..n-1 first, then axis 0), each step a float32
    ``torch.lerp`` between the lower and upper source value with the upper weight.
    """
    ndim = len(maps)
    order = [*range(1, ndim), 0]
    lower = [torch.from_numpy(maps[a].lower)[positions[:, a]] for a in range(ndim)]
    upper = [torch.from_numpy(maps[a].upper)[positions[:, a]] for a in range(ndim)]
    weight = [torch.from_numpy(maps[a].weight)[positions[:, a]] for a in range(ndim)]

    def corner_value(fixed: dict[int, torch.Tensor]) -> torch.Tensor:
        index = tuple(fixed[a] for a in range(ndim))
        return logits[(slice(None), *index)].float()

    def interp(level: int, fixed: dict[int, torch.Tensor]) -> torch.Tensor:
        # Resolve the axes in reverse of the application order: the innermost lerp is the first axis applied.
        if level < 0:
            return corner_value(fixed)
        axis = order[level]
        a = interp(level - 1, {**fixed, axis: lower[axis]})
        if maps[axis].lower is maps[axis].upper or bool((lower[axis] == upper[axis]).all()):
            return a
        b = interp(level - 1, {**fixed, axis: upper[axis]})
        return torch.lerp(a, b, weight[axis])

    return interp(ndim - 1, {})


def labels_to_image_array(labels: np.ndarray, case: PreprocessedCase, lookup: Sequence[int]) -> np.ndarray:
    """Paste cropped model-index labels into the full (transposed) volume, undo the transpose and map every
    model index to its HaN-Seg value. Returns a ``uint8`` array in the CT's numpy order (z, y, x)."""
    full = np.zeros(case.shape_before_cropping, dtype=np.uint8)
    full[case.bbox] = np.asarray(lookup, dtype=np.uint8)[labels]
    return np.ascontiguousarray(full.transpose(case.transpose_backward))

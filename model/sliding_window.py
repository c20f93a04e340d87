"""Gaussian-weighted sliding-window inference with mirroring test-time augmentation.

Reproduces nnU-Net v2's ``predict_sliding_window_return_logits`` arithmetic (tile placement, Gaussian importance
map, fp16 accumulation, mirror averaging) so that the same weights give the same logits. Arrays are
channel-first in nnU-Net's transposed axis order, ``(C, Z, Y, X)`` for untransposed images; 2-D configurations
slide a 2-D patch over every slice along the first spatial axis.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from model.budget import BudgetController, mirror_passes
from model.device import autocast_for

log = logging.getLogger(__name__)

Slicer = tuple[slice | int, ...]


def compute_steps(image_size: Sequence[int], tile_size: Sequence[int], step_fraction: float) -> list[list[int]]:
    """Tile start positions per axis: first tile at 0, last flush with the end, evenly spread in between.

    The number of tiles is ``ceil((size - tile) / (tile * step_fraction)) + 1`` per axis.
    """
    if not 0 < step_fraction <= 1:
        raise ValueError(f"tile step must be in (0, 1], got {step_fraction}")
    steps = []
    for size, tile in zip(image_size, tile_size):
        if size < tile:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the tile {tuple(tile_size)}")
        n = int(np.ceil((size - tile) / (tile * step_fraction))) + 1
        actual = (size - tile) / (n - 1) if n > 1 else 0.0
        steps.append([int(np.round(actual * i)) for i in range(n)])
    return steps


@lru_cache(maxsize=4)
def gaussian_importance_map(tile_size: tuple[int, ...], device_str: str = "cpu") -> torch.Tensor:
    """fp16 Gaussian weight map of ``tile_size``: sigma = tile/8 per axis, centre at ``tile // 2``, peak 10,
    zeros replaced by the smallest positive weight (so every voxel gets a non-zero total weight)."""
    impulse = np.zeros(tile_size)
    impulse[tuple(t // 2 for t in tile_size)] = 1
    gaussian = gaussian_filter(impulse, [t / 8 for t in tile_size], 0, mode="constant", cval=0)
    gaussian /= np.max(gaussian) / 10
    weights = torch.from_numpy(gaussian).to(device=torch.device(device_str), dtype=torch.float16)
    zero = weights == 0
    weights[zero] = torch.min(weights[~zero])
    return weights


def padded_shape(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape after :func:`pad_to_patch`: trailing axes grown to at least the patch size."""
    lead = len(spatial_shape) - len(patch_size)
    return (*spatial_shape[:lead], *[max(s, p) for s, p in zip(spatial_shape[lead:], patch_size)])


def pad_to_patch(data: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, Slicer]:
    """Zero-pad the trailing ``len(patch_size)`` axes of ``data`` up to the patch size (split below/above as
    ``d // 2`` / ``d - d // 2``). Returns the padded tensor and the slicer that removes the padding."""
    spatial = data.shape[-len(patch_size):]
    pad_below = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    pad_above = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, pad_below)]
    lead = data.ndim - len(patch_size)
    unpad: Slicer = tuple([slice(None)] * lead + [slice(b, b + s) for b, s in zip(pad_below, spatial)])
    if not any(pad_below) and not any(pad_above):
        return data, unpad
    torch_pad = []
    for b, a in zip(reversed(pad_below), reversed(pad_above)):
        torch_pad += [b, a]
    return torch.nn.functional.pad(data, torch_pad, mode="constant", value=0), unpad


def tile_slicers(spatial_shape: Sequence[int], patch_size: Sequence[int], step_fraction: float) -> list[Slicer]:
    """Slicers into a ``(C, *spatial_shape)`` array, one per tile, in nnU-Net's order.

    For a 2-D patch over a 3-D image, each slicer also fixes the slice index on the first spatial axis.
    """
    slicers: list[Slicer] = []
    if len(patch_size) == len(spatial_shape) - 1:
        steps = compute_steps(spatial_shape[1:], patch_size, step_fraction)
        for d in range(spatial_shape[0]):
            for starts in itertools.product(*steps):
                slicers.append((slice(None), d, *[slice(s, s + p) for s, p in zip(starts, patch_size)]))
    elif len(patch_size) == len(spatial_shape):
        steps = compute_steps(spatial_shape, patch_size, step_fraction)
        for starts in itertools.product(*steps):
            slicers.append((slice(None), *[slice(s, s + p) for s, p in zip(starts, patch_size)]))
    else:
        raise ValueError(f"patch {tuple(patch_size)} does not fit image {tuple(spatial_shape)}")
    return slicers


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the spatial mirror axes, as tensor dims of a ``(B, C, ...)`` batch."""
    dims = [a + 2 for a in mirror_axes]
    return [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]


def _widen(logits: torch.Tensor) -> torch.Tensor:
    """bf16 network output as float32 (fp32 and CUDA's fp16 stay as they are, as in nnU-Net)."""
    return logits.float() if logits.dtype == torch.bfloat16 else logits


Forward = Callable[[torch.Tensor], torch.Tensor]
"""A network's forward pass: a torch module, or a compiled one (:class:`model.compiled.CompiledNetwork`)."""


@torch.inference_mode()
def predict_tile(network: Forward, tiles: torch.Tensor, mirror_axes: Sequence[int]) -> torch.Tensor:
    """Logits of a ``(B, C, ...)`` batch of tiles, averaged over the plain pass and every mirrored pass (bf16
    network outputs are summed in float32)."""
    prediction = _widen(network(tiles))
    combos = mirror_combinations(mirror_axes)
    for axes in combos:
        prediction += _widen(torch.flip(network(torch.flip(tiles, axes)), axes))
    if combos:
        prediction /= len(combos) + 1
    return prediction


def ring_depth(patch_size: Sequence[int], spatial_dims: int) -> int:
    """Rows of the first spatial axis a :class:`FoldAccumulator` keeps: the patch's depth, 1 for a 2-D patch
    sliding over the slices of a 3-D image (``spatial_dims`` = 3, ``len(patch_size)`` = 2)."""
    return 1 if len(patch_size) == spatial_dims - 1 else int(patch_size[0])


class FoldAccumulator:
    """Gaussian-weighted tile sums of one fold, kept only for the rows (first spatial axis) tiles still touch.

    Tiles come in nnU-Net's order, first spatial axis outermost, so once a tile starts at row ``r`` no later tile
    touches rows ``< r``: those rows are final. They are divided by their Gaussian weight sum (fp16, as nnU-Net
    does for the whole volume) and written into ``out``, the ensemble sum (copied for the first fold, fp16-added
    for the others), then their ring-buffer rows are reused. Per voxel the arithmetic is nnU-Net's, in the same
    order; only ``depth`` rows of fp16 logits exist besides ``out`` (no second full-size copy per fold).

    Args:
        out: ``(K, *unpadded spatial)`` fp16 ensemble sum, on the results device.
        padded_spatial: spatial shape of the padded image the tiles index.
        unpad: slicer from the padded image to ``out``'s grid (from :func:`pad_to_patch`).
        depth: rows a tile spans on the first spatial axis (the patch size there; 1 for a 2-D patch).
        first: this is the first fold: overwrite ``out`` instead of adding to it.
        device: where the ring buffers live (the network's device, or the host when accumulating there).
    """

    def __init__(self, out: torch.Tensor, padded_spatial: Sequence[int], unpad: Slicer, depth: int, first: bool,
                 device: torch.device):
        self.out = out
        self.unpad = unpad
        self.depth = depth
        self.first = first
        self.rows_total = int(padded_spatial[0])
        plane = tuple(padded_spatial[1:])
        self.logits = torch.zeros((out.shape[0], depth, *plane), dtype=torch.half, device=device)
        self.weights = torch.zeros((depth, *plane), dtype=torch.half, device=device)
        self.base = 0
        self.flushed_rows = 0
        """Rows of ``out`` already written by this fold (a retry of the fold must start with none)."""

    def _ring(self, start: int, stop: int) -> list[tuple[slice, int]]:
        """Ring-buffer slices for padded rows ``start:stop`` (at most ``depth`` rows), with each piece's offset."""
        first, n = start % self.depth, stop - start
        if not 0 <= n <= self.depth:
            raise ValueError(f"rows {start}:{stop} do not fit a ring of {self.depth} rows")
        if first + n <= self.depth:
            return [(slice(first, first + n), 0)]
        head = self.depth - first
        return [(slice(first, self.depth), 0), (slice(0, n - head), head)]

    def add(self, slicer: Slicer, weighted: torch.Tensor, gaussian: torch.Tensor) -> None:
        """Add one tile's Gaussian-weighted prediction (``(K, *patch)``) at ``slicer`` of the padded image."""
        lead = slicer[1]
        if isinstance(lead, int):  # 2-D patch on one row
            start, stop, rest = lead, lead + 1, slicer[2:]
            weighted, gaussian = weighted[:, None], gaussian[None]
        else:
            start, stop, rest = lead.start, lead.stop, slicer[2:]
        if start > self.base:
            self.finish_rows(start)
        for ring, offset in self._ring(start, stop):
            n = ring.stop - ring.start
            self.logits[(slice(None), ring, *rest)] += weighted[:, offset:offset + n]
            self.weights[(ring, *rest)] += gaussian[offset:offset + n]

    def finish_rows(self, stop: int) -> None:
        """Rows ``base:stop`` are final: normalise them, write them into ``out``, free their ring rows."""
        for ring, offset in self._ring(self.base, stop):
            rows = self.logits[:, ring]
            torch.div(rows, self.weights[ring], out=rows)
            self._write(self.base + offset, rows)
            rows.zero_()
            self.weights[ring].zero_()
        self.base = stop

    def _write(self, padded_row: int, rows: torch.Tensor) -> None:
        below, size = self.unpad[1].start or 0, self.out.shape[1]
        start = max(padded_row, below)
        stop = min(padded_row + rows.shape[1], below + size)
        if start >= stop:
            return  # padding rows
        block = rows[(slice(None), slice(start - padded_row, stop - padded_row), *self.unpad[2:])]
        if torch.isinf(block).any():
            raise FloatingPointError("inf in accumulated fp16 logits: the network output overflows fp16")
        target = self.out[:, start - below:stop - below]
        if self.first:
            target.copy_(block)
        else:
            target += block
        self.flushed_rows = stop - below

    def finish(self) -> None:
        """All tiles done: the remaining rows are final."""
        self.finish_rows(self.rows_total)


@torch.inference_mode()
def sliding_window_logits(
    network: Forward,
    data: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    mirror_axes: Sequence[int] = (),
    step_fraction: float = 0.5,
    device: torch.device = torch.device("cpu"),
    on_tile: Callable[[], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
    controller: BudgetController | None = None,
    batch_tiles: int = 1,
    out: torch.Tensor | None = None,
    first: bool = True,
    results_device: torch.device | None = None,
    on_accumulator: Callable[[FoldAccumulator], None] | None = None,
) -> torch.Tensor:
    """Gaussian-weighted sliding-window logits of one network over a whole preprocessed image.

    Args:
        network: the network, already on ``device`` and in eval mode.
        data: ``(C, *spatial)`` float32 preprocessed image (transposed nnU-Net axis order), on any device.
        patch_size: 2 or 3 spatial patch sizes (voxels).
        num_classes: output channels of the network.
        mirror_axes: spatial axes to mirror for test-time augmentation (empty: no mirroring).
        step_fraction: tile step as a fraction of the patch size (0.5 = nnU-Net default).
        device: where the network runs (tiles are moved there one batch at a time).
        on_tile: called after each tile (progress reporting).
        autocast_dtype: run the network under CPU autocast to this dtype (fast mode: ``torch.bfloat16``);
            None keeps the device default (fp32 on the CPU, fp16 autocast on CUDA).
        controller: a time-budget controller that may switch mirroring off for the remaining tiles.
        batch_tiles: tiles per forward pass (1 = nnU-Net's arithmetic; fast mode uses more).
        out: ``(num_classes, *spatial)`` fp16 ensemble sum to write this fold into (None: a new one).
        first: overwrite ``out`` (the first fold) instead of adding this fold's logits to it.
        results_device: where the accumulators live (default: ``out``'s device, else ``device``): the host
            when the case does not fit on the GPU (nnU-Net's fallback), tiles' predictions are moved there.
        on_accumulator: called with the fold's :class:`FoldAccumulator` before the first tile (lets the caller
            see how many rows of ``out`` a failed fold had already written).

    Returns:
        ``out``: the ``(num_classes, *spatial)`` fp16 logits (this fold's, or the running sum of folds).
    """
    if results_device is None:
        results_device = out.device if out is not None else device
    spatial_in = tuple(data.shape[1:])
    if out is None:
        out = torch.empty((num_classes, *spatial_in), dtype=torch.half, device=results_device)
        first = True
    data, unpad = pad_to_patch(data, patch_size)
    spatial = data.shape[1:]
    gaussian = gaussian_importance_map(tuple(patch_size), str(results_device))
    slicers = tile_slicers(spatial, patch_size, step_fraction)
    accumulator = FoldAccumulator(out, spatial, unpad, ring_depth(patch_size, len(spatial)), first, results_device)
    if on_accumulator is not None:
        on_accumulator(accumulator)
    if controller is not None:
        controller.start_fold(len(slicers))
    with autocast_for(device) if autocast_dtype is None else torch.autocast(device.type, dtype=autocast_dtype):
        for first_tile in range(0, len(slicers), max(batch_tiles, 1)):
            group = slicers[first_tile:first_tile + max(batch_tiles, 1)]
            tiles = torch.stack([data[slicer] for slicer in group]).to(device, non_blocking=True)
            axes = tuple(mirror_axes) if controller is None else controller.mirror_axes_for_tile()
            started = time.perf_counter()
            predictions = predict_tile(network, tiles, axes).to(results_device)
            seconds = (time.perf_counter() - started) / len(group)
            for slicer, prediction in zip(group, predictions):
                if controller is not None:
                    controller.tile_done(seconds, mirror_passes(axes))
                prediction *= gaussian
                accumulator.add(slicer, prediction, gaussian)
                if on_tile is not None:
                    on_tile()
    accumulator.finish()
    return out

"""Where a case's tensors live on a CUDA machine: everything on the GPU when it fits, else host accumulation.

Before the folds run, :func:`estimate_need` adds up what the on-device path needs on the GPU (bytes):

- the preprocessed input ``(C, *spatial)`` float32, moved there once per case;
- the fp16 ensemble sum ``(K, *spatial)`` and one fold's fp16 ring of tile sums (``K x patch depth x plane``);
- the network's weights and the activations of one tile batch (measured on the device by
  :func:`probe_activation_bytes`: one forward pass, ``torch.cuda.max_memory_allocated``);
- for the export on the GPU (:func:`model.export.logits_to_labels` ``on_device``): the fp16 running maximum,
  the uint8 running argmax and three float32 interpolation temporaries of the output grid.

:func:`choose_placement` compares that with ``torch.cuda.mem_get_info`` and picks one of three paths (nnU-Net's
predictor does the same with its ``perform_everything_on_device`` fallback): ``device`` (all on the GPU, export on
the GPU if that fits too), ``host`` (input and accumulators in pinned host memory, only tiles and their predictions
travel; chunked export on the host), ``cpu`` (no GPU at all, or not even one tile batch fits). A CUDA
out-of-memory error during a fold moves the run one step down that list (:mod:`model.predictor`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

GB = 1024**3
SAFETY = 1.15
"""Multiplier on the estimated need (allocator fragmentation, cuDNN workspaces)."""
RESERVE_BYTES = 512 * 1024**2
"""Device bytes always left free (CUDA context growth, other processes)."""
EXPORT_BYTES_PER_VOXEL = 2 + 1 + 3 * 4
"""GPU export: fp16 running max + uint8 running argmax + 3 float32 temporaries per output voxel."""


@dataclass(frozen=True)
class DeviceNeed:
    """Bytes the on-device path needs, by part."""

    data: int
    ensemble_sum: int
    ring: int
    weights: int
    activations: int
    export: int

    @property
    def sliding_window(self) -> int:
        """Peak of the folds on the device (input, sum, ring, weights, one tile batch's activations)."""
        return self.data + self.ensemble_sum + self.ring + self.weights + self.activations

    @property
    def one_tile_batch(self) -> int:
        """What the host path still needs on the device: weights and one tile batch."""
        return self.weights + self.activations

    @property
    def with_export(self) -> int:
        """Peak of the GPU export: the ensemble sum and the export buffers (input and ring freed by then)."""
        return self.ensemble_sum + self.weights + self.export

    def describe(self) -> str:
        return (f"input {self.data / GB:.2f} + sum {self.ensemble_sum / GB:.2f} + ring {self.ring / GB:.2f} + "
                f"weights {self.weights / GB:.2f} + activations {self.activations / GB:.2f} GB; export "
                f"{self.export / GB:.2f} GB")


@dataclass(frozen=True)
class Placement:
    """Where a run's tensors live.

    Attributes:
        path: ``device``, ``host`` or ``cpu`` (module docstring).
        network_device: where the network runs.
        results_device: where the input, the accumulators and the ensemble sum live.
        export_on_device: resample and argmax the logits on ``results_device`` (a GPU) instead of chunked on the host.
        reason: one line for the log.
    """

    path: str
    network_device: torch.device
    results_device: torch.device
    export_on_device: bool
    reason: str

    @property
    def pin_host_memory(self) -> bool:
        """Host tensors are pinned (page-locked) for faster copies to and from the GPU."""
        return self.network_device.type == "cuda" and self.results_device.type == "cpu"


def cpu_placement(reason: str = "CPU device") -> Placement:
    cpu = torch.device("cpu")
    return Placement("cpu", cpu, cpu, False, reason)


def host_placement(device: torch.device, reason: str) -> Placement:
    return Placement("host", device, torch.device("cpu"), False, reason)


def weight_bytes(network: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in network.parameters()) + \
        sum(b.numel() * b.element_size() for b in network.buffers())


def estimate_need(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: Sequence[int],
    output_shape: Sequence[int],
    weights: int,
    activations: int,
) -> DeviceNeed:
    """What the on-device path needs (bytes).

    Args:
        input_shape: ``(C, *spatial)`` of the preprocessed case (model grid, transposed axis order).
        num_classes: network output channels K.
        patch_size: spatial patch (2 or 3 sizes).
        output_shape: spatial shape the export resamples to (cropped CT grid).
        weights: bytes of the network's parameters and buffers.
        activations: peak bytes of one forward pass of a tile batch (:func:`probe_activation_bytes`).
    """
    spatial = [int(s) for s in input_shape[1:]]
    padded = spatial[:len(spatial) - len(patch_size)] + \
        [max(s, p) for s, p in zip(spatial[len(spatial) - len(patch_size):], patch_size)]
    voxels = int(np.prod(spatial, dtype=np.int64))
    depth = 1 if len(patch_size) == len(spatial) - 1 else int(patch_size[0])
    plane = int(np.prod(padded[1:], dtype=np.int64))
    return DeviceNeed(
        data=int(input_shape[0]) * voxels * 4,
        ensemble_sum=num_classes * voxels * 2,
        ring=(num_classes + 1) * depth * plane * 2,
        weights=int(weights),
        activations=int(activations),
        export=int(np.prod(output_shape, dtype=np.int64)) * EXPORT_BYTES_PER_VOXEL,
    )


def free_device_bytes(device: torch.device) -> int:
    """Free bytes on a CUDA device now (``torch.cuda.mem_get_info``)."""
    return int(torch.cuda.mem_get_info(device)[0])


def fits(need_bytes: int, free_bytes: int) -> bool:
    return need_bytes * SAFETY + RESERVE_BYTES <= free_bytes


def choose_placement(device: torch.device, need: DeviceNeed) -> Placement:
    """The path for one case on ``device`` (see the module docstring); logged by the caller."""
    if device.type != "cuda":
        return cpu_placement()
    free = free_device_bytes(device)
    facts = f"{free / GB:.2f} GB free on {device}; on-device path needs {need.describe()}"
    if fits(need.sliding_window, free):
        export = fits(need.with_export, free)
        return Placement("device", device, device, export,
                         f"{facts}: everything on the GPU, export on the {'GPU' if export else 'host'}")
    if fits(need.one_tile_batch, free):
        return host_placement(device, f"{facts}: does not fit, accumulating in host memory (tiles only on the GPU)")
    return cpu_placement(f"{facts}: not even one tile batch fits, running on the CPU")


def next_placement(current: Placement) -> Placement:
    """One step down after a CUDA out-of-memory error: device -> host -> cpu."""
    if current.path == "device":
        return host_placement(current.network_device, "CUDA out of memory on the device path")
    return cpu_placement("CUDA out of memory on the host path")


def probe_activation_bytes(network: nn.Module, tiles: torch.Tensor, device: torch.device,
                           autocast: contextlib.AbstractContextManager) -> int:
    """Peak extra device bytes of one forward pass of ``tiles`` (CUDA only; 0 on the CPU, where it is not needed).

    A CUDA out-of-memory error here means not even one tile batch fits: reported as ``2**62`` bytes."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.inference_mode(), autocast:
            network(tiles.to(device))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 2**62
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def host_tensor(shape: Sequence[int], dtype: torch.dtype, placement: Placement) -> torch.Tensor:
    """Uninitialised tensor on ``placement.results_device`` (pinned host memory on the host path)."""
    return torch.empty(tuple(shape), dtype=dtype, device=placement.results_device,
                       pin_memory=placement.pin_host_memory)


def to_results(tensor: torch.Tensor, placement: Placement) -> torch.Tensor:
    """``tensor`` on ``placement.results_device`` (pinned on the host path); no copy if it is already there."""
    if placement.pin_host_memory:
        return tensor.cpu().pin_memory()
    return tensor.to(placement.results_device)

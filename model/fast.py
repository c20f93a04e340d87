"""Fast CPU mode (``process.py --fast``): trade a little agreement with exact mode for speed.

What it changes against exact mode (measured agreement and speed: ``benchmarks/README.md``):

- the network's forward pass runs compiled by OpenVINO (:mod:`model.compiled`; bf16 inference precision where the
  CPU has native bf16, else f32) when OpenVINO is installed (it is in the image); otherwise, in torch:
- bf16 autocast for the network on CPUs with native bf16 instructions (``avx512_bf16`` or AMX); logits are
  still averaged and accumulated in float32 / fp16 as in exact mode. Off on CPUs without them (slower there).
- mirroring test-time augmentation only over the last spatial axis (the left-right flip for nnU-Net's usual
  z, y, x order): 2 forward passes per tile instead of 8 (3-D) or 4 (2-D).
- several tiles per forward pass (:data:`BATCH_TILES`): better use of the CPU's vector units; same tiles, same
  Gaussian weighting as exact mode.
- the sliding-window step is kept (0.5), and so are the tiles' positions: with InstanceNorm a tile's prediction
  depends on everything inside it, so moving tiles (e.g. tiling only the body's bounding box) changes the answer.
  Measured on pt_201 (148 x 148 model grid, 4 tiles per slice -> 1): 3.5x faster, but per-label Dice against exact
  mode 0.84-0.94 and Dice against the clinical contours 0.719 instead of 0.740; rejected.

All folds are kept. Everything else (preprocessing, export) is the exact pipeline.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BATCH_TILES = 8
"""Tiles per forward pass in fast mode. Measured (2-D 128 x 128 tiles of the shipped model, 1 thread): fp32 23.5 ->
18.9 ms per tile from batch 1 to 8; bf16 13.4 -> 8.4 ms."""


def cpu_has_native_bf16() -> bool:
    """Whether the CPU advertises native bf16 arithmetic (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in BF16_CPU_FLAGS)
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class FastSettings:
    """Resolved fast-mode settings for one device and model."""

    autocast_dtype: torch.dtype | None
    mirror_axes: tuple[int, ...]
    batch_tiles: int = BATCH_TILES
    compiled: bool = False
    """The forward pass runs in OpenVINO (:mod:`model.compiled`) instead of torch."""

    def describe(self) -> str:
        if self.compiled:
            precision = f"OpenVINO {'bf16' if cpu_has_native_bf16() else 'f32'}"
        else:
            precision = "bf16 autocast" if self.autocast_dtype == torch.bfloat16 else "fp32"
        return f"{precision}, mirror axes {self.mirror_axes}, {self.batch_tiles} tiles per forward pass"


def openvino_available() -> bool:
    """Whether OpenVINO is installed (it is in the image; without it ``--fast`` runs torch with bf16)."""
    return importlib.util.find_spec("openvino") is not None


def fast_settings(device: torch.device, model_mirror_axes: Sequence[int], use_mirroring: bool = True,
                  bf16: bool | None = None, compiled: bool | None = None) -> FastSettings:
    """Fast-mode settings: mirroring over the last axis; on the CPU the OpenVINO-compiled network if OpenVINO is
    installed (``compiled`` overrides), else bf16 autocast if the CPU has it (``bf16`` overrides)."""
    if compiled is None:
        compiled = openvino_available()
    compiled = compiled and device.type == "cpu"
    if bf16 is None:
        bf16 = device.type == "cpu" and cpu_has_native_bf16()
    axes = tuple(model_mirror_axes)
    mirror = (max(axes),) if (use_mirroring and axes) else ()
    dtype = torch.bfloat16 if bf16 and device.type == "cpu" and not compiled else None
    settings = FastSettings(dtype, mirror, compiled=compiled)
    log.info("fast mode: %s", settings.describe())
    return settings

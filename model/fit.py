"""Platform-fit ESTIMATE: device memory, host memory and device time one case will need, from a model folder's plans.

Computed before any run, from ``plans.json`` + ``dataset.json`` alone (no checkpoint is read, no weights exist in
memory): the network of the plans is built on PyTorch's ``meta`` device (shapes only, no storage), one forward pass
of a tile is run there under two dispatch modes that count

* FLOPs (``torch.utils.flop_counter.FlopCounterMode``), and
* the peak of live intermediate tensor bytes (:class:`LiveBytes`: each non-aliasing op output is counted until
  Python frees it), i.e. what eager inference holds at once for one tile (cuDNN workspace not included).

The case enters as the CT's size and spacing; the image the network sees is that CT resampled to the plans'
spacing (nnU-Net's rule: ``round(size * spacing / target_spacing)`` per axis, in the transposed axis order of the
plans), padded up to the patch. Tiles and passes follow ``model.sliding_window`` exactly (same step rule).

Memory terms (bytes; GiB in the report), for a CT + MR model (C input channels, K classes, N network voxels):

device, per fold run (one network at a time)
    weights fp32 + their fp16 autocast copies; one tile's activation peak (fp16); the input image (C x N fp32) and,
    if the logits are ACCUMULATED ON THE DEVICE (the predictor's current path), K x N fp16 logits + N fp16 weights.
    With HOST accumulation (issue 16's path) only tiles cross to the device.
host
    the CT as read (int16) and as float32, the MR resampled onto the CT grid (float32), the preprocessed image
    (C x N fp32), the accumulated logits (K x N fp16: once if folds are summed into one buffer, twice if each
    fold's logits are made before they are added), the uint8 label map on the CT grid, plus a fixed overhead for
    Python, torch and SimpleITK (measured RSS of an idle import: ~0.6 GiB; 1 GiB assumed).
ring
    the fold's accumulator (``model.sliding_window.FoldAccumulator``): (K + 1) x patch depth x padded plane fp16,
    counted on the device AND on the host (where it lives depends on the path: the conservative side of both).

How far to trust it (measured, ``benchmarks.large_ct_memory --hanseg-plan --variant``, CPU path, 31 classes, 1 x 1
x 2 mm plan): a 1024 x 1024 x 200 CT peaked at 13.08 GiB where this estimate gives 8.7 GiB (7.4 before the ring
term); a 1024 x 1024 x 50 CT (one fold) at 3.74 GiB vs 4.2. Both peaks came while the fold's tiles ran; the larger
case's remaining ~4.5 GiB are not accounted for. The host figures are therefore a LOWER BOUND for large cases.

Time: passes = tiles x folds x 2^mirror axes; device seconds = passes x FLOPs per tile / effective throughput.
The T4's effective fp16 throughput for nnU-Net's 3-D convolutions is an ASSUMPTION (not measured here: no T4),
see :data:`T4`. Resampling, registration and export on the CPU are not included.

    python -m model.fit --model weights --ct-size 1024 1024 200 --ct-spacing 0.56 0.56 2.0 [--folds 5]
        [--mirror-axes 0 1 2 | --no-mirroring] [--tile-step 0.5] [--configuration 3d_fullres]

Sizes and spacings on the command line are SimpleITK order (x, y, z), spacing in mm. Exit 0 if the plan fits
the platform, 5 if it does not, 4 for an unusable model folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from contract.errors import ModelFolderError
from model.checkpoint_loading import load_checkpoint
from model.model_folder import CHECKPOINT_NAME, FOLD_PATTERN, ModelFolder, parse_configuration
from model.network import build_network
from model.sliding_window import compute_steps, ring_depth

GIB = 2**30
HOST_OVERHEAD_GIB = 1.0
EXIT_FITS, EXIT_MODEL, EXIT_DOES_NOT_FIT = 0, 4, 5


@dataclass(frozen=True)
class Platform:
    """A target machine. Memory in GiB; ``device_tflops`` = effective (not peak) fp16 TFLOP/s for 3-D U-Nets."""

    name: str
    device_gib: float
    host_gib: float
    device_tflops: float
    headroom: float = 0.9
    """Fraction of each memory that a plan may fill (CUDA context, allocator fragmentation, page cache)."""


T4 = Platform(name="NVIDIA T4 (16 GB) + 16 GB RAM", device_gib=15.0, host_gib=16.0, device_tflops=8.0)
"""The grand-challenge.org GPU instance. 15.0 GiB = the T4's 15,360 MiB usable; 8 TFLOP/s effective is an
assumption (~12 % of the T4's 65 TFLOP/s fp16 tensor-core peak, typical of cuDNN 3-D convolutions with
instance norm), not a measurement."""


class LiveBytes(TorchDispatchMode):
    """Counts bytes of live tensors produced inside the mode (views and in-place results are not new memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                nbytes = tensor.numel() * tensor.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, nbytes)
        return out


@dataclass(frozen=True)
class NetworkCost:
    """One forward pass of one tile (batch 1): parameter count, FLOPs, peak bytes of live activations."""

    parameters: int
    flops_per_tile: int
    activation_peak_bytes: int


def network_cost(model: ModelFolder, dtype: torch.dtype = torch.float16) -> NetworkCost:
    """Build ``model``'s network on the meta device and measure one tile's forward pass (see module docstring)."""
    with torch.device("meta"):
        network = build_network(model).to(dtype)
    tile = torch.empty((1, model.num_input_channels, *model.configuration.patch_size), device="meta", dtype=dtype)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            network(tile)
        live = LiveBytes()
        with live:
            network(tile)
    return NetworkCost(parameters=sum(p.numel() for p in network.parameters()),
                       flops_per_tile=int(counter.get_total_flops()), activation_peak_bytes=live.peak)


def network_shape(ct_size_xyz: Sequence[int], ct_spacing_xyz: Sequence[float], model: ModelFolder) -> tuple[int, ...]:
    """Spatial shape of the CT at the plans' spacing, in the plans' (transposed) axis order (nnU-Net's rule)."""
    zyx_size = list(ct_size_xyz)[::-1]
    zyx_spacing = list(ct_spacing_xyz)[::-1]
    transposed_size = [zyx_size[a] for a in model.transpose_forward]
    transposed_spacing = [zyx_spacing[a] for a in model.transpose_forward]
    target = model.configuration.spacing
    if len(target) == 2:  # 2-D: the first (transposed) axis is the slice axis, kept as it is
        target = (transposed_spacing[0], *target)
    return tuple(max(1, round(s * sp / t)) for s, sp, t in zip(transposed_size, transposed_spacing, target))


@dataclass(frozen=True)
class FitReport:
    """The estimate for one case (GiB unless stated)."""

    platform: str
    configuration: str
    num_classes: int
    input_channels: int
    patch_size: tuple[int, ...]
    network_shape: tuple[int, ...]
    folds: int
    mirror_axes: tuple[int, ...]
    tile_step: float
    tiles_per_fold: int
    network_passes: int
    parameters: int
    gflops_per_tile: float
    device_weights_gib: float
    device_activations_gib: float
    device_input_gib: float
    device_logits_gib: float
    ring_gib: float
    device_peak_device_accumulation_gib: float
    device_peak_host_accumulation_gib: float
    host_inputs_gib: float
    host_logits_gib: float
    host_peak_folds_summed_gib: float
    host_peak_fold_copies_gib: float
    device_seconds: float
    device_limit_gib: float
    host_limit_gib: float

    @property
    def fits_device_accumulation(self) -> bool:
        return self.device_peak_device_accumulation_gib <= self.device_limit_gib

    @property
    def fits_host_accumulation(self) -> bool:
        return self.device_peak_host_accumulation_gib <= self.device_limit_gib

    @property
    def fits_host(self) -> bool:
        """Host memory fits when folds are summed into one buffer (the memory-aware path)."""
        return self.host_peak_folds_summed_gib <= self.host_limit_gib

    @property
    def fits(self) -> bool:
        """Some predictor path fits both memories: device or host accumulation, folds summed."""
        return self.fits_host and (self.fits_device_accumulation or self.fits_host_accumulation)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits_device_accumulation": self.fits_device_accumulation,
                "fits_host_accumulation": self.fits_host_accumulation, "fits_host": self.fits_host, "fits": self.fits}


def ct_grid_bytes_per_voxel(model: ModelFolder) -> int:
    """Host bytes per CT voxel of the model input before preprocessing (``preprocessing.channels``): the CT (int16),
    the float32 crop copy the preprocessing normalises, the registered MR (float32, when the model has an MR
    channel), every CT window (an eager float32 copy each) and one z-context channel at a time (deferred)."""
    plan = model.channel_plan
    windows = sum(1 for r in plan.recipes if r.source == "CT" and r.window is not None and not r.z_offset_mm)
    context = any(r.z_offset_mm for r in plan.recipes)
    return 2 + 4 + (4 if plan.uses_mr else 0) + 4 * windows + (4 if context else 0)


def estimate_fit(model: ModelFolder, ct_size_xyz: Sequence[int], ct_spacing_xyz: Sequence[float], folds: int,
                 mirror_axes: Sequence[int], tile_step: float = 0.5, platform: Platform = T4) -> FitReport:
    """The platform-fit estimate of ``model`` on one CT of ``ct_size_xyz`` voxels at ``ct_spacing_xyz`` mm."""
    cost = network_cost(model)
    shape = network_shape(ct_size_xyz, ct_spacing_xyz, model)
    patch = model.configuration.patch_size
    padded = (*shape[: 3 - len(patch)], *(max(s, p) for s, p in zip(shape[3 - len(patch):], patch)))
    slices = padded[0] if len(patch) == 2 else 1  # a 2-D model runs every slice
    tiles = slices * math.prod(len(s) for s in compute_steps(padded[3 - len(patch):], patch, tile_step))
    passes = tiles * folds * 2 ** len(mirror_axes)
    n_net = math.prod(padded)
    n_ct = math.prod(ct_size_xyz)
    k, c = model.num_classes, model.num_input_channels

    weights = cost.parameters * (4 + 2)
    activations = cost.activation_peak_bytes
    tile_io = math.prod(patch) * (c * 4 + k * 4) * (1 + (1 if mirror_axes else 0))
    device_input = c * n_net * 4
    device_logits = k * n_net * 2 + n_net * 2
    ring = (k + 1) * ring_depth(patch, len(padded)) * math.prod(padded[1:]) * 2
    device_acc = weights + activations + tile_io + device_input + device_logits + ring
    device_host_acc = weights + activations + tile_io

    host_inputs = n_ct * ct_grid_bytes_per_voxel(model) + c * n_net * 4 + n_ct  # CT-grid channels, data, labels
    host_logits = k * n_net * 2
    overhead = HOST_OVERHEAD_GIB * GIB
    host_summed = overhead + host_inputs + host_logits + ring + cost.parameters * 4
    host_copies = host_summed + host_logits

    return FitReport(
        platform=platform.name, configuration=model.configuration.name, num_classes=k, input_channels=c,
        patch_size=tuple(patch), network_shape=shape, folds=folds, mirror_axes=tuple(mirror_axes),
        tile_step=tile_step, tiles_per_fold=tiles, network_passes=passes, parameters=cost.parameters,
        gflops_per_tile=round(cost.flops_per_tile / 1e9, 1),
        device_weights_gib=weights / GIB, device_activations_gib=activations / GIB,
        device_input_gib=device_input / GIB, device_logits_gib=device_logits / GIB, ring_gib=ring / GIB,
        device_peak_device_accumulation_gib=device_acc / GIB, device_peak_host_accumulation_gib=device_host_acc / GIB,
        host_inputs_gib=host_inputs / GIB, host_logits_gib=host_logits / GIB,
        host_peak_folds_summed_gib=host_summed / GIB, host_peak_fold_copies_gib=host_copies / GIB,
        device_seconds=passes * cost.flops_per_tile / (platform.device_tflops * 1e12),
        device_limit_gib=platform.device_gib * platform.headroom, host_limit_gib=platform.host_gib * platform.headroom,
    )


def model_from_plans(path: Path, configuration: str | None = None) -> tuple[ModelFolder, int, tuple[int, ...]]:
    """The model folder's plans as a :class:`ModelFolder` without weights, its fold count and mirror axes.

    Configuration, folds and mirror axes come from the fold checkpoints when there are any; otherwise
    ``configuration`` (default ``3d_fullres``), 5 folds and nnU-Net's default (every spatial axis).

    Raises:
        ModelFolderError: naming the file at fault.
    """
    def read(name: str) -> dict[str, Any]:
        try:
            return json.loads((path / name).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelFolderError(path / name, f"cannot read ({err})") from None

    plans, dataset = read("plans.json"), read("dataset.json")
    for key in ("channel_names", "labels"):
        if key not in dataset:
            raise ModelFolderError(path / "dataset.json", f"has no {key!r}")
    fold_dirs = sorted(p for p in path.iterdir() if FOLD_PATTERN.match(p.name) and (p / CHECKPOINT_NAME).is_file())
    axes: tuple[int, ...] | None = None
    if fold_dirs and configuration is None:
        checkpoint = load_checkpoint(fold_dirs[0] / CHECKPOINT_NAME)  # safe load: data only
        configuration = checkpoint.get("init_args", {}).get("configuration")
        raw_axes = checkpoint.get("inference_allowed_mirroring_axes")
        axes = () if raw_axes is None else tuple(int(a) for a in raw_axes)
    configuration = configuration or "3d_fullres"
    config = parse_configuration(plans, configuration, path / "plans.json", len(dataset["channel_names"]))
    if axes is None:
        axes = tuple(range(len(config.patch_size)))
    model = ModelFolder(path=path, plans=plans, dataset=dataset, configuration=config, folds=(), trainer_name="",
                        mirror_axes=axes)
    return model, len(fold_dirs) or 5, axes


def format_report(report: FitReport) -> str:
    """The result table printed by the CLI."""
    def ok(flag: bool) -> str:
        return "fits" if flag else "DOES NOT FIT"

    r = report
    rows = [
        f"platform-fit estimate for {r.platform} (estimate from plans, not a measurement)",
        f"  configuration {r.configuration}: {r.input_channels} channels -> {r.num_classes} classes, patch "
        f"{r.patch_size}, {r.parameters / 1e6:.1f} M parameters, {r.gflops_per_tile} GFLOP per tile",
        f"  image at the network spacing {r.network_shape}: {r.tiles_per_fold} tiles per fold (step {r.tile_step:g})"
        f" x {r.folds} folds x {2 ** len(r.mirror_axes)} mirror passes = {r.network_passes} network passes",
        f"  device: weights {r.device_weights_gib:.2f} + one tile's activations {r.device_activations_gib:.2f} GiB;"
        f" input {r.device_input_gib:.2f}, accumulated logits {r.device_logits_gib:.2f} GiB, fold accumulator ring"
        f" {r.ring_gib:.2f} GiB",
        f"  device peak, logits accumulated on the device: {r.device_peak_device_accumulation_gib:.1f} GiB "
        f"(limit {r.device_limit_gib:.1f}): {ok(r.fits_device_accumulation)}",
        f"  device peak, logits accumulated on the host:   {r.device_peak_host_accumulation_gib:.1f} GiB "
        f"(limit {r.device_limit_gib:.1f}): {ok(r.fits_host_accumulation)}",
        f"  host peak, folds summed into one buffer: {r.host_peak_folds_summed_gib:.1f} GiB "
        f"(limit {r.host_limit_gib:.1f}): {ok(r.fits_host)}",
        f"  host peak, one logits copy per fold + sum: {r.host_peak_fold_copies_gib:.1f} GiB "
        f"(limit {r.host_limit_gib:.1f}): {ok(r.host_peak_fold_copies_gib <= r.host_limit_gib)}",
        f"  device time: {r.device_seconds:.0f} s at the assumed effective throughput (network passes only)",
        "  host figures are a lower bound for large cases (measured 13.1 GiB where this gave 8.7: model/fit.py)",
        f"RESULT {'fits' if r.fits else 'DOES NOT FIT'}",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (plans.json, dataset.json[, fold_N])")
    parser.add_argument("--ct-size", type=int, nargs=3, default=[1024, 1024, 200], metavar=("X", "Y", "Z"))
    parser.add_argument("--ct-spacing", type=float, nargs=3, default=[0.56, 0.56, 2.0], metavar=("X", "Y", "Z"))
    parser.add_argument("--configuration", help="plans configuration (default: the checkpoints', else 3d_fullres)")
    parser.add_argument("--folds", type=int, help="folds in the ensemble (default: the model folder's, else 5)")
    mirror = parser.add_mutually_exclusive_group()
    mirror.add_argument("--mirror-axes", type=int, nargs="+", help="default: the checkpoints', else all axes")
    mirror.add_argument("--no-mirroring", action="store_true")
    parser.add_argument("--tile-step", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        model, n_folds, axes = model_from_plans(args.model, args.configuration)
    except ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MODEL
    if args.no_mirroring:
        axes = ()
    elif args.mirror_axes is not None:
        axes = tuple(args.mirror_axes)
    report = estimate_fit(model, args.ct_size, args.ct_spacing, args.folds or n_folds, axes, args.tile_step)
    print(json.dumps(report.as_dict(), indent=1) if args.json else format_report(report))
    return EXIT_FITS if report.fits else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())

"""Platform-fit estimate (model.fit) on nnU-Net's own 31-class 3d_fullres plan for a 1024 x 1024 x 200 CT.

The plan comes from nnU-Net 2.8.1's default ExperimentPlanner (benchmarks.hanseg_plans); the estimate must report
device and host memory, count tiles and passes like the sliding window does, and its FLOPs / parameter counts must
agree with counts made independently (forward hooks on the convolutions; a real network on the CPU).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.hanseg_plans import write_plan_folder
from model import fit
from model.network import build_network

HANSEG_CT_XYZ = (1024, 1024, 200)
HANSEG_SPACING_XYZ = (0.56, 0.56, 2.0)


@pytest.fixture(scope="module")
def hanseg_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plan_folder(tmp_path_factory.mktemp("plan") / "model", num_classes=31)


def test_live_bytes_frees_what_python_frees() -> None:
    """conv1 (16 kB out) is freed before conv3 (32 kB out) runs: peak = conv2 + conv3 outputs, not the sum of all."""
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.Conv3d(8, 4, 3, padding=1), nn.Conv3d(4, 16, 3, padding=1))
    x = torch.zeros(1, 1, 8, 8, 8)
    live = fit.LiveBytes()
    with torch.no_grad(), live:
        net(x)
    per_voxel = 4 * 512  # float32 x 8^3
    assert live.peak == (4 + 16) * per_voxel
    assert live.peak < (8 + 4 + 16) * per_voxel


def _conv_flops(network: nn.Module, tile: torch.Tensor) -> int:
    """2 x MACs of every (transposed) convolution, from forward hooks: an independent FLOP count."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose3d):
            spatial = math.prod(inputs[0].shape[2:])
        else:
            spatial = math.prod(output.shape[2:])
        total += 2 * module.in_channels * module.out_channels * math.prod(module.kernel_size) * spatial

    convs = [m for m in network.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        network(tile)
    for h in handles:
        h.remove()
    return total


def test_fit_of_the_default_hanseg_plan_reports_device_and_host_memory(hanseg_plan: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, n_folds, axes = fit.model_from_plans(hanseg_plan)
    assert model.configuration.name == "3d_fullres" and model.num_classes == 31 and n_folds == 5 and axes == (0, 1, 2)
    patch = model.configuration.patch_size
    report = fit.estimate_fit(model, HANSEG_CT_XYZ, HANSEG_SPACING_XYZ, folds=5, mirror_axes=axes)

    # the image keeps its 1024 x 1024 x 200 voxels (the planner's spacing is the data's)
    assert report.network_shape == (200, 1024, 1024)
    tiles = math.prod(math.ceil((s - p) / (p * 0.5)) + 1 for s, p in zip(report.network_shape, patch))
    assert report.tiles_per_fold == tiles
    assert report.network_passes == tiles * 5 * 8
    n = 200 * 1024 * 1024
    assert report.device_logits_gib == pytest.approx((31 * n + n) * 2 / 2**30)
    assert report.host_logits_gib == pytest.approx(31 * n * 2 / 2**30)
    assert report.host_peak_fold_copies_gib == pytest.approx(report.host_peak_folds_summed_gib + report.host_logits_gib)

    real = build_network(model)
    assert report.parameters == sum(p.numel() for p in real.parameters())
    with torch.device("meta"):
        meta_net = build_network(model)
    flops = _conv_flops(meta_net, torch.empty(1, 2, *patch, device="meta"))
    assert report.gflops_per_tile == pytest.approx(flops / 1e9, rel=0.01)
    first_stage = 32 * math.prod(patch) * 2  # fp16 output of the first stage, alive until the decoder's last skip
    assert first_stage < report.device_activations_gib * 2**30 < 40 * first_stage

    # verdicts: device accumulation of 31 x 200 x 1024^2 fp16 logits does not fit a 16 GB T4, host accumulation does;
    # 16 GB of RAM do not hold those logits plus the inputs
    assert not report.fits_device_accumulation and report.fits_host_accumulation
    assert not report.fits_host and not report.fits

    assert fit.main(["--model", str(hanseg_plan)]) == fit.EXIT_DOES_NOT_FIT
    out = capsys.readouterr().out
    assert "device peak" in out and "host peak" in out and out.strip().endswith("RESULT DOES NOT FIT")


@pytest.mark.slow
def test_documented_recipe_variant_fits(tmp_path: Path) -> None:
    """training/README.md's platform variant: target spacing 1 x 1 x 2 mm, 5 folds, no mirroring."""
    folder = write_plan_folder(tmp_path / "model", num_classes=31, target_spacing_xyz=(1.0, 1.0, 2.0))
    model, _, _ = fit.model_from_plans(folder)
    report = fit.estimate_fit(model, HANSEG_CT_XYZ, HANSEG_SPACING_XYZ, folds=5, mirror_axes=())
    assert report.network_shape == (200, 573, 573)
    assert report.fits_device_accumulation and report.fits_host and report.fits
    assert report.host_peak_fold_copies_gib <= report.host_limit_gib


def test_fit_of_the_shipped_model_counts_its_tiles() -> None:
    """The shipped model's estimate: nnU-Net's tile count at step 0.5 (per axis ceil((size - patch) / (patch / 2))
    + 1; a 2-D model: one tile row per slice), times folds and mirrorings, and it fits the platform."""
    weights = Path(__file__).resolve().parents[1] / "weights"
    model, n_folds, axes = fit.model_from_plans(weights)
    checkpoint = torch.load(weights / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    allowed = checkpoint.get("inference_allowed_mirroring_axes")
    assert axes == (() if allowed is None else tuple(allowed))  # read from the folds
    report = fit.estimate_fit(model, (128, 128, 128), (3.9, 3.9, 2.5), folds=n_folds, mirror_axes=axes)
    patch = tuple(model.configuration.patch_size)
    untiled = report.network_shape[:-len(patch)]  # a 2-D model's slices; nothing for a 3-D one
    tiled = report.network_shape[-len(patch):]
    assert report.tiles_per_fold == math.prod(untiled) * math.prod(
        math.ceil((max(s, p) - p) / (p * 0.5)) + 1 for s, p in zip(tiled, patch))
    assert report.network_passes == report.tiles_per_fold * n_folds * 2 ** len(axes)
    assert report.fits


def test_host_bytes_per_ct_voxel_follow_the_declared_channels():
    """CT int16 + its float32 crop copy, + the registered MR, + each eager CT window, + ONE deferred z-context
    channel however many the model declares (they are computed one at a time)."""
    from types import SimpleNamespace

    from model.fit import ct_grid_bytes_per_voxel
    from preprocessing.channels import LEGACY_PLAN, SEED_RECIPE_PLAN, Z_CONTEXT_PLAN, ChannelPlan

    def per_voxel(plan):
        return ct_grid_bytes_per_voxel(SimpleNamespace(channel_plan=plan))

    assert per_voxel(ChannelPlan(LEGACY_PLAN.recipes[:1])) == 6
    assert per_voxel(LEGACY_PLAN) == 10
    assert per_voxel(SEED_RECIPE_PLAN) == 18
    assert per_voxel(Z_CONTEXT_PLAN) == 14

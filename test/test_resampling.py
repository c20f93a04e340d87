"""Resampling agrees with nnU-Net v2's own functions (installed for tests) and with torch's interpolation."""

import numpy as np
import pytest
import torch

from model.export import logits_to_labels
from preprocessing.resampling import compute_new_shape, resample_axis, resample_data, separate_z_axis

nnunet_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")


@pytest.mark.parametrize(
    ("shape", "old_spacing", "new_spacing"),
    [
        ((20, 30, 26), (2.5, 3.9, 3.9), (3.0, 4.0, 4.0)),  # plain 3-D cubic
        ((12, 40, 36), (5.0, 1.0, 1.0), (5.0, 1.4, 1.4)),  # anisotropic: separate z (nearest on z)
        ((12, 40, 36), (6.0, 1.5, 1.5), (3.0, 1.0, 1.0)),  # separate z, upsampled on z
    ],
)
def test_data_resampling_is_bit_identical_to_nnunet(shape, old_spacing, new_spacing):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, *shape)).astype(np.float32)
    new_shape = compute_new_shape(shape, old_spacing, new_spacing)
    ours = resample_data(data, new_shape, old_spacing, new_spacing, order=3, order_z=0, force_separate_z=None)
    ref = nnunet_resampling.resample_data_or_seg_to_shape(
        data, new_shape, old_spacing, new_spacing, is_seg=False, order=3, order_z=0, force_separate_z=None
    )
    assert ours.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_separate_axis_rule():
    assert separate_z_axis((5.0, 1.0, 1.0), (5.0, 1.4, 1.4)) == 0
    assert separate_z_axis((3.0, 4.0, 4.0), (2.5, 3.9, 3.9)) is None
    assert separate_z_axis((1.0, 1.0, 4.0), (1.0, 1.0, 1.0), force_separate_z=False) is None
    assert separate_z_axis((1.0, 1.0, 4.0), (1.0, 1.0, 1.0), force_separate_z=True) == 2
    assert separate_z_axis((0.24, 1.25, 1.25), (1.0, 1.0, 1.0)) is None  # two coarse axes: plain 3-D


def test_axis_by_axis_linear_equals_torch_trilinear():
    x = torch.randn(3, 7, 11, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(x[None], size=(15, 6, 20), mode="trilinear", align_corners=False)[0]
    ours = x
    for dim, size in zip((1, 2, 3), (15, 6, 20)):
        ours = resample_axis(ours, dim, size, "linear")
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    ("shape", "model_spacing", "target_shape", "target_spacing", "chunk_voxels"),
    [
        ((31, 18, 22, 22), (3.0, 4.0, 4.0), (21, 29, 29), (2.5, 3.0, 3.0), 64),  # trilinear, many chunks
        ((31, 10, 30, 30), (5.0, 1.0, 1.0), (17, 42, 42), (3.0, 0.7, 0.7), 100),  # separate z
        ((31, 10, 30, 30), (5.0, 1.0, 1.0), (10, 30, 30), (5.0, 1.0, 1.0), 100),  # same grid
    ],
)
@pytest.mark.parametrize("on_device", [False, True], ids=["chunked-host", "dense-gpu-path"])
def test_chunked_export_matches_nnunet_argmax(monkeypatch, shape, model_spacing, target_shape, target_spacing,
                                              chunk_voxels, on_device):
    """Both exports (chunked on the host; dense, class by class, as on the GPU) give nnU-Net's argmax."""
    import model.export

    monkeypatch.setattr(model.export, "CHUNK_VOXELS", chunk_voxels)
    torch.manual_seed(0)
    logits = (torch.randn(shape) * 3).half()
    ours = logits_to_labels(logits, target_shape, model_spacing, target_spacing, force_separate_z=None,
                            on_device=on_device)
    resampled = nnunet_resampling.resample_data_or_seg_to_shape(
        logits, target_shape, model_spacing, target_spacing, is_seg=False, order=1, order_z=0, force_separate_z=None
    )
    ref = resampled.argmax(0)
    assert ours.shape == tuple(target_shape)
    agreement = (ours == ref).mean()
    assert agreement > 0.9999, agreement


@pytest.mark.parametrize("kept_axis", [0, 1, 2])
def test_axis_that_keeps_its_size_is_resampled_plane_by_plane_like_nnunet(kept_axis):
    """2-D configurations keep the slice axis: the plane-by-plane path must give nnU-Net's 3-D spline result
    (to float32 rounding), also where spline overshoot is clipped to the whole volume's range."""
    rng = np.random.default_rng(1)
    shape = [24, 30, 28]
    new_shape = [10, 13, 12]
    new_shape[kept_axis] = shape[kept_axis]
    old_spacing = [2.0, 2.0, 2.0]
    new_spacing = [2.0 * s / n for s, n in zip(shape, new_shape)]
    data = rng.normal(size=(1, *shape)).astype(np.float32)
    data[0, 5, 7, 9] = 25.0  # a spike: its neighbours overshoot, clipping matters
    ours = resample_data(data, new_shape, old_spacing, new_spacing, order=3, order_z=0, force_separate_z=False)
    ref = nnunet_resampling.resample_data_or_seg_to_shape(
        data, new_shape, old_spacing, new_spacing, is_seg=False, order=3, order_z=0, force_separate_z=False
    )
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)

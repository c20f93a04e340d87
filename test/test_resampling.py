"""Resampling agrees with nnU-Net v2's own functions (installed for tests) and with torch's interpolation."""

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

import preprocessing.resampling as resampling
from model.export import logits_to_labels
from preprocessing.resampling import compute_new_shape, resample_axis, resample_data, separate_z_axis, spline_resize
from test.conftest import openkbp_ct_path

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


def _scipy_cubic(data: np.ndarray, new_shape) -> np.ndarray:
    """nnU-Net's cubic resize as one scipy call (skimage's resize(order=3, mode="edge") without its float64 copy)."""
    out = ndimage.zoom(data, np.divide(new_shape, data.shape), order=3, mode="nearest", grid_mode=True)
    return np.clip(out, data.min(), data.max(), out=out)


@pytest.mark.parametrize(
    ("shape", "new_shape"),
    [
        ((20, 30, 26), (9, 31, 13)),  # down- and upsampled axes
        ((1, 5, 2), (3, 2, 7)),  # axes of 1 and 2 voxels
        ((30, 40), (11, 64)),  # a plane (separate-z and 2-D paths)
        ((17,), (40,)),  # a line
        ((8, 9, 10, 11), (5, 12, 6, 7)),  # any dimension
    ],
)
def test_axis_by_axis_cubic_spline_is_scipys_3d_zoom_bit_for_bit(monkeypatch, shape, new_shape):
    """The one-axis-at-a-time spline, in many small chunks, gives scipy's n-D zoom number for number, also where
    the overshoot next to a spike is clipped."""
    monkeypatch.setattr(resampling, "SPLINE_CHUNK_BYTES", 2048)
    rng = np.random.default_rng(2)
    data = (rng.normal(size=shape) * 100).astype(np.float32)
    data.flat[data.size // 2] = 5000.0
    ours = spline_resize(data, new_shape)
    assert ours.dtype == np.float32 and ours.shape == tuple(new_shape)
    np.testing.assert_array_equal(ours, _scipy_cubic(data, new_shape))


def test_axis_by_axis_cubic_spline_on_a_real_ct_is_nnunets():
    """A real OpenKBP CT (int16 HU as float32, 128^3), down on two axes and up on one: nnU-Net's own resampling,
    bit for bit."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(openkbp_ct_path("pt_4")))).astype(np.float32)[None]
    spacing = (2.5, 3.9, 3.9)
    new_spacing = (1.3, 4.4, 5.1)
    new_shape = compute_new_shape(ct.shape[1:], spacing, new_spacing)
    ours = resample_data(ct, new_shape, spacing, new_spacing, order=3, order_z=0, force_separate_z=False)
    ref = nnunet_resampling.resample_data_or_seg_to_shape(
        ct, new_shape, spacing, new_spacing, is_seg=False, order=3, order_z=0, force_separate_z=False
    )
    np.testing.assert_array_equal(ours, ref)


def test_axis_by_axis_cubic_spline_holds_far_less_than_scipys_coefficients(monkeypatch):
    """Peak numpy memory of a CT-like downsampling: scipy's zoom holds a padded copy and float64 coefficients of
    the whole volume (~3.5x the float32 input); the axis-by-axis spline holds one axis's float64 result and a
    chunk of coefficients."""
    monkeypatch.setattr(resampling, "SPLINE_CHUNK_BYTES", 2 * 2**20)
    data = np.random.default_rng(3).normal(size=(64, 256, 256)).astype(np.float32)
    new_shape = (26, 37, 37)

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            fn(data, new_shape)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    ours, scipys = peak(spline_resize), peak(_scipy_cubic)
    assert scipys > 3 * data.nbytes  # the measurement sees scipy's full-size arrays
    assert ours < data.nbytes < scipys / 3, (ours, scipys)  # measured: 0.7x and 4.9x the input


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
def test_axis_that_keeps_its_size_is_left_as_it_is_like_nnunets_3d_spline(kept_axis):
    """2-D configurations keep the slice axis: the axis-by-axis spline leaves it alone, which gives nnU-Net's 3-D
    spline result (to float32 rounding: scipy evaluates the spline at that axis's nodes), also where spline
    overshoot is clipped to the whole volume's range."""
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

"""Tests of the synthetic T1-like MR generator (preprocessing/synthetic_t1.py) on real OpenKBP CTs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.synthetic_t1 import (
    NOISE_REFERENCE,
    hu_to_t1,
    make_t1_like,
    random_rigid,
    relabel_direction,
)
from test.conftest import openkbp_ct_path

SMALL = {"spacing_mm": (1.8, 1.8, 3.0)}  # cheap MR grid for tests that do not need the default resolution


def load_ct(case: str) -> sitk.Image:
    return sitk.ReadImage(str(openkbp_ct_path(case)))


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return load_ct("pt_17")


def _correlation_with_truth(ct: sitk.Image, mr: sitk.Image, ct_to_mr: sitk.Transform) -> float:
    """Pearson correlation of the MR brought onto the CT grid and the HU->T1 map of the CT, inside the MR FOV."""
    back = sitk.GetArrayFromImage(sitk.Resample(mr, ct, ct_to_mr, sitk.sitkLinear, -1.0, sitk.sitkFloat32))
    expected = hu_to_t1(sitk.GetArrayFromImage(ct).astype(np.float32))
    inside = back >= 0
    return float(np.corrcoef(back[inside], expected[inside])[0, 1])


def test_hu_to_t1_contrast() -> None:
    air, fat, fluid, muscle, bone = hu_to_t1(np.array([-1000.0, -100.0, 5.0, 50.0, 1000.0]))
    assert air < 5 and bone < 100, "air and bone must be dark"
    assert fat > muscle > fluid > bone, "fat bright, muscle mid, fluid darker, bone dark"
    assert hu_to_t1(np.zeros((2, 3, 4))).dtype == np.float32


def test_grid_type_and_reproducibility(ct: sitk.Image) -> None:
    a = make_t1_like(ct, rotation_deg=(2, -1, 3), translation_mm=(10, 0, -5), seed=3)
    b = make_t1_like(ct, rotation_deg=(2, -1, 3), translation_mm=(10, 0, -5), seed=3)
    c = make_t1_like(ct, rotation_deg=(2, -1, 3), translation_mm=(10, 0, -5), seed=4)
    assert a.image.GetPixelID() == sitk.sitkFloat32
    assert a.image.GetSize() == (256, 256, 140)  # default 230 x 230 x 210 mm at 0.9 x 0.9 x 1.5 mm
    assert np.allclose(a.image.GetSpacing(), (0.9, 0.9, 1.5))
    arr_a, arr_b, arr_c = (sitk.GetArrayViewFromImage(s.image) for s in (a, b, c))
    assert np.array_equal(arr_a, arr_b), "same seed must give identical voxels"
    assert a.image.GetOrigin() == b.image.GetOrigin()
    assert not np.array_equal(arr_a, arr_c), "another seed must change the noise / bias field"
    assert np.all(np.isfinite(arr_a)) and arr_a.min() >= 0.0


def test_ground_truth_transform_maps_ct_onto_mr(ct: sitk.Image) -> None:
    synth = make_t1_like(ct, rotation_deg=(4, -3, 5), translation_mm=(25, -20, 15), blur_mm=0.0,
                         bias_amplitude=0.0, noise_fraction=0.0, **SMALL)
    good = _correlation_with_truth(ct, synth.image, synth.ct_to_mr)
    wrong = sitk.Euler3DTransform(synth.ct_to_mr)
    wrong.SetTranslation(tuple(np.asarray(wrong.GetTranslation()) + (0.0, 8.0, 0.0)))
    shifted = _correlation_with_truth(ct, synth.image, wrong)
    assert good > 0.93, f"MR brought back with the true transform should match the T1 map of the CT ({good:.3f})"
    assert shifted < good - 0.1, f"an 8 mm error must be visible ({shifted:.3f} vs {good:.3f})"


def test_field_of_view_is_the_head_only(ct: sitk.Image) -> None:
    synth = make_t1_like(ct, rotation_deg=(0, 0, 0), **SMALL)
    mr = synth.image
    corners_z = [mr.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, mr.GetSize()[2] - 1)]
    ct_z = [ct.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, ct.GetSize()[2] - 1)]
    body_z = np.nonzero((sitk.GetArrayViewFromImage(ct) > -400).any(axis=(1, 2)))[0]
    vertex = ct.TransformIndexToPhysicalPoint((0, 0, int(body_z.max())))[2]
    assert max(corners_z) - min(corners_z) < max(ct_z) - min(ct_z), "MR must cover less height than the CT"
    assert vertex - 5 <= max(corners_z) <= vertex + 20, "MR field of view starts just above the vertex"
    assert mr.GetSize()[0] * mr.GetSpacing()[0] == pytest.approx(230, abs=2)


def test_origin_offset_moves_only_the_frame(ct: sitk.Image) -> None:
    a = make_t1_like(ct, rotation_deg=(1, 2, 3), translation_mm=(5, 5, 5), seed=1, **SMALL)
    b = make_t1_like(ct, rotation_deg=(1, 2, 3), translation_mm=(5, 5, 5), origin_offset_mm=(300, -150, 80),
                     seed=1, **SMALL)
    assert np.allclose(np.subtract(b.image.GetOrigin(), a.image.GetOrigin()), (300, -150, 80), atol=1e-6)
    assert np.allclose(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image), atol=1e-3)
    p = (10.0, -20.0, 30.0)
    assert np.allclose(np.subtract(b.ct_to_mr.TransformPoint(p), a.ct_to_mr.TransformPoint(p)), (300, -150, 80))


def test_bias_and_noise_levels(ct: sitk.Image) -> None:
    clean = make_t1_like(ct, blur_mm=0.0, bias_amplitude=0.0, noise_fraction=0.0, **SMALL)
    biased = make_t1_like(ct, blur_mm=0.0, bias_amplitude=0.2, noise_fraction=0.0, seed=5, **SMALL)
    noisy = make_t1_like(ct, blur_mm=0.0, bias_amplitude=0.0, noise_fraction=0.02, seed=5, **SMALL)
    c = sitk.GetArrayFromImage(clean.image)
    tissue = c > 200
    ratio = sitk.GetArrayFromImage(biased.image)[tissue] / c[tissue]
    assert 0.79 <= ratio.min() and ratio.max() <= 1.21, "bias field stays within +/-20 %"
    assert ratio.max() - ratio.min() > 0.1, "bias field is really there (max |deviation| is reached at the FOV edge)"
    residual = sitk.GetArrayFromImage(noisy.image)[tissue] - c[tissue]
    assert residual.std() == pytest.approx(0.02 * NOISE_REFERENCE, rel=0.2)
    air = sitk.GetArrayFromImage(noisy.image)[c == 0]
    assert air.size and air.min() >= 0 and air.mean() > 0.5 * 0.02 * NOISE_REFERENCE, "Rician floor in air"


def test_stored_direction_does_not_change_anatomy(ct: sitk.Image) -> None:
    kwargs = dict(rotation_deg=(3, 0, -2), translation_mm=(0, 10, 0), blur_mm=0.0, bias_amplitude=0.0,
                  noise_fraction=0.0, **SMALL)
    lps = make_t1_like(ct, **kwargs)
    ras = make_t1_like(ct, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), **kwargs)
    assert ras.image.GetDirection() == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert _correlation_with_truth(ct, ras.image, ras.ct_to_mr) > 0.93
    on_lps = sitk.Resample(ras.image, lps.image, sitk.Transform(), sitk.sitkLinear, 0.0)
    diff = np.abs(sitk.GetArrayViewFromImage(on_lps) - sitk.GetArrayViewFromImage(lps.image))
    assert np.median(diff) < 1.0


def test_relabel_direction_keeps_box_centre(ct: sitk.Image) -> None:
    mr = make_t1_like(ct, **SMALL).image
    flipped = relabel_direction(mr, (1, 0, 0, 0, 1, 0, 0, 0, -1))

    def centre(img: sitk.Image) -> np.ndarray:
        return np.asarray(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))

    assert np.allclose(centre(mr), centre(flipped))
    assert flipped.GetDirection()[8] == -1
    assert np.array_equal(sitk.GetArrayViewFromImage(mr), sitk.GetArrayViewFromImage(flipped))


def test_random_rigid_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        rot, trans = random_rigid(rng, max_rotation_deg=5.0, max_translation_mm=40.0)
        assert all(abs(a) <= 5.0 for a in rot)
        assert 20.0 - 1e-9 <= float(np.linalg.norm(trans)) <= 40.0 + 1e-9
    assert random_rigid(np.random.default_rng(1)) == random_rigid(np.random.default_rng(1))


def test_bad_arguments(ct: sitk.Image) -> None:
    with pytest.raises(ValueError):
        make_t1_like(ct, spacing_mm=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        make_t1_like(ct, rotation_deg=(1.0, 2.0))
    with pytest.raises(ValueError):
        make_t1_like(ct, direction=(1, 0, 0, 0, 2, 0, 0, 0, 1))
    empty = sitk.Image([8, 8, 8], sitk.sitkInt16) - 1000
    with pytest.raises(ValueError, match="no voxel"):
        make_t1_like(empty)

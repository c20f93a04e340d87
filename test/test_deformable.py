"""The deformable (B-spline) MR stage: recovers a known smooth neck deformation on real CT anatomy, never folds on
the real T1s, falls back to the rigid result when its check fails, and the transforms it writes reproduce the MR
channel."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.channels import mr_on_ct_grid, write_transforms
from preprocessing.deformable import DeformableSettings, DeformableThresholds, refine_deformable, resample_deformable
from preprocessing.registration import register_mr_to_ct, resample_mr_to_ct
from preprocessing.synthetic_deformation import deformed_t1_like
from preprocessing.synthetic_t1 import body_points_in_mr_fov, target_registration_error
from test.conftest import HEAD_MR, openkbp_ct_path

MR_SPACING = (1.5, 1.5, 2.5)
TRE_BAR_MM = 1.5
QUICK = DeformableSettings(grid_spacing_mm=6.0, iterations=3, shrink_factors=(1,), smoothing_sigmas_mm=(0.0,))
"""A few iterations on a coarse grid: enough to exercise the stage, not to register well."""


@pytest.fixture(scope="module")
def deformed_case():
    ct = sitk.ReadImage(str(openkbp_ct_path("pt_4")))
    synth = deformed_t1_like(ct, amplitude_mm=7.0, warp_seed=1, rotation_deg=(3.0, -2.0, 4.0),
                             translation_mm=(12.0, -20.0, 8.0), spacing_mm=MR_SPACING, seed=1)
    rigid = register_mr_to_ct(ct, synth.image, threads=1)
    assert rigid.accepted, rigid.reason
    return ct, synth, rigid


@pytest.mark.slow
def test_bspline_recovers_a_known_neck_deformation_where_rigid_cannot(deformed_case):
    ct, synth, rigid = deformed_case
    assert 5.0 <= synth.max_displacement_mm <= 8.0
    result = refine_deformable(ct, synth.image, rigid.ct_to_mr, DeformableSettings(threads=1))
    assert result.accepted, result.reason
    assert result.metrics["jacobian_min"] > 0

    points = body_points_in_mr_fov(ct, synth.image, synth.ct_to_mr, max_points=5000)
    tre_rigid = target_registration_error(points, synth.ct_to_mr, rigid.ct_to_mr)
    tre_deformable = target_registration_error(points, synth.ct_to_mr, result.ct_to_mr)
    moved = target_registration_error(points, synth.ct_to_mr, synth.synthetic.ct_to_mr) > 1.0  # the deformed part
    print(f"TRE mean inside the MR FOV: rigid {tre_rigid.mean():.2f} mm, rigid+B-spline {tre_deformable.mean():.2f} mm;"
          f" where the neck moved > 1 mm ({moved.sum()} points): rigid {tre_rigid[moved].mean():.2f} mm, "
          f"rigid+B-spline {tre_deformable[moved].mean():.2f} mm")
    assert tre_deformable.mean() <= TRE_BAR_MM
    assert tre_deformable.mean() < tre_rigid.mean()
    assert tre_deformable[moved].mean() < 0.6 * tre_rigid[moved].mean()


def test_written_transforms_reproduce_the_resampled_mr(deformed_case, tmp_path):
    """The rigid and the deformable (rigid o B-spline) transforms, written with sitk.WriteTransform and read back,
    reproduce the MR channel; the pipeline's field-of-view-limited resampling gives the same image."""
    ct, synth, rigid = deformed_case
    result = refine_deformable(ct, synth.image, rigid.ct_to_mr, QUICK, DeformableThresholds(min_jacobian=-1e9,
                               max_displacement_mm=1e9, max_bending_energy=1e9, max_metric_increase=1e9))
    assert result.accepted and result.bspline is not None
    paths = write_transforms([("rigid", rigid.ct_to_mr), ("deformable", result.ct_to_mr)], tmp_path, "c")
    assert [p.name for p in paths] == ["c_ct_to_mr_rigid.tfm", "c_ct_to_mr_deformable.tfm"]
    points = body_points_in_mr_fov(ct, synth.image, synth.ct_to_mr, max_points=2000)
    for path, transform in zip(paths, (rigid.ct_to_mr, result.ct_to_mr)):
        read = sitk.ReadTransform(str(path))
        assert target_registration_error(points, transform, read).max() < 1e-6, path.name
        expected = sitk.GetArrayFromImage(resample_mr_to_ct(synth.image, ct, transform))  # copies: the images are
        again = sitk.GetArrayFromImage(sitk.Resample(synth.image, ct, read, sitk.sitkLinear, 0.0,  # temporaries
                                                     sitk.sitkFloat32))
        # the text file keeps the Euler angles, not the matrix: ~1e-13 mm apart, which can move a voxel exactly on
        # the MR's field-of-view border in or out; everywhere else the images agree
        assert np.count_nonzero(~np.isclose(again, expected, atol=1e-3)) <= 1e-4 * again.size, path.name
    fov_only = resample_deformable(synth.image, ct, result.ct_to_mr, rigid.ct_to_mr)
    assert np.array_equal(sitk.GetArrayFromImage(fov_only),
                          sitk.GetArrayFromImage(resample_mr_to_ct(synth.image, ct, result.ct_to_mr)))


def test_failed_check_falls_back_to_the_rigid_transform(deformed_case, caplog):
    ct, synth, rigid = deformed_case
    with caplog.at_level(logging.WARNING, logger="preprocessing.deformable"):
        result = refine_deformable(ct, synth.image, rigid.ct_to_mr, QUICK,
                                   DeformableThresholds(max_displacement_mm=-1.0))
    assert not result.accepted and "displacement" in result.reason
    assert result.ct_to_mr is rigid.ct_to_mr
    assert any("falling back to the rigid registration" in r.getMessage() for r in caplog.records)


def test_mr_on_ct_grid_uses_and_lists_only_the_transforms_it_used(deformed_case):
    """When the B-spline stage is rejected the MR channel is resampled rigidly and only the rigid transform is
    listed for writing."""
    ct, synth, _ = deformed_case
    out = mr_on_ct_grid(ct, synth.image, "rigid+bspline", threads=1, deformable_settings=QUICK,
                        deformable_thresholds=DeformableThresholds(max_displacement_mm=-1.0))
    assert out.status == "registered" and out.deformable is not None and not out.deformable.accepted
    assert [name for name, _ in out.transforms()] == ["rigid"]
    rigid_mr = resample_mr_to_ct(synth.image, ct, out.rigid.ct_to_mr)
    assert np.array_equal(sitk.GetArrayViewFromImage(out.image), sitk.GetArrayViewFromImage(rigid_mr))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["visible_male_head_mri.mha", "rire_training_001_mr_T1.mha"])
def test_real_t1_never_folds_and_falls_back_cleanly(name, caplog):
    path = HEAD_MR / name
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    ct = sitk.ReadImage(str(openkbp_ct_path("pt_17")))
    with caplog.at_level(logging.INFO, logger="preprocessing.deformable"):
        out = mr_on_ct_grid(ct, sitk.ReadImage(str(path)), "rigid+bspline", threads=1)
    if out.image is None:  # the rigid stage rejected this inter-subject pair: no B-spline stage, dropout fill
        assert out.status == "rejected" and out.deformable is None and out.transforms() == []
        return
    d = out.deformable
    print(f"{name}: B-spline accepted={d.accepted} reason={d.reason!r} metrics={d.metrics}")
    if d.accepted:
        assert d.metrics["jacobian_min"] > 0, d.metrics
        assert [n for n, _ in out.transforms()] == ["rigid", "deformable"]
    else:
        assert out.ct_to_mr is out.rigid.ct_to_mr and [n for n, _ in out.transforms()] == ["rigid"]
        assert any("falling back to the rigid registration" in r.getMessage() for r in caplog.records)

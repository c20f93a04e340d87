"""Tests of rigid MR -> CT registration and its quality check (preprocessing/registration.py).

Accuracy is measured on the synthetic-modality protocol (../shared/docs/REGISTRATION.md): a T1-like MR made from a
real OpenKBP CT under a known rigid transform; TRE = distance between the true and the estimated image of CT body
points inside the MR field of view.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import pytest
import SimpleITK as sitk

from devkit.data import SHARED_SKIP_REASON
from preprocessing.registration import RegistrationResult, register_mr_to_ct, resample_mr_to_ct
from preprocessing.synthetic_t1 import (
    SyntheticMR,
    body_points_in_mr_fov,
    hu_to_t1,
    make_t1_like,
    relabel_direction,
    target_registration_error,
)
from test.conftest import HEAD_MR, openkbp_ct_path

THREADS = 2
MR_SPACING = (1.2, 1.2, 2.0)
"""MR grid for most tests: finer than the 4-5 mm OpenKBP CT, cheaper than the 0.9 x 0.9 x 1.5 mm default."""

log = logging.getLogger(__name__)


@cache
def load_ct(case: str) -> sitk.Image:
    return sitk.ReadImage(str(openkbp_ct_path(case)))


@cache
def synthetic(case: str, rotation: tuple[float, float, float], translation: tuple[float, float, float],
              offset: tuple[float, float, float] = (0.0, 0.0, 0.0), seed: int = 0) -> SyntheticMR:
    return make_t1_like(load_ct(case), rotation_deg=rotation, translation_mm=translation, origin_offset_mm=offset,
                        spacing_mm=MR_SPACING, seed=seed)


def tre(case: str, synth: SyntheticMR, result: RegistrationResult) -> np.ndarray:
    points = body_points_in_mr_fov(load_ct(case), synth.image, synth.ct_to_mr)
    assert len(points) > 1000, "the MR field of view must contain CT body points"
    return target_registration_error(points, synth.ct_to_mr, result.ct_to_mr)


def check_result_shape(result: RegistrationResult) -> None:
    assert isinstance(result, RegistrationResult)
    assert isinstance(result.ct_to_mr, sitk.Transform)
    assert result.accepted == (result.reason == "")
    assert result.seconds > 0 and all(np.isfinite(v) for v in result.metrics.values())


KNOWN = [
    pytest.param("pt_17", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), id="pt_17-identity"),
    pytest.param("pt_17", (3.0, -2.0, 4.0), (20.0, -15.0, 10.0), (0.0, 0.0, 0.0), id="pt_17-small"),
    pytest.param("pt_17", (-4.0, 3.0, -2.0), (-25.0, 10.0, -20.0), (300.0, -150.0, 80.0), id="pt_17-offset344mm"),
    pytest.param("pt_100", (5.0, 5.0, -5.0), (30.0, 30.0, 30.0), (0.0, 0.0, 0.0), id="pt_100-large"),
    pytest.param("pt_236", (-3.0, 4.0, 2.0), (-35.0, 20.0, 5.0), (0.0, 0.0, 344.0), id="pt_236-offset344mm"),
    pytest.param("pt_119", (10.0, -10.0, 10.0), (20.0, -20.0, 20.0), (150.0, -150.0, 150.0), id="pt_119-rot17deg"),
]


@pytest.mark.parametrize(("case", "rotation", "translation", "offset"), KNOWN)
def test_synthetic_protocol_tre(case: str, rotation: tuple, translation: tuple, offset: tuple) -> None:
    synth = synthetic(case, rotation, translation, offset)
    result = register_mr_to_ct(load_ct(case), synth.image, threads=THREADS)
    check_result_shape(result)
    errors = tre(case, synth, result)
    log.info("%s: TRE mean %.2f max %.2f mm, %.1f s, %s", case, errors.mean(), errors.max(), result.seconds,
             result.metrics)
    assert result.accepted, result.reason
    assert errors.mean() <= 1.0, f"mean TRE {errors.mean():.2f} mm"
    assert errors.max() <= 2.0, f"max TRE {errors.max():.2f} mm"
    assert result.metrics["body_dice"] > 0.95


def test_default_mr_resolution_and_ras_storage() -> None:
    """The HaN-Seg-like default MR grid (0.9 x 0.9 x 1.5 mm), stored with a non-identity direction."""
    ct = load_ct("pt_4")
    synth = make_t1_like(ct, rotation_deg=(2.0, -3.0, 1.0), translation_mm=(10.0, 5.0, -20.0),
                         direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), seed=21)
    result = register_mr_to_ct(ct, synth.image, threads=THREADS)
    errors = tre("pt_4", synth, result)
    assert result.accepted, result.reason
    assert errors.mean() <= 1.0, f"mean TRE {errors.mean():.2f} mm"


def test_byte_reproducible() -> None:
    synth = synthetic("pt_17", (3.0, -2.0, 4.0), (20.0, -15.0, 10.0))
    a = register_mr_to_ct(load_ct("pt_17"), synth.image, threads=THREADS)
    b = register_mr_to_ct(load_ct("pt_17"), synth.image, threads=THREADS)
    assert a.ct_to_mr.GetParameters() == b.ct_to_mr.GetParameters()
    assert a.ct_to_mr.GetFixedParameters() == b.ct_to_mr.GetFixedParameters()
    assert {k: v for k, v in a.metrics.items() if not k.startswith(("t_", "seconds"))} == {
        k: v for k, v in b.metrics.items() if not k.startswith(("t_", "seconds"))
    }


def test_global_thread_setting_is_restored() -> None:
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    synth = synthetic("pt_17", (3.0, -2.0, 4.0), (20.0, -15.0, 10.0))
    register_mr_to_ct(load_ct("pt_17"), synth.image, threads=1)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_inter_subject_does_not_crash() -> None:
    """An MR of ANOTHER patient: allowed to pass or fail; measured: passes (heads are heads), see the report."""
    synth = synthetic("pt_17", (2.0, 1.0, -3.0), (15.0, -10.0, 5.0))
    result = register_mr_to_ct(load_ct("pt_100"), synth.image, threads=THREADS)
    check_result_shape(result)
    log.info("inter-subject: accepted=%s reason=%r metrics=%s", result.accepted, result.reason, result.metrics)
    # Whatever the decision, a same-subject registration must score better on every quality number.
    same = register_mr_to_ct(load_ct("pt_17"), synth.image, threads=THREADS)
    assert same.metrics["body_dice"] > result.metrics.get("body_dice", 0.0)
    assert same.metrics["mi"] < result.metrics.get("mi", 0.0)


def test_no_overlap_rejected() -> None:
    """The MR 2 m away from the CT: no scanner pair is that far apart (CONTRACT.md: up to ~600 mm moves)."""
    synth = synthetic("pt_17", (0.0, 0.0, 0.0), (15.0, -10.0, 5.0), (2000.0, 0.0, 0.0))
    result = register_mr_to_ct(load_ct("pt_17"), synth.image, threads=THREADS)
    check_result_shape(result)
    assert not result.accepted
    assert "implausible move" in result.reason


@pytest.mark.parametrize(
    ("label", "direction"),
    [
        ("upside-down", (1, 0, 0, 0, 1, 0, 0, 0, -1)),
        ("coronal-stored-as-axial", (1, 0, 0, 0, 0, -1, 0, 1, 0)),
        ("prone-as-supine", (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    ],
)
@pytest.mark.parametrize("case", ["pt_17", "pt_119"])
def test_wrong_orientation_rejected(case: str, label: str, direction: tuple) -> None:
    synth = synthetic(case, (2.0, 1.0, -3.0), (15.0, -10.0, 5.0))
    result = register_mr_to_ct(load_ct(case), relabel_direction(synth.image, direction), threads=THREADS)
    check_result_shape(result)
    assert not result.accepted, f"{label}: {result.metrics}"
    assert "orientation" in result.reason


def test_other_body_part_rejected() -> None:
    """An MR of the neck and shoulders (made from the lower half of the CT) against the full CT."""
    ct = load_ct("pt_17")
    size = list(ct.GetSize())
    lower = sitk.RegionOfInterest(ct, [size[0], size[1], size[2] // 2], [0, 0, 0])
    other = make_t1_like(lower, translation_mm=(15.0, -10.0, 5.0), spacing_mm=MR_SPACING, seed=51)
    result = register_mr_to_ct(ct, other.image, threads=THREADS)
    check_result_shape(result)
    assert not result.accepted


@pytest.mark.parametrize("name", ["visible_male_head_mri.mha", "rire_training_001_mr_T1.mha"])
def test_real_mr_does_not_crash(name: str) -> None:
    """A real T1 (another subject, head only) against an OpenKBP CT: any decision, no exception."""
    path = HEAD_MR / name
    if not path.is_file():
        pytest.skip(f"{SHARED_SKIP_REASON}: real MR {name}")
    mr = sitk.ReadImage(str(path))
    result = register_mr_to_ct(load_ct("pt_17"), mr, threads=THREADS)
    check_result_shape(result)
    log.info("%s: accepted=%s reason=%r metrics=%s", name, result.accepted, result.reason, result.metrics)
    out = resample_mr_to_ct(mr, load_ct("pt_17"), result.ct_to_mr)
    assert out.GetSize() == load_ct("pt_17").GetSize()


def test_mr_with_nan_voxels_still_registers() -> None:
    synth = synthetic("pt_17", (3.0, -2.0, 4.0), (20.0, -15.0, 10.0))
    arr = sitk.GetArrayFromImage(synth.image)
    arr[:3] = np.nan  # e.g. a reconstruction artefact in the lowest slices
    arr[-1, :5, :5] = np.inf
    mr = sitk.GetImageFromArray(arr)
    mr.CopyInformation(synth.image)
    result = register_mr_to_ct(load_ct("pt_17"), mr, threads=THREADS)
    assert result.accepted, result.reason
    assert tre("pt_17", synth, result).mean() <= 1.0


def _image(array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[: img.GetDimension()])
    return img


@pytest.mark.parametrize(
    "mr",
    [
        pytest.param(lambda: _image(np.full((20, 30, 30), 7.0, np.float32)), id="constant"),
        pytest.param(lambda: _image(np.zeros((20, 30, 30), np.int16)), id="all-zero"),
        pytest.param(lambda: _image(np.full((20, 30, 30), np.nan, np.float32)), id="all-nan"),
        pytest.param(lambda: _image(np.random.default_rng(0).random((30, 30), np.float32), (1.0, 1.0)), id="2-d"),
        pytest.param(lambda: _image(np.random.default_rng(0).random((1, 30, 30), np.float32)), id="one-slice"),
        pytest.param(lambda: sitk.Image([16, 16, 16], sitk.sitkVectorFloat32, 3), id="vector"),
        pytest.param(lambda: _image(np.random.default_rng(0).random((60, 60, 60), np.float32) * 1000, (3.0, 3.0, 3.0)),
                     id="noise"),
        pytest.param(lambda: _image(np.pad(np.ones((4, 4, 4), np.float32), 10) * 800), id="tiny-cube"),
    ],
)
def test_garbage_mr_rejected_without_raising(mr) -> None:
    result = register_mr_to_ct(load_ct("pt_17"), mr(), threads=THREADS)
    check_result_shape(result)
    assert not result.accepted and result.reason


def test_resample_mr_to_ct_grid_and_content() -> None:
    ct = load_ct("pt_17")
    synth = make_t1_like(ct, rotation_deg=(3.0, -2.0, 4.0), translation_mm=(20.0, -15.0, 10.0), blur_mm=0.0,
                         bias_amplitude=0.0, noise_fraction=0.0, spacing_mm=MR_SPACING)
    out = resample_mr_to_ct(synth.image, ct, synth.ct_to_mr)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSize() == ct.GetSize() and out.GetSpacing() == ct.GetSpacing()
    assert out.GetOrigin() == ct.GetOrigin() and out.GetDirection() == ct.GetDirection()
    arr = sitk.GetArrayFromImage(out)
    # Outside the MR field of view (the CT's lowest slices: shoulders) the output is 0.
    assert np.all(arr[:5] == 0)
    ones = sitk.Image(synth.image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(synth.image)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, ct, synth.ct_to_mr, sitk.sitkNearestNeighbor, 0)) > 0
    expected = hu_to_t1(sitk.GetArrayFromImage(ct).astype(np.float32))
    corr = np.corrcoef(arr[inside], expected[inside])[0, 1]
    assert corr > 0.93, f"MR on the CT grid should match the T1 map of the CT ({corr:.3f})"

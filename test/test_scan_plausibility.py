"""Finite, plausible inputs; no silent empty output (issue 13, part 3).

Toy and wrongly typed CTs are refused with one line naming the file; an MR with non-finite voxels or a CT in the
MR slot is dropped with a warning and the case is predicted from the CT alone (the same labels as a CT-only run);
a map with no or few OARs is logged as a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import InputError
from contract.imageio import read_scan
from test.test_process import assert_failed_cleanly, make_case


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _noise(size_xyz: tuple[int, int, int], spacing: tuple[float, float, float], dtype=np.int16) -> sitk.Image:  # noqa: ANN001
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (max(info.min, -1000), min(info.max, 1000)) if info else (-1000, 1000)
    image = sitk.GetImageFromArray(rng.integers(low, high, size_xyz[::-1]).astype(dtype))
    image.SetSpacing(spacing)
    return image


def _complex(real_ct: sitk.Image) -> sitk.Image:
    part = sitk.Cast(real_ct[:, :, 60:70], sitk.sitkFloat32)
    return sitk.RealAndImaginaryToComplex(part, part)


def _sheared(real_ct: sitk.Image) -> sitk.Image:
    ct = real_ct[:, :, 60:70]
    ct.SetDirection((1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # det 1, but the axes are not orthogonal
    return ct


def _as_dtype(real_ct: sitk.Image, pixel: int) -> sitk.Image:
    return sitk.Cast(sitk.Clamp(real_ct[:, :, 60:70], lowerBound=0, upperBound=120), pixel)


TOY_CASES = {
    "3x3x3": (lambda ct: _noise((3, 3, 3), (10.0, 10.0, 10.0)), "ct.mha", "at least 4 per axis"),
    "2-slice": (lambda ct: _noise((64, 64, 2), (3.0, 3.0, 12.0)), "ct.mha", "at least 4 per axis"),
    "uint8": (lambda ct: _as_dtype(ct, sitk.sitkUInt8), "ct.mha", "uint8 cannot hold Hounsfield units"),
    "int8": (lambda ct: _as_dtype(ct, sitk.sitkInt8), "ct.mha", "int8 cannot hold Hounsfield units"),
    "uint32": (lambda ct: _as_dtype(ct, sitk.sitkUInt32), "ct.mha", "cannot hold Hounsfield units"),
    "complex": (_complex, "ct.mha", "complex"),
    "non-orthonormal": (_sheared, "ct.mha", "not orthonormal"),
    "tiff-without-spacing": (lambda ct: sitk.Cast(sitk.Clamp(ct[:, :, 60:70], lowerBound=0), sitk.sitkUInt16),
                             "ct.tif", "TIFF without a stated voxel spacing"),
}


@pytest.mark.parametrize("case", TOY_CASES, ids=list(TOY_CASES))
def test_implausible_cts_are_refused(case, real_ct, tmp_path):
    make, name, message = TOY_CASES[case]
    image = make(real_ct)
    if name.endswith(".tif"):
        image.SetSpacing((1.0, 1.0, 1.0))
    path = _write(image, tmp_path / name)
    with pytest.raises(InputError, match=message) as err:
        read_scan(path, "CT")
    assert str(path) in str(err.value)


def test_a_toy_ct_is_refused_end_to_end(small_model, tmp_path, cli):
    path = _write(_noise((3, 3, 3), (10.0, 10.0, 10.0)), tmp_path / "in" / "images" / "ct" / "ct.mha")
    result = cli("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert result.returncode == 2
    assert_failed_cleanly(result, tmp_path / "out", str(path), "voxels")


def test_a_real_int16_ct_and_its_float_copy_pass(real_ct, tmp_path):
    for pixel in (sitk.sitkInt16, sitk.sitkFloat32):
        read_scan(_write(sitk.Cast(real_ct[:, :, 60:70], pixel), tmp_path / f"ct{pixel}.nrrd"), "CT")


def _labels(result_root: Path) -> np.ndarray:
    files = list((result_root / "images" / "head_neck_oar").iterdir())
    assert len(files) == 1
    return sitk.GetArrayFromImage(sitk.ReadImage(str(files[0])))


def _with_mr(root: Path, mr: sitk.Image) -> Path:
    _write(mr, root / "images" / "t1-mri" / "mr.mha")
    return root


def _huge_voxel_mr(ct: sitk.Image) -> sitk.Image:
    """A float64 MR of the CT's head with 20 voxels of 1e300 (inf once float32, NaN after resampling)."""
    values = (sitk.GetArrayFromImage(ct).astype(np.float64) + 1024.0).clip(0, None)
    values.ravel()[np.linspace(0, values.size - 1, 20).astype(int)] = 1e300
    mr = sitk.GetImageFromArray(values)
    mr.CopyInformation(ct)
    return mr


@pytest.mark.parametrize(("make_mr", "warning"), [
    (_huge_voxel_mr, "20 NaN, inf or out-of-float32-range voxels"),
    (lambda ct: ct, "T1 MR looks like a CT"),
], ids=["1e300-voxels", "mr-is-a-ct"])
def test_unusable_mr_gives_exactly_the_ct_only_prediction(make_mr, warning, real_ct, small_model, tmp_path, cli):
    ct = real_ct[:, :, 56:72]
    alone = cli("--input", make_case(tmp_path / "alone", ct, with_mr=False), "--output", tmp_path / "o1",
                        "--model", small_model, "--no-tta", "--folds", "0")
    assert alone.returncode == 0, alone.stderr[-2000:]
    root = _with_mr(make_case(tmp_path / "in", ct, with_mr=False), make_mr(ct))
    result = cli("--input", root, "--output", tmp_path / "o2", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert warning in result.stderr and "predicting from the CT alone" in result.stderr
    np.testing.assert_array_equal(_labels(tmp_path / "o2"), _labels(tmp_path / "o1"))


def test_empty_or_sparse_map_is_a_warning(caplog):
    from hanseg.api import warn_if_few_oars

    case = "c"
    with caplog.at_level(logging.WARNING, logger="process"):
        assert warn_if_few_oars(case, 0, 30)
        assert "only 0 of the model's 30 OARs labelled (empty map)" in caplog.text
        caplog.clear()
        assert warn_if_few_oars(case, 5, 30) and "only 5 of" in caplog.text
        caplog.clear()
        assert not warn_if_few_oars(case, 20, 30) and not caplog.text


def test_unsigned_ct_with_a_rescale_to_hu_is_accepted(real_ct, tmp_path):
    """uint16 + NIfTI scl_inter = -1024: ITK applies the rescale (float32 HU), so the pixel-type rule passes it;
    the same file without the rescale is refused (above)."""
    nib = pytest.importorskip("nibabel", reason="nibabel writes NIfTI rescale fields (test-only dependency)")
    hu = sitk.GetArrayFromImage(real_ct)[60:70].astype(np.int32)
    image = nib.Nifti1Image((hu + 1024).clip(0, 65535).astype(np.uint16).transpose(2, 1, 0),
                            affine=np.diag([-3.9, -3.9, 2.5, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    read = read_scan(tmp_path / "ct.nii.gz", "CT")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(read), hu.clip(-1024, None))

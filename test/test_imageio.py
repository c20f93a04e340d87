"""Input checks and atomic output writing, on real SimpleITK files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import InputError, OutputError
from contract.imageio import image_stem, read_image, read_scan, write_image_atomic
from contract.inputs import find_dataset_cases, find_folder_case, is_dataset_root
from test.conftest import write_image


def _volume(path, spacing=(5.0, 5.0, 5.0)):
    return write_image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), path, spacing=spacing)


def test_reads_every_supported_format(tmp_path):
    for ext in (".mha", ".nrrd", ".nii.gz", ".nii", ".mhd"):
        image = read_image(_volume(tmp_path / f"ct{ext}"), "CT")
        assert image.GetSize() == (6, 5, 4)
    assert image_stem("case_01_IMG_CT.nii.gz") == "case_01_IMG_CT"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.with_suffix(".png"), "unsupported CT file type"),
        (lambda p: write_image(np.ones((5, 6), np.int16), p), "must be a 3-D image"),
        (lambda p: write_image(np.zeros((3, 4, 5, 3), np.uint8), p), "vector or RGB"),
        (lambda p: _volume(p, spacing=(1.0, 1.0, 50.0)), "invalid voxel spacing"),
        (lambda p: _volume(p, spacing=(1.0, 1.0, 2.0)), "covers only"),
        (lambda p: write_image(np.zeros((1, 5, 6), np.int16), p), "at least 2 voxels"),
    ],
)
def test_unusable_images_are_refused_naming_the_file(tmp_path, make, message):
    path = make(tmp_path / "ct.mha")
    if path.suffix == ".png":
        path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=message) as err:
        read_scan(path, "CT")
    assert str(path) in str(err.value)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    image = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    target = tmp_path / "out" / "labels.mha"
    write_image_atomic(image, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.mha"]
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            write_image_atomic(image, locked / "labels.mha")


def test_failed_write_removes_the_temporary_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(OutputError, match="No space left on device"):
        write_image_atomic(sitk.Image([4, 4, 4], sitk.sitkUInt8), tmp_path / "labels.mha")
    assert list(tmp_path.iterdir()) == []


def test_inputs_json_names_the_folders(tmp_path):
    _volume(tmp_path / "images" / "ct-scan" / "uuid-1.mha")
    _volume(tmp_path / "images" / "mr-scan" / "uuid-2.mha")
    (tmp_path / "inputs.json").write_text(json.dumps([
        {"interface": {"slug": "ct", "relative_path": "images/ct-scan", "kind": "Image"}, "image": {}},
        {"interface": {"slug": "t1-mri", "relative_path": "images/mr-scan", "kind": "Image"}, "image": {}},
    ]))
    case = find_folder_case(tmp_path)
    assert case.ct_path.name == "uuid-1.mha" and case.mr_path.name == "uuid-2.mha" and case.case_id == "uuid-1"


def test_broken_inputs_json_is_an_input_error(tmp_path):
    """Issue 13: inputs.json is checked against its schema; a broken one is an input error (it used to be
    ignored in favour of the folder layout)."""
    _volume(tmp_path / "images" / "ct" / "a.mha")
    (tmp_path / "inputs.json").write_text("{not json")
    with pytest.raises(InputError, match="inputs.json: cannot parse"):
        find_folder_case(tmp_path)


def test_two_mrs_are_refused(tmp_path):
    _volume(tmp_path / "images" / "ct" / "a.mha")
    _volume(tmp_path / "images" / "t1-mri" / "m1.mha")
    _volume(tmp_path / "images" / "t1-mri" / "m2.nrrd")
    with pytest.raises(InputError, match="exactly one T1 MR image, found 2"):
        find_folder_case(tmp_path)


def test_empty_ct_folder_says_so(tmp_path):
    (tmp_path / "images" / "ct").mkdir(parents=True)
    (tmp_path / "images" / "ct" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"no CT image found \(unsupported files: notes.txt\)"):
        find_folder_case(tmp_path)


def test_dataset_layout_is_detected_and_listed(tmp_path):
    for case in ("case_02", "case_01"):
        _volume(tmp_path / case / f"{case}_IMG_CT.nrrd")
    _volume(tmp_path / "case_01" / "case_01_IMG_MR_T1.nrrd")
    _volume(tmp_path / "case_03" / "case_03_OAR_Brainstem.seg.nrrd")
    assert is_dataset_root(tmp_path)
    cases, problems = find_dataset_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_01", "case_02"]
    assert cases[0].mr_path is not None and cases[1].mr_path is None
    assert [p.name for p, _ in problems] == ["case_03"]


def test_a_few_nan_voxels_are_repaired_with_a_warning(tmp_path, caplog):
    data = np.linspace(-1000, 1000, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data[1, 2, 3] = np.nan
    image = read_scan(write_image(data, tmp_path / "ct.mha", spacing=(5.0, 5.0, 5.0)), "CT")
    repaired = sitk.GetArrayFromImage(image)
    assert np.isfinite(repaired).all() and repaired[1, 2, 3] == -1000
    assert "NaN/inf voxels" in caplog.text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.full((4, 5, 6), np.inf, np.float32), "120 NaN/inf voxels"),
        (np.full((4, 5, 6), 7, np.int16), "constant"),
    ],
)
def test_images_without_usable_intensities_are_refused(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        read_scan(write_image(data, tmp_path / "ct.mha", spacing=(5.0, 5.0, 5.0)), "CT")

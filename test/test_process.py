"""process.py end to end, through its command line, on real SimpleITK files: the platform contract.

Cases: a real OpenKBP CT with a T1-like MR made from it under a known rigid transform and a smaller field of view;
the same with a non-identity CT direction matrix; a CT-only run; a model whose labels are ordered differently
from the HaN-Seg table; dataset mode; bad input. The model is a random-weight nnU-Net folder (the contract does
not depend on the weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.labels import HANSEG_NAMES_BY_VALUE, HANSEG_OAR_NAMES, MAX_LABEL
from devkit.make_test_model import make_test_model
from preprocessing.synthetic_t1 import make_t1_like
from test.conftest import REPO, write_image

MR_SPACING = (1.8, 1.8, 3.0)  # coarse MR grid keeps the test quick; registration accuracy is tested elsewhere


def run_process(*args: str | Path, env: dict[str, str] | None = None, block_nnunet: bool = True):
    """Run ``process.py`` in a fresh interpreter; with ``block_nnunet`` any import of nnunetv2 fails."""
    code = "import runpy, sys; sys.argv = ['process.py'] + sys.argv[1:]; "
    if block_nnunet:
        code += "sys.modules['nnunetv2'] = None; "
    code += f"runpy.run_path({str(REPO / 'process.py')!r}, run_name='__main__')"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args), "--no-progress"], capture_output=True,
                          text=True, env=full_env, timeout=900, cwd=REPO)


def make_case(root: Path, ct: sitk.Image, with_mr: bool = True, name: str = "case_a") -> Path:
    """Write ROOT/images/ct/<name>.mha and, optionally, a T1-like MR of the head under a known rigid motion."""
    (root / "images" / "ct").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(root / "images" / "ct" / f"{name}.mha"))
    if with_mr:
        mr = make_t1_like(ct, rotation_deg=(3.0, -2.0, 4.0), translation_mm=(12.0, -20.0, 8.0),
                          spacing_mm=MR_SPACING, seed=1).image
        (root / "images" / "t1-mri").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(mr, str(root / "images" / "t1-mri" / f"{name}_t1.mha"))
    return root


def assert_contract_output(out_root: Path, ct: sitk.Image) -> np.ndarray:
    """Exactly one .mha in images/head_neck_oar, uint8, labels in 0..30, the CT's exact geometry."""
    files = sorted((out_root / "images" / "head_neck_oar").iterdir())
    assert len(files) == 1 and files[0].suffix == ".mha", files
    image = sitk.ReadImage(str(files[0]))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == ct.GetSize()
    assert image.GetSpacing() == ct.GetSpacing()
    assert image.GetOrigin() == ct.GetOrigin()
    assert image.GetDirection() == ct.GetDirection()
    labels = sitk.GetArrayFromImage(image)
    assert labels.max() <= MAX_LABEL
    assert len(np.unique(labels)) > 1, "a random model should still label something"
    return labels


def assert_failed_cleanly(result: subprocess.CompletedProcess, out_root: Path, *fragments: str) -> None:
    """Non-zero exit, the last stderr line names the file and the problem, nothing in the output folder."""
    assert result.returncode != 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    assert not out_root.exists() or not any(p.is_file() for p in out_root.rglob("*")), list(out_root.rglob("*"))


@pytest.mark.slow
def test_ct_and_mr_give_one_contract_conforming_map(real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MR registered to CT" in result.stderr
    assert_contract_output(tmp_path / "out", real_ct)
    assert (tmp_path / "out" / "images" / "head_neck_oar" / "case_a.mha").is_file()


@pytest.mark.slow
def test_non_identity_direction_ct_keeps_its_exact_geometry(real_ct, small_model, tmp_path):
    ct = sitk.Image(real_ct)
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip = np.diag([-1.0, 1.0, 1.0])
    ct.SetDirection(tuple((rotation @ flip).ravel()))
    ct.SetOrigin((120.5, -33.25, 410.0))
    root = make_case(tmp_path / "in", ct)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_contract_output(tmp_path / "out", ct)


@pytest.mark.slow
def test_ct_only_run_falls_back_with_a_warning(real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct, with_mr=False)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicting from the CT alone" in result.stderr
    assert_contract_output(tmp_path / "out", real_ct)


@pytest.mark.slow
def test_environment_variables_set_the_roots_and_label_order_is_mapped_by_name(real_ct, tmp_path):
    """A model listing labels in reversed order must still write HaN-Seg values: compared with the same weights
    under the HaN-Seg order, every voxel carries the same organ value."""
    in_root = make_case(tmp_path / "in", real_ct[:, :, 40:100], with_mr=False)
    outputs = {}
    for order, names in (("table", HANSEG_OAR_NAMES), ("reversed", tuple(reversed(HANSEG_OAR_NAMES)))):
        model = make_test_model(tmp_path / f"model_{order}", folds=1, label_names=names,
                                spacing_zyx=(6.0, 8.0, 8.0), seed=3)
        out_root = tmp_path / f"out_{order}"
        env = {"HANSEG_INPUT_DIR": str(in_root), "HANSEG_OUTPUT_DIR": str(out_root), "HANSEG_MODEL_DIR": str(model)}
        result = run_process("--no-tta", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[order] = assert_contract_output(out_root, real_ct[:, :, 40:100])
    # Same weights, so the same output channel wins; in the reversed model channel k means organ 31 - k.
    table, reversed_ = outputs["table"], outputs["reversed"]
    expected = np.where(table > 0, MAX_LABEL + 1 - table, 0)
    np.testing.assert_array_equal(reversed_, expected)


def test_missing_ct_is_refused(small_model, tmp_path):
    (tmp_path / "in" / "images" / "t1-mri").mkdir(parents=True)
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(tmp_path / "in" / "images" / "ct"), "does not exist")


def test_two_cts_are_refused(small_model, tmp_path):
    ct = sitk.Image([8, 8, 8], sitk.sitkInt16)
    for name in ("a.mha", "b.nrrd"):
        write_image(sitk.GetArrayFromImage(ct), tmp_path / "in" / "images" / "ct" / name)
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", "images/ct", "exactly one CT image, found 2")


def test_unreadable_ct_is_refused(small_model, tmp_path):
    bad = tmp_path / "in" / "images" / "ct" / "broken.mha"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"ObjectType = Image\nNDims = 3\nthis is not an image\n")
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(bad), "cannot read CT image")


def test_2d_ct_is_refused(small_model, tmp_path):
    path = tmp_path / "in" / "images" / "ct" / "slice.mha"
    path.parent.mkdir(parents=True)
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(path))
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(path), "must be a 3-D image")


def test_unreadable_mr_is_refused(real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    bad = root / "images" / "t1-mri" / "mr.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x1f\x8b not really gzip")
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(bad), "cannot read T1 MR image")


def test_missing_model_folder_is_refused(real_ct, tmp_path):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", tmp_path / "nothing")
    assert result.returncode == 4
    assert_failed_cleanly(result, tmp_path / "out", str(tmp_path / "nothing"), "model folder does not exist")


@pytest.mark.slow
def test_dataset_mode_finishes_good_cases_and_reports_the_bad_one(real_ct, small_model, tmp_path):
    root = tmp_path / "dataset"
    ct = real_ct[:, :, 50:90]
    for case in ("case_01", "case_03"):
        write_image(sitk.GetArrayFromImage(ct), root / case / f"{case}_IMG_CT.nrrd", like=ct)
    broken = root / "case_02" / "case_02_IMG_CT.nrrd"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00\x01")
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 2, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_01.mha", "case_03.mha"]
    assert "case_02" in result.stderr.strip().splitlines()[-1] and str(broken) in result.stderr
    assert "2 of 3 cases written" in result.stderr


def test_qa_option_writes_a_picture_and_volumes_beside_the_contract_output(real_ct, small_model, tmp_path):
    ct = real_ct[:, :, 50:62]
    root = make_case(tmp_path / "in", ct, with_mr=False)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0", "--qa", tmp_path / "qa")
    assert result.returncode == 0, result.stderr[-3000:]
    labels = assert_contract_output(tmp_path / "out", ct)  # the QA folder is outside the output contract
    # the run record goes next to the QA output (no MR: no CT->MR transform file)
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == ["case_a.record.json", "case_a_qa.png",
                                                                   "case_a_volumes.json"]
    assert (tmp_path / "qa" / "case_a_qa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    volumes = json.loads((tmp_path / "qa" / "case_a_volumes.json").read_text())["volumes_ml"]
    present = {HANSEG_NAMES_BY_VALUE[int(v)] for v in np.unique(labels) if v}
    assert {name for name, ml in volumes.items() if ml > 0} == present

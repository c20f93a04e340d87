"""Axis orientation: inputs are permuted to the model's training orientation, labels land on the right anatomy.

The slow test runs the SHIPPED (trained) model on a real labelled OpenKBP case stored in three axis orders (as
read, x flipped, and axes permuted with flips) and checks that each organ lands where the clinician drew it, and
that the same copy run with ``--as-stored`` (nnU-Net's behaviour: direction ignored) puts the left parotid on the
right one (the hazard this module removes) -- unless the model merges left and right and the pipeline splits them
by the patient's mid-sagittal plane (test_laterality.py), which puts it on the left even then.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import ModelFolderError
from contract.labels import hanseg_value
from devkit.data import openkbp_case
from model.model_folder import load_model_folder
from preprocessing.orientation import (
    DEFAULT_ORIENTATION,
    check_orientation_code,
    labels_to_original_orientation,
    orientation_of,
    reorient,
)
from test.conftest import OPENKBP, REPO


def stored_in_other_axis_order(image: sitk.Image, permutation: tuple[int, int, int],
                               flips: tuple[bool, bool, bool]) -> sitk.Image:
    """The same physical image stored with another axis order, built with numpy only (independent of ITK's
    reorientation): new image axis i (x, y, z) is old axis ``permutation[i]``, reversed where ``flips[i]``.

    ``image`` must have an identity direction.
    """
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    array_xyz = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    new_xyz = array_xyz.transpose(permutation)
    new_xyz = new_xyz[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    old_size = image.GetSize()
    corner = [old_size[permutation[i]] - 1 if flips[i] else 0 for i in range(3)]
    old_index = [0, 0, 0]
    for i in range(3):
        old_index[permutation[i]] = corner[i]
    direction = np.zeros((3, 3))
    for i in range(3):
        direction[permutation[i], i] = -1.0 if flips[i] else 1.0
    out = sitk.GetImageFromArray(np.ascontiguousarray(new_xyz.transpose(2, 1, 0)))
    out.SetSpacing([image.GetSpacing()[permutation[i]] for i in range(3)])
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(image.TransformIndexToPhysicalPoint(old_index))
    return out


def _same_voxels_in_space(a: sitk.Image, b: sitk.Image, n: int = 50) -> None:
    """Values of ``a`` and ``b`` agree at ``n`` random physical voxel centres of ``a``."""
    rng = np.random.default_rng(0)
    for _ in range(n):
        index = [int(rng.integers(0, s)) for s in a.GetSize()]
        point = a.TransformIndexToPhysicalPoint(index)
        other = b.TransformPhysicalPointToIndex(point)
        assert a[index] == b[other], (index, other)


AXIS_ORDERS = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize(("permutation", "flips"), AXIS_ORDERS, ids=lambda v: "".join(map(str, map(int, v))))
def test_every_axis_order_is_brought_to_the_model_orientation_and_back(permutation, flips):
    """All 48 axis orders: the model sees the identical array, and labels go back voxel for voxel."""
    rng = np.random.default_rng(1)
    reference = sitk.GetImageFromArray(rng.integers(0, 1000, size=(5, 6, 7)).astype(np.int16))  # z, y, x
    reference.SetSpacing((0.8, 1.1, 2.5))
    reference.SetOrigin((-10.0, 20.0, 5.0))
    stored = stored_in_other_axis_order(reference, permutation, flips)
    _same_voxels_in_space(reference, stored)

    oriented = reorient(stored, DEFAULT_ORIENTATION)
    assert orientation_of(oriented) == "LPS"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(oriented), sitk.GetArrayFromImage(reference))
    assert np.allclose(oriented.GetSpacing(), reference.GetSpacing())
    assert np.allclose(oriented.GetOrigin(), reference.GetOrigin())

    labels_on_model_grid = (sitk.GetArrayFromImage(oriented) % 31).astype(np.uint8)
    back = labels_to_original_orientation(labels_on_model_grid, oriented, stored)
    np.testing.assert_array_equal(back, (sitk.GetArrayFromImage(stored) % 31).astype(np.uint8))


def test_image_already_in_the_model_orientation_is_not_touched():
    image = sitk.Image([4, 5, 6], sitk.sitkInt16)
    assert reorient(image, "LPS") is image
    labels = np.zeros((6, 5, 4), np.uint8)
    assert labels_to_original_orientation(labels, image, image) is labels


def test_oblique_direction_uses_the_closest_axis_order():
    """A CT tilted by 10 degrees about z and stored with x flipped: axes permuted/flipped to the closest LPS."""
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4))
    image.SetDirection((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel().tolist())
    assert orientation_of(image) == "RPS"
    oriented = reorient(image, "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(oriented), sitk.GetArrayFromImage(image)[:, :, ::-1])
    _same_voxels_in_space(image, oriented)


@pytest.mark.parametrize("code", ["LPX", "LLS", "LP", "", "RASS"])
def test_invalid_orientation_codes_are_refused(code):
    with pytest.raises(ValueError, match="invalid orientation code"):
        check_orientation_code(code)


def test_model_folder_orientation_defaults_to_lps_and_bad_codes_name_the_file(small_model, tmp_path):
    import json
    import shutil

    assert load_model_folder(small_model).orientation == "LPS"
    copy = tmp_path / "model"
    shutil.copytree(small_model, copy)
    dataset = json.loads((copy / "dataset.json").read_text())
    (copy / "dataset.json").write_text(json.dumps({**dataset, "orientation": "ras"}))
    assert load_model_folder(copy).orientation == "RAS"
    (copy / "dataset.json").write_text(json.dumps({**dataset, "orientation": "up"}))
    with pytest.raises(ModelFolderError, match="dataset.json.*invalid orientation code"):
        load_model_folder(copy)


# --------------------------------------------------------------------------------------------- real labelled case
HELD_OUT_CASE = "pt_201"  # an OpenKBP validation-pats case the shipped model never trained on
OPENKBP_NAMES = {1: "Brainstem", 2: "SpinalCord", 3: "Parotid_R", 4: "Parotid_L", 5: "Esophagus_S", 6: "Larynx_SG",
                 7: "Bone_Mandible"}
"""OpenKBP label values (../shared/data/openkbp_hn_ct/README.md) -> HaN-Seg names (the shipped model's mapping)."""


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def _predict(ct: sitk.Image, tmp_path: Path, name: str, *extra: str) -> np.ndarray:
    """Run process.py with the shipped model on ``ct`` (CT only; one fold, no test-time mirroring: orientation
    handling is the same for every fold and pass, at a quarter of the time), check the output geometry, return the
    labels."""
    from test.test_process import assert_contract_output, make_case, run_process

    root = make_case(tmp_path / f"in_{name}", ct, with_mr=False)
    out = tmp_path / f"out_{name}"
    result = run_process("--input", root, "--output", out, "--model", REPO / "weights", "--folds", "0", "--no-tta",
                         *extra,
                         env={"HANSEG_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return assert_contract_output(out, ct)


@pytest.mark.slow
def test_labels_land_on_the_right_anatomy_whatever_the_storage_order(tmp_path):
    case = openkbp_case(HELD_OUT_CASE) or OPENKBP / HELD_OUT_CASE  # bundled in test/data too
    if not (case / "ct.nii.gz").is_file() or not (REPO / "weights" / "plans.json").is_file():
        pytest.skip("needs the shipped weights (weights/plans.json)")
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    truth_openkbp = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "oar_labels.nii.gz")))
    truth = np.zeros_like(truth_openkbp)
    for value, name in OPENKBP_NAMES.items():
        truth[truth_openkbp == value] = hanseg_value(name)

    reference = _predict(ct, tmp_path, "as_read")
    for name, permutation, flips in [("x_flipped", (0, 1, 2), (True, False, False)),
                                     ("permuted", (2, 0, 1), (False, True, True))]:
        copy = stored_in_other_axis_order(ct, permutation, flips)
        labels = _predict(copy, tmp_path, name)
        # the same prediction, voxel for voxel, brought back to the original storage order
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(copy)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(reorient(label_image, "LPS")), reference)

    parotid_l, parotid_r = hanseg_value("Parotid_L"), hanseg_value("Parotid_R")
    for name in OPENKBP_NAMES.values():
        value = hanseg_value(name)
        # every organ overlaps where it was drawn (measured on pt_201, CT only: Esophagus_S 0.11, others higher)
        assert _dice(reference == value, truth == value) > 0.05, name
    for mine, other in ((parotid_l, parotid_r), (parotid_r, parotid_l)):  # lateralised: on its own side only
        assert _dice(reference == mine, truth == mine) > 0.5
        assert _dice(reference == mine, truth == other) < 0.05

    # nnU-Net's behaviour (direction ignored) on the x-flipped copy
    copy = stored_in_other_axis_order(ct, (0, 1, 2), (True, False, False))
    as_stored = _predict(copy, tmp_path, "as_stored", "--as-stored")[:, :, ::-1]  # back to the original voxel order
    if json.loads((REPO / "weights" / "dataset.json").read_text()).get("lr_split"):
        # a merged-L/R model: the sides come from physical coordinates (preprocessing.laterality), so even a network
        # fed the mirrored array puts the left parotid on the patient's left
        assert _dice(as_stored == parotid_l, truth == parotid_l) > 0.5
        assert _dice(as_stored == parotid_l, truth == parotid_r) < 0.05
    else:  # a model that predicts each side itself: the left parotid label lands on the right one
        assert _dice(as_stored == parotid_l, truth == parotid_r) > 0.5
        assert _dice(as_stored == parotid_l, truth == parotid_l) < 0.05

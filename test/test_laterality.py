"""Merged left/right labels are split by the patient's mid-sagittal plane (preprocessing/laterality.py).

Pins: the side comes from physical LPS coordinates (+x = patient's left), so the split is the same whatever the
storage order of the CT; the estimated midline separates the real clinical parotid contours of OpenKBP cases; the
whole pipeline with a merged-label model folder puts every Parotid_L voxel on the patient's left on flipped and
permuted CTs; and a model folder whose merged label cannot be split is refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.labels import check_lr_split, hanseg_value, lateral_splits, model_to_hanseg_lookup
from devkit.data import SHARED_SKIP_REASON, openkbp_case
from preprocessing.laterality import midline_profile, physical_points, split_left_right
from preprocessing.orientation import reorient
from test.conftest import OPENKBP
from test.test_orientation import stored_in_other_axis_order

LEFT, RIGHT = hanseg_value("Parotid_L"), hanseg_value("Parotid_R")


def phantom(centre_x_mm: float = 37.0) -> tuple[sitk.Image, np.ndarray]:
    """A 'patient' (water ellipse in air) centred at x = ``centre_x_mm`` and two merged-label blobs 40 mm either side.

    Returns the CT (identity direction, 2x2x3 mm) and the merged label map (z, y, x) holding the LEFT value.
    """
    shape = (20, 60, 80)
    spacing = (2.0, 2.0, 3.0)
    origin = (centre_x_mm - 80.0, -60.0, 100.0)
    z, y, x = np.indices(shape)
    px, py = origin[0] + x * spacing[0], origin[1] + y * spacing[1]
    body = ((px - centre_x_mm) / 70.0) ** 2 + (py / 50.0) ** 2 <= 1.0
    ct = sitk.GetImageFromArray(np.where(body, 20, -1000).astype(np.int16))
    ct.SetSpacing(spacing)
    ct.SetOrigin(origin)
    labels = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        blob = (np.abs(px - (centre_x_mm + side * 40.0)) < 10) & (np.abs(py) < 10) & (z > 5) & (z < 15)
        labels[blob] = LEFT
    return ct, labels


def test_each_merged_voxel_gets_the_side_of_the_body_midline_it_lies_on():
    ct, merged = phantom()
    labels = split_left_right(merged.copy(), ct, [(LEFT, RIGHT)])
    pts = physical_points(ct, np.argwhere(labels == LEFT))
    assert len(pts) > 100 and (pts[:, 0] > 37.0).all()  # LPS: larger x = patient's left
    pts = physical_points(ct, np.argwhere(labels == RIGHT))
    assert len(pts) > 100 and (pts[:, 0] < 37.0).all()
    assert (labels > 0).sum() == (merged > 0).sum()  # nothing lost, nothing added
    _, mid = midline_profile(ct)
    np.testing.assert_allclose(mid, 37.0, atol=2.0)


@pytest.mark.parametrize("permutation, flips", [((0, 1, 2), (True, False, False)), ((2, 0, 1), (False, True, True)),
                                                ((1, 0, 2), (True, True, True))])
def test_the_split_does_not_depend_on_how_the_ct_is_stored(permutation, flips):
    ct, merged = phantom()
    reference = split_left_right(merged.copy(), ct, [(LEFT, RIGHT)])
    merged_image = sitk.GetImageFromArray(merged)
    merged_image.CopyInformation(ct)
    ct_copy = stored_in_other_axis_order(ct, permutation, flips)
    merged_copy = sitk.GetArrayFromImage(stored_in_other_axis_order(merged_image, permutation, flips))
    split_copy = sitk.GetImageFromArray(split_left_right(merged_copy, ct_copy, [(LEFT, RIGHT)]))
    split_copy.CopyInformation(ct_copy)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reorient(split_copy, "LPS")), reference)


@pytest.mark.parametrize("case", ["pt_4", "pt_201", "pt_13"])
def test_the_estimated_midline_separates_the_clinical_parotid_contours(case):
    """On real OpenKBP anatomy: every voxel of the clinicians' left parotid is split to the left and vice versa."""
    path = openkbp_case(case) or OPENKBP / case  # pt_4 and pt_201 are bundled in test/data
    if not (path / "oar_labels.nii.gz").is_file():
        pytest.skip(f"{SHARED_SKIP_REASON}: OpenKBP case {case}")
    ct = sitk.ReadImage(str(path / "ct.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(path / "oar_labels.nii.gz")))  # 3 RightParotid, 4 LeftParotid
    merged = np.where(np.isin(truth, (3, 4)), LEFT, 0).astype(np.uint8)
    split = split_left_right(merged, ct, [(LEFT, RIGHT)])
    assert ((split == LEFT) == (truth == 4)).mean() == 1.0
    assert ((split == RIGHT) == (truth == 3)).mean() == 1.0


def test_a_label_map_off_the_ct_grid_is_refused():
    ct, merged = phantom()
    with pytest.raises(ValueError, match="not on the CT grid"):
        split_left_right(merged[:-1], ct, [(LEFT, RIGHT)])


def test_lr_split_declarations_are_checked():
    labels = {"background": 0, "Parotid": 1, "Brainstem": 2}
    assert model_to_hanseg_lookup(labels, {"Parotid": ["Parotid_L", "Parotid_R"]}) == [0, LEFT, 5]
    assert lateral_splits(labels, {"Parotid": ["Parotid_L", "Parotid_R"]}) == [(LEFT, RIGHT)]
    with pytest.raises(ValueError, match="must be declared in dataset.json 'lr_split'"):
        model_to_hanseg_lookup(labels)
    with pytest.raises(ValueError, match="not a \\[left, right\\] pair"):
        check_lr_split({"Parotid": ["Parotid_R", "Parotid_L"]})  # right first: the sides would be swapped
    with pytest.raises(ValueError, match="not a \\[left, right\\] pair"):
        check_lr_split({"Parotid": ["Parotid_L", "Brainstem"]})
    with pytest.raises(ValueError, match="itself a HaN-Seg OAR name"):
        check_lr_split({"Brainstem": ["Parotid_L", "Parotid_R"]})
    with pytest.raises(ValueError, match="named twice"):
        model_to_hanseg_lookup({"background": 0, "Parotid": 1, "Parotid_L": 2}, {"Parotid": ["Parotid_L", "Parotid_R"]})


# ------------------------------------------------------------------------------------------ whole pipeline
def merged_label_model(tmp_path: Path, lr_split: dict | None) -> Path:
    from devkit.make_test_model import make_test_model

    folder = make_test_model(tmp_path / "merged_model", folds=1, label_names=("Brainstem", "Parotid"),
                             channel_names=("CT",), spacing_zyx=(6.0, 8.0, 8.0), mirror_axes=(2,))
    dataset = json.loads((folder / "dataset.json").read_text())
    if lr_split is not None:
        dataset["lr_split"] = lr_split
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


@pytest.mark.slow
def test_pipeline_puts_every_parotid_l_voxel_on_the_patients_left_whatever_the_storage(real_ct, tmp_path):
    from test.test_process import assert_contract_output, make_case, run_process

    model = merged_label_model(tmp_path, {"Parotid": ["Parotid_L", "Parotid_R"]})
    outputs = {}
    for name, permutation, flips in [("as_read", (0, 1, 2), (False, False, False)),
                                     ("x_flipped", (0, 1, 2), (True, False, False)),
                                     ("permuted", (2, 0, 1), (False, True, True))]:
        ct = stored_in_other_axis_order(real_ct, permutation, flips)
        root = make_case(tmp_path / f"in_{name}", ct, with_mr=False)
        result = run_process("--input", root, "--output", tmp_path / f"out_{name}", "--model", model,
                             env={"HANSEG_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        labels = assert_contract_output(tmp_path / f"out_{name}", ct)
        z_mid, x_mid = midline_profile(ct)
        for value, on_left in ((LEFT, True), (RIGHT, False)):
            pts = physical_points(ct, np.argwhere(labels == value))
            assert len(pts) > 50, f"{name}: the random model labels the merged parotid on both sides"
            left_of_midline = pts[:, 0] > np.interp(pts[:, 2], z_mid, x_mid)
            assert left_of_midline.all() if on_left else not left_of_midline.any(), name
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(ct)
        outputs[name] = sitk.GetArrayFromImage(reorient(image, "LPS"))
    np.testing.assert_array_equal(outputs["x_flipped"], outputs["as_read"])
    np.testing.assert_array_equal(outputs["permuted"], outputs["as_read"])


def test_a_merged_label_model_without_declared_pairs_is_refused(real_ct, tmp_path):
    from test.test_process import assert_failed_cleanly, make_case, run_process

    model = merged_label_model(tmp_path, None)
    root = make_case(tmp_path / "in", real_ct, with_mr=False)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", model)
    assert result.returncode == 4
    assert_failed_cleanly(result, tmp_path / "out", "dataset.json", "'Parotid'", "lr_split")

"""Largest-component post-processing: the function, the model folder's declaration, and the pipeline applying it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import hanseg
from contract.errors import ModelFolderError
from contract.labels import hanseg_value
from model.model_folder import load_model_folder
from preprocessing.components import keep_largest_components, largest_component

pytestmark = pytest.mark.usefixtures("one_thread")


def test_only_the_largest_component_of_each_listed_label_is_kept():
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 2:8, 2:8] = 3  # big blob of 3
    labels[2:4, 15:17, 15:17] = 3  # small blob of 3 (8 voxels)
    labels[7:9, 2:4, 2:4] = 5  # two blobs of 5, not listed
    labels[7:9, 15:17, 2:4] = 5
    before = labels.copy()
    out, removed = keep_largest_components(labels, [3, 7])  # 7 is absent: skipped
    assert np.array_equal(labels, before), "the input map must not be modified"
    assert removed == {3: 8}
    assert ndimage.label(out == 3)[1] == 1 and (out == 3).sum() == 4 * 6 * 6
    assert np.array_equal(out == 5, before == 5)
    assert np.array_equal(out[(before != 3)], before[(before != 3)])


def test_diagonal_neighbours_are_separate_components():
    """Face connectivity, as nnU-Net's post-processing: voxels touching only by an edge are two components."""
    binary = np.zeros((1, 3, 3), bool)
    binary[0, 0, 0] = binary[0, 1, 1] = binary[0, 2, 2] = True
    binary[0, 2, 1] = True  # joins (1,1) and (2,2): a 3-voxel component, (0,0) alone
    assert largest_component(binary).sum() == 3


def _with_postprocessing(model: Path, tmp_path: Path, names: object) -> Path:
    folder = tmp_path / "model_pp"
    shutil.copytree(model, folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["largest_component"] = names
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


@pytest.mark.parametrize("names, problem", [
    (["Liver"], "does not output"),  # not an OAR of the model (nor of HaN-Seg)
    (["Brainstem", "Parotid"], "does not output"),  # a merged training name, not an output OAR
    ("Brainstem", "must be a list"),
])
def test_a_postprocessing_list_the_model_cannot_honour_is_a_model_folder_error(small_model, tmp_path, names,
                                                                               problem):
    folder = _with_postprocessing(small_model, tmp_path, names)
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(folder)
    assert "dataset.json" in str(err.value) and problem in str(err.value)


def test_segment_keeps_the_largest_component_of_the_declared_oars(small_model, real_ct, tmp_path):
    """The random-weight model scatters every label; with the declaration, each listed OAR is one component and
    the map equals the post-processing applied to the undeclared model's map. Other OARs are untouched."""
    labels = json.loads((small_model / "dataset.json").read_text())["labels"]
    listed = [n for n in labels if n != "background"][:2]
    folder = _with_postprocessing(small_model, tmp_path, listed)
    settings = hanseg.Settings(folds=("0",), use_mirroring=False, progress=False)
    ct = real_ct[:, :, 40:80]
    plain = hanseg.segment(ct, None, hanseg.Model.load(small_model, settings))
    post = hanseg.segment(ct, None, hanseg.Model.load(folder, settings))
    raw = sitk.GetArrayFromImage(plain.labels)
    got = sitk.GetArrayFromImage(post.labels)
    values = [hanseg_value(n) for n in listed]
    assert any(ndimage.label(raw == v)[1] > 1 for v in values), "test premise: the raw map has scattered OARs"
    expected, removed = keep_largest_components(raw, values)
    assert np.array_equal(got, expected)
    for v in values:
        assert ndimage.label(got == v)[1] <= 1
    assert post.record["largest_component"] == {
        "oars": listed, "removed_voxels": {n: removed[hanseg_value(n)] for n in listed if hanseg_value(n) in removed}}
    assert plain.record["largest_component"] == {"oars": [], "removed_voxels": {}}

"""Head-and-neck crop (preprocessing.head_neck_crop): the box holds every OAR of real cases, it is declared by the
model folder, and it is undone exactly: labels inside the box are identical with and without the crop, background
outside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import ModelFolderError
from devkit.make_test_model import make_test_model
from preprocessing.channels import ChannelPlan, ChannelRecipe
from preprocessing.head_neck_crop import CropSettings, crop_image, head_neck_box, parse_crop, uncrop_labels
from test.conftest import OPENKBP, openkbp_ct_path

CT_WINDOWS = ChannelPlan((ChannelRecipe("CT_soft", "CT", (40.0, 400.0)),
                          ChannelRecipe("CT_bone", "CT", (700.0, 3000.0))))
CROP = {"margin_mm": 20.0, "max_height_mm": 350.0}
VOXELWISE = {"kernel_sizes": [[1, 1, 1]] * 2, "strides": [[1, 1, 1]] * 2, "norm_op": None, "norm_op_kwargs": None}
"""1x1x1 convolutions, no striding, no normalisation layer: every output voxel depends on its input voxel only, so
tiling (which the crop changes) cannot change the labels."""


@pytest.mark.parametrize("case", ["pt_4", "pt_17", "pt_100", "pt_236"])
def test_box_holds_every_oar_and_cuts_the_rest(case):
    ct = sitk.ReadImage(str(openkbp_ct_path(case)))
    oars = sitk.GetArrayFromImage(sitk.ReadImage(str(OPENKBP / case / "oar_labels.nii.gz")))
    box = head_neck_box(ct, CropSettings(**CROP))
    inside = np.zeros(oars.shape, bool)
    inside[box] = True
    assert oars[~inside].max(initial=0) == 0, f"{case}: OAR voxels outside the box {box}"
    assert inside.sum() < 0.7 * inside.size, f"{case}: the box {box} keeps almost everything"


def test_crop_and_uncrop_are_exact(real_ct):
    box = head_neck_box(real_ct)
    cropped = crop_image(real_ct, box)
    arr = sitk.GetArrayViewFromImage(real_ct)
    assert np.array_equal(sitk.GetArrayViewFromImage(cropped), arr[box])
    z, y, x = box
    assert cropped.TransformIndexToPhysicalPoint((0, 0, 0)) == real_ct.TransformIndexToPhysicalPoint(
        (x.start, y.start, z.start))
    labels = (arr[box] > 0).astype(np.uint8)
    back = uncrop_labels(labels, box, arr.shape)
    assert np.array_equal(back[box], labels) and back.sum() == labels.sum()


@pytest.mark.parametrize("raw", [{"margin_mm": "x"}, {"depth": 3}, {"margin_mm": -1.0}, [1, 2]])
def test_malformed_crop_declaration_is_a_model_folder_error(raw):
    with pytest.raises(ModelFolderError, match="head_neck_crop"):
        parse_crop({"head_neck_crop": raw}, Path("m/dataset.json"))
    assert parse_crop({}) is None and parse_crop({"head_neck_crop": True}) == CropSettings()


def _voxelwise_model(folder: Path, ct: sitk.Image, crop: bool) -> Path:
    extra = {**CT_WINDOWS.dataset_json_keys(), **({"head_neck_crop": CROP} if crop else {})}
    model = make_test_model(folder, folds=1, channel_names=[r.name for r in CT_WINDOWS.recipes],
                            spacing_zyx=ct.GetSpacing()[::-1], patch_size=(64, 128, 128), features=(8, 8),
                            mirror_axes=None, dataset_extra=extra, arch_overrides=VOXELWISE)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization", "NoNormalization"]
    (model / "plans.json").write_text(json.dumps(plans))
    return model


def test_crop_is_undone_exactly_and_labels_match_without_it(real_ct, tmp_path, one_thread):
    """Same voxel-wise weights, model folders with and without ``head_neck_crop``, through hanseg.segment.

    Exact: the cropped run equals the uncropped model run on the CT cut to the box, pasted back voxel for voxel,
    background outside (the crop is undone exactly). With and without the crop on the whole CT (a case whose OARs
    are all inside the box) the labels inside the box agree except where fp16 logit accumulation over a different
    tiling flips a near-tie (nnU-Net accumulates in fp16 too): at most 0.1 % of the voxels."""
    from hanseg.api import Model, segment
    from hanseg.settings import Settings

    box = head_neck_box(real_ct, CropSettings(**CROP))
    inputs = {"full": real_ct, "cut": crop_image(real_ct, box)}
    out = {}
    for crop, name in ((False, "full"), (True, "full"), (False, "cut")):
        model = Model.load(_voxelwise_model(tmp_path / f"model_{crop}_{name}", real_ct, crop),
                           Settings(device="cpu", progress=False))
        out[crop, name] = sitk.GetArrayFromImage(segment(inputs[name], None, model).labels)
    inside = np.zeros(out[False, "full"].shape, bool)
    inside[box] = True
    oars = sitk.GetArrayFromImage(sitk.ReadImage(str(openkbp_ct_path("pt_4").parent / "oar_labels.nii.gz")))
    assert oars[~inside].max(initial=0) == 0  # a case where every OAR is inside the box
    assert len(np.unique(out[False, "full"][inside])) >= 4  # the random voxel-wise model uses several labels

    assert np.array_equal(out[True, "full"], uncrop_labels(out[False, "cut"], box, inside.shape))
    differ = int(np.count_nonzero(out[True, "full"][inside] != out[False, "full"][inside]))
    print(f"with vs without the crop: {differ} of {int(inside.sum())} voxels in the box differ")
    assert differ <= 1e-3 * inside.sum()
    assert out[True, "full"][~inside].max(initial=0) == 0

"""Our predictor against nnU-Net v2's own ``nnUNetPredictor`` on the same model folder and inputs.

The model folder is built by the test (small PlainConvUNet, valid plans with CT + T1 channels, random weights,
2 folds); the input is a crop of a real OpenKBP CT with a T1-like channel already on the CT grid. Bar: per-label
Dice >= 0.999 for every label either predictor uses (../shared/docs/NNUNET.md, "What same predictions means").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from contract.labels import HANSEG_OAR_NAMES, model_to_hanseg_lookup
from devkit.make_test_model import make_test_model
from devkit.nnunet_reference import nnunet_predict, per_label_dice
from model.model_folder import load_model_folder
from model.predictor import Predictor, PredictorOptions
from preprocessing.synthetic_t1 import hu_to_t1
from test.conftest import write_image

pytest.importorskip("nnunetv2", reason="nnunetv2 2.8.1 is installed for tests only (requirements-test.txt)")

DICE_BAR = 0.999


@pytest.fixture(scope="module")
def case_files(real_ct: sitk.Image, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """CT crop (z 40:100, y/x 20:110 of pt_4) and a T1-like channel on the same grid, zero outside an MR FOV."""
    ct = real_ct[20:110, 20:110, 40:100]
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    t1 = hu_to_t1(hu)
    t1[:8] = 0  # the MR covers less than the CT: zeros below its field of view, as after registration
    folder = tmp_path_factory.mktemp("case")
    return (write_image(hu.astype(np.int16), folder / "case_0000.nii.gz", like=ct),
            write_image(t1, folder / "case_0001.nii.gz", like=ct))


def _ours(model_dir: Path, files: tuple[Path, Path], mirroring: bool) -> np.ndarray:
    model = load_model_folder(model_dir)
    predictor = Predictor(model, torch.device("cpu"), PredictorOptions(use_mirroring=mirroring, progress=False))
    images = [sitk.ReadImage(str(f)) for f in files]
    return predictor.predict([sitk.GetArrayFromImage(i) for i in images], images[0].GetSpacing())


def _compare(model_dir: Path, files: tuple[Path, Path], tmp_path: Path, mirroring: bool) -> dict[int, float]:
    ours = _ours(model_dir, files, mirroring)
    reference_indices = nnunet_predict(model_dir, files, tmp_path / "nnunet", folds=(0, 1), use_mirroring=mirroring)
    lookup = np.asarray(model_to_hanseg_lookup(load_model_folder(model_dir).labels), dtype=np.uint8)
    reference = lookup[reference_indices]
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    used = sorted(set(np.unique(ours)) | set(np.unique(reference)) - {0})
    assert len(used) >= 5, f"the random model should use many labels, used {used}"
    return per_label_dice(ours, reference, used)


@pytest.mark.slow
@pytest.mark.parametrize("mirroring", [False, True], ids=["no-mirroring", "mirroring"])
def test_3d_model_matches_nnunet(case_files, tmp_path, mirroring):
    model_dir = make_test_model(tmp_path / "model", folds=2, spacing_zyx=(3.0, 4.0, 4.0), patch_size=(32, 48, 48))
    dice = _compare(model_dir, case_files, tmp_path, mirroring)
    assert min(dice.values()) >= DICE_BAR, dice


@pytest.mark.slow
def test_shuffled_labels_and_separate_z_resampling_match_nnunet(case_files, tmp_path):
    """Labels in reversed HaN-Seg order (mapped back by name) and a model spacing anisotropic enough (8 mm vs
    2.5 mm) that both predictors resample the coarse axis separately, with padding on z (12 slices < patch 16)."""
    model_dir = make_test_model(
        tmp_path / "model", folds=2, label_names=tuple(reversed(HANSEG_OAR_NAMES)),
        spacing_zyx=(12.0, 3.5, 3.5), patch_size=(16, 64, 64), mirror_axes=(1, 2),
    )
    dice = _compare(model_dir, case_files, tmp_path, mirroring=True)
    assert min(dice.values()) >= DICE_BAR, dice


@pytest.mark.slow
def test_2d_model_matches_nnunet(case_files, tmp_path):
    model_dir = make_test_model(
        tmp_path / "model", folds=2, spacing_zyx=(2.5, 4.0, 4.0), patch_size=(64, 64), features=(8, 16, 32),
        mirror_axes=(0, 1),
    )
    dice = _compare(model_dir, case_files, tmp_path, mirroring=True)
    assert min(dice.values()) >= DICE_BAR, dice


@pytest.mark.slow
def test_seed_recipe_three_channel_model_matches_nnunet(real_ct, tmp_path):
    """A model folder declaring the seed recipe (CT soft window, CT bone window, T1; rigid MR stage). Ours: the
    case's CT + MR through prepare_case_channels (registration and channel building, as hanseg.segment runs them)
    and our predictor; nnU-Net 2.8.1: the three channel files of those arrays. Also: the per-stage transform that
    process.py writes beside the QA output reproduces the T1 channel."""
    from contract.imageio import read_image, read_scan
    from preprocessing.channels import MR_USED, SEED_RECIPE_PLAN, ChannelPlan, prepare_case_channels, write_transforms
    from test.test_process import make_case

    plan = ChannelPlan(SEED_RECIPE_PLAN.recipes, "rigid")
    model_dir = make_test_model(tmp_path / "model", folds=2, channel_names=[r.name for r in plan.recipes],
                                spacing_zyx=(6.0, 8.0, 8.0), dataset_extra=plan.dataset_json_keys())
    model = load_model_folder(model_dir)
    assert model.channel_plan == plan
    case_root = make_case(tmp_path / "in", real_ct)
    ct_path = case_root / "images" / "ct" / "case_a.mha"
    mr_path = case_root / "images" / "t1-mri" / "case_a_t1.mha"
    ct = read_scan(ct_path, "CT")
    built = prepare_case_channels(ct, read_image(mr_path, "T1 MR"), model.channel_plan)
    assert built.decision.status == MR_USED
    predictor = Predictor(model, torch.device("cpu"), PredictorOptions(use_mirroring=True, progress=False))
    ours = predictor.predict(built.arrays, ct.GetSpacing())

    files = [write_image(np.asarray(a), tmp_path / "channels" / f"case_{i:04d}.nii.gz", like=ct)
             for i, a in enumerate(built.arrays)]
    reference_indices = nnunet_predict(model_dir, files, tmp_path / "nnunet", folds=(0, 1), use_mirroring=True)
    lookup = np.asarray(model_to_hanseg_lookup(model.labels), dtype=np.uint8)
    reference = lookup[reference_indices]
    used = sorted(set(np.unique(ours)) | set(np.unique(reference)) - {0})
    assert len(used) >= 5, used
    dice = per_label_dice(ours, reference, used)
    print(f"seed recipe, 3 channels: min per-label Dice {min(dice.values()):.4f} over {len(used)} labels")
    assert min(dice.values()) >= DICE_BAR, dice

    write_transforms(built.decision.stages, tmp_path / "qa", "case_a")  # what process.py writes beside the QA
    assert not (tmp_path / "qa" / "case_a_ct_to_mr_deformable.tfm").exists()  # rigid model: no B-spline stage
    transform = sitk.ReadTransform(str(tmp_path / "qa" / "case_a_ct_to_mr_rigid.tfm"))
    again = sitk.Resample(sitk.Cast(sitk.ReadImage(str(mr_path)), sitk.sitkFloat32), ct, transform, sitk.sitkLinear,
                          0.0, sitk.sitkFloat32)
    close = np.isclose(sitk.GetArrayViewFromImage(again), built.arrays[2], atol=1e-3)
    assert np.count_nonzero(~close) <= 1e-4 * close.size  # all but voxels on the MR field-of-view border


@pytest.mark.slow
def test_z_context_2d_model_matches_nnunet(real_ct, tmp_path):
    """A 2-D model folder declaring the 2.5-D layout (CT, T1, CT -5 / -2.5 / +2.5 / +5 mm): our channel builder
    and predictor vs nnU-Net 2.8.1 given the six channel files of those arrays (context channels normalised as CT,
    as their name asks). The case has no MR: the T1 channel is the dropout fill."""
    from preprocessing.channels import Z_CONTEXT_PLAN, prepare_case_channels

    ct = real_ct[20:110, 20:110, 40:100]
    model_dir = make_test_model(tmp_path / "model", folds=2, channel_names=[r.name for r in Z_CONTEXT_PLAN.recipes],
                                spacing_zyx=(2.5, 4.0, 4.0), patch_size=(64, 64), features=(8, 16, 32),
                                mirror_axes=(0, 1), dataset_extra=Z_CONTEXT_PLAN.dataset_json_keys())
    model = load_model_folder(model_dir)
    assert model.channel_plan == Z_CONTEXT_PLAN
    built = prepare_case_channels(ct, None, model.channel_plan)
    assert len(built.arrays) == 6 and not np.array_equal(built.arrays[0], built.arrays[4])
    ours = Predictor(model, torch.device("cpu"), PredictorOptions(use_mirroring=True, progress=False)).predict(
        built.arrays, ct.GetSpacing())
    files = [write_image(np.asarray(a), tmp_path / "channels" / f"case_{i:04d}.nii.gz", like=ct)
             for i, a in enumerate(built.arrays)]
    reference = np.asarray(model_to_hanseg_lookup(model.labels), dtype=np.uint8)[
        nnunet_predict(model_dir, files, tmp_path / "nnunet", folds=(0, 1), use_mirroring=True)]
    used = sorted(set(np.unique(ours)) | set(np.unique(reference)) - {0})
    assert len(used) >= 5, used
    dice = per_label_dice(ours, reference, used)
    assert min(dice.values()) >= DICE_BAR, dice

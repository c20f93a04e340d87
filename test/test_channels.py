"""Channel recipes (preprocessing.channels): parsing dataset.json, building channels, the dropout fill, and ONE
builder for the training converter and inference (same arrays for the same case)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import ModelFolderError
from contract.imageio import read_image, read_scan
from devkit.make_test_model import make_test_model
from preprocessing.channels import (
    LEGACY_PLAN,
    MR_DROPOUT_FILL,
    SEED_RECIPE_PLAN,
    Z_CONTEXT_PLAN,
    ChannelPlan,
    ChannelRecipe,
    channel_arrays,
    parse_channel_plan,
)
from preprocessing.synthetic_t1 import make_t1_like
from test.conftest import openkbp_ct_path
from test.test_process import run_process

SEED_KEYS = SEED_RECIPE_PLAN.dataset_json_keys()


def test_seed_recipe_round_trips_through_dataset_json():
    plan = parse_channel_plan(json.loads(json.dumps(SEED_KEYS)))
    assert plan == SEED_RECIPE_PLAN
    assert plan.ct_channels == (0, 1) and plan.mr_channels == (2,) and plan.mr_registration == "rigid"
    assert parse_channel_plan({**SEED_KEYS, "mr_registration": "rigid+bspline"}).mr_registration == "rigid+bspline"
    assert plan.recipes[0].clip_hu == (-160.0, 240.0) and plan.recipes[1].clip_hu == (-800.0, 2200.0)


def test_z_context_recipe_round_trips_and_keeps_the_legacy_channel_indices():
    keys = json.loads(json.dumps(Z_CONTEXT_PLAN.dataset_json_keys()))
    plan = parse_channel_plan(keys)
    assert plan == Z_CONTEXT_PLAN
    assert plan.recipes[:2] == LEGACY_PLAN.recipes  # channels 0 / 1 as in a CT + T1 model: its weights carry over
    assert [r.z_offset_mm for r in plan.recipes[2:]] == [-5.0, -2.5, 2.5, 5.0]
    assert plan.recipes[2].describe() == "CT 5 mm toward the feet" and plan.recipes[4].describe() == \
        "CT 2.5 mm toward the head"  # what the model card says
    assert plan.ct_channels == (0, 2, 3, 4, 5) and plan.mr_channels == (1,)
    assert set(keys["channel_names"].values()) == {"CT", "T1"}  # nnU-Net normalises every CT channel as CT


def _superior_ramp(size_xyz: tuple[int, int, int], spacing: tuple[float, float, float],
                   direction: tuple[float, ...]) -> sitk.Image:
    """An image whose value at every voxel is its physical superior coordinate (LPS z, mm)."""
    image = sitk.Image(list(size_xyz), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((-10.0, 20.0, -30.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size_xyz], indexing="ij"), -1)  # x, y, z, 3
    physical = (index * np.asarray(spacing)) @ np.asarray(direction).reshape(3, 3).T + np.asarray(image.GetOrigin())
    image = sitk.GetImageFromArray(physical[..., 2].transpose(2, 1, 0).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((-10.0, 20.0, -30.0))
    return image


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),  # LPS, axial slices along z
    (1, 0, 0, 0, 1, 0, 0, 0, -1),  # z stored feet-first
    (1, 0, 0, 0, 0, -1, 0, 1, 0),  # coronal storage: the image's y axis points to the head
], ids=["LPS", "z-flipped", "coronal"])
@pytest.mark.parametrize("offset", [2.5, -5.0, 3.0])
def test_z_offset_reads_the_ct_that_many_mm_toward_the_head_in_every_storage_orientation(direction, offset):
    spacing = (1.5, 2.0, 2.0)
    ramp = _superior_ramp((6, 9, 9), spacing, tuple(float(d) for d in direction))
    plan = ChannelPlan((ChannelRecipe("CT", "CT"), ChannelRecipe("CT", "CT", z_offset_mm=offset)))
    base, shifted = channel_arrays(plan, ramp, None)
    assert shifted.dtype == np.float32
    top, bottom = base.max(), base.min()
    # where the shifted point is inside the scan, the value is exactly the superior coordinate + offset (linear
    # interpolation of a linear ramp; 3 mm on 2 mm slices is between slices); beyond the scan the edge slice
    inside = (base + offset <= top) & (base + offset >= bottom)
    assert inside.sum() > 0.3 * base.size
    np.testing.assert_allclose(shifted[inside], base[inside] + offset, atol=1e-3)
    np.testing.assert_allclose(shifted[~inside], top if offset > 0 else bottom, atol=1e-3)


def test_channels_without_recipes_keep_the_two_channel_meaning():
    plan = parse_channel_plan({"channel_names": {"0": "CT", "1": "T1"}})
    assert plan == LEGACY_PLAN and plan.mr_registration == "rigid"
    assert parse_channel_plan({"channel_names": {"0": "CT"}}).uses_mr is False


@pytest.mark.parametrize("dataset, message", [
    ({"channel_names": {"0": "CT", "1": "PET"}}, "channel 1 'PET': unknown channel name"),
    ({"channel_names": {"0": "T1"}}, "no CT-derived channel"),
    ({"channel_names": {"0": "CT", "1": "T1"}, "mr_registration": "affine"}, "'mr_registration' is 'affine'"),
    ({"channel_names": {"0": "a", "1": "b"}, "channel_recipes": {"0": {"source": "CT"}}}, "one recipe per channel"),
    ({"channel_names": {"0": "a"}, "channel_recipes": {"0": {"source": "PET"}}}, "source 'PET'"),
    ({"channel_names": {"0": "a"}, "channel_recipes": {"0": {"source": "CT", "window": {"level": 40}}}},
     "window must be"),
    ({"channel_names": {"0": "a"}, "channel_recipes": {"0": {"source": "CT", "window": {"level": 0, "width": 0}}}},
     "width must be > 0"),
    ({"channel_names": {"0": "CT", "1": "t"}, "channel_recipes": {"0": {"source": "CT"},
                                                                  "1": {"source": "T1", "window": {}}}},
     "a window applies to the CT only"),
    ({"channel_names": {"0": "CT", "1": "t"}, "channel_recipes": {"0": {"source": "CT"},
                                                                  "1": {"source": "T1", "z_offset_mm": 2.5}}},
     "z_offset_mm applies to the CT only"),
    ({"channel_names": {"0": "CT"}, "channel_recipes": {"0": {"source": "CT", "z_offset_mm": 80}}}, "within +-50"),
    ({"channel_names": {"0": "CT"}, "channel_recipes": {"0": {"source": "CT", "z_offset_mm": "up"}}}, "got 'up'"),
    ({"channel_names": {"0": "CT"}, "channel_recipes": {"0": {"source": "CT", "shift": 1}}}, "expected {'source'"),
])
def test_bad_declarations_are_model_folder_errors_naming_the_file(dataset, message):
    with pytest.raises(ModelFolderError, match="dataset.json") as err:
        parse_channel_plan(dataset, Path("/models/m/dataset.json"))
    assert message in str(err.value)


def test_unknown_channel_name_exits_4_naming_dataset_json(tmp_path, real_ct):
    model = make_test_model(tmp_path / "model", folds=1, channel_names=("CT", "PET"), spacing_zyx=(6.0, 8.0, 8.0))
    (tmp_path / "in" / "images" / "ct").mkdir(parents=True)
    sitk.WriteImage(real_ct, str(tmp_path / "in" / "images" / "ct" / "c.mha"))
    proc = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", model)
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(model / "dataset.json") in last and "'PET'" in last, last
    assert not (tmp_path / "out" / "images").exists()


def test_ct_windows_are_clipped_hu_and_missing_mr_fills_every_mr_channel():
    ct = sitk.GetImageFromArray(np.array([[[-1000, -160, 0, 240, 3000]]], dtype=np.int16))
    plan = ChannelPlan(SEED_RECIPE_PLAN.recipes + (SEED_RECIPE_PLAN.recipes[2],))  # two T1-derived channels
    soft, bone, t1a, t1b = channel_arrays(plan, ct, None)
    assert soft.dtype == np.float32 and soft.ravel().tolist() == [-160, -160, 0, 240, 240]
    assert bone.ravel().tolist() == [-800, -160, 0, 240, 2200]
    for t1 in (t1a, t1b):
        assert t1.shape == soft.shape and np.all(t1 == MR_DROPOUT_FILL)


def test_prepare_channels_without_mr_gives_the_dropout_fill(real_ct):
    from preprocessing.channels import MR_ABSENT, prepare_case_channels

    built = prepare_case_channels(real_ct, None, SEED_RECIPE_PLAN)
    assert built.decision.status == MR_ABSENT and built.decision.stages == [] and built.mr_on_ct is None
    assert np.all(built.arrays[2] == MR_DROPOUT_FILL)
    hu = sitk.GetArrayViewFromImage(real_ct)
    assert np.array_equal(built.arrays[1], np.clip(hu, -800, 2200).astype(np.float32))


def test_converter_and_inference_build_identical_channels(tmp_path):
    """One HaN-Seg-layout case (real OpenKBP CT, T1-like MR in its own frame): the converter's channel files and
    inference's in-memory channels are the same arrays, for the seed recipe's three channels (rigid stage)."""
    from preprocessing.channels import MR_USED, prepare_case_channels
    from training.convert_hanseg import convert

    ct = sitk.ReadImage(str(openkbp_ct_path("pt_4")))
    mr = make_t1_like(ct, rotation_deg=(3.0, -2.0, 4.0), translation_mm=(12.0, -20.0, 8.0),
                      spacing_mm=(1.8, 1.8, 3.0), seed=1).image
    case = tmp_path / "src" / "case_01"
    case.mkdir(parents=True)
    sitk.WriteImage(ct, str(case / "case_01_IMG_CT.nrrd"))
    sitk.WriteImage(mr, str(case / "case_01_IMG_MR_T1.nrrd"))
    plan = ChannelPlan(SEED_RECIPE_PLAN.recipes, "rigid")
    out = convert(tmp_path / "src", tmp_path / "raw", 990, "Same", plan=plan)
    dataset = json.loads((out / "dataset.json").read_text())
    assert parse_channel_plan(dataset) == plan  # the converter declares what it built
    written = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / f"case_01_{i:04d}.nii.gz")))
               for i in range(3)]

    inference = prepare_case_channels(read_scan(case / "case_01_IMG_CT.nrrd", "CT"),
                                      read_image(case / "case_01_IMG_MR_T1.nrrd", "T1 MR"), plan)
    assert inference.decision.status == MR_USED
    for i, (a, b) in enumerate(zip(written, inference.arrays)):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"channel {i} differs"
    assert np.count_nonzero(written[2]) > 0.05 * written[2].size  # the T1 (head only) is there, not the fill


def test_trainer_drops_channel_groups_together():
    trainers = pytest.importorskip("training.trainers", reason="nnunetv2 is installed for training/tests only")
    torch = pytest.importorskip("torch")

    class Rng:
        def __init__(self, values):
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    fake = SimpleNamespace(dataset_json=SEED_KEYS, ct_channel=0, mr_channel=1, p_drop_mr=0.3, p_drop_ct=0.05,
                           _dropout_rng=Rng([0.1, 0.32, 0.9]))
    data = torch.ones(3, 3, 2, 2, 2)
    out = trainers.nnUNetTrainerModalityDropout.apply_modality_dropout(fake, data)
    assert out[0, 2].abs().sum() == 0 and out[0, :2].abs().sum() > 0  # MR group dropped, both CT windows kept
    assert out[1, :2].abs().sum() == 0 and out[1, 2].abs().sum() > 0  # CT group (soft AND bone) dropped
    assert out[2].abs().sum() == out[2].numel()  # nothing dropped
    assert trainers.dropout_channel_groups({}, 2) == ((0,), (1,))  # two-channel datasets as before
    context = Z_CONTEXT_PLAN.dataset_json_keys()
    assert trainers.dropout_channel_groups(context, 6) == ((0, 2, 3, 4, 5), (1,))  # context channels drop with the CT


def test_new_input_channels_start_from_the_init_network_unchanged():
    """A CT + T1 network continued on the 2.5-D layout: channels matched by recipe, new ones with zero weights,
    so the first convolution computes what the original did, whatever the context channels hold."""
    trainers = pytest.importorskip("training.trainers", reason="nnunetv2 is installed for training/tests only")
    torch = pytest.importorskip("torch")
    legacy = trainers.channel_recipe_list({"channel_names": {"0": "CT", "1": "T1"}})
    context = trainers.channel_recipe_list(Z_CONTEXT_PLAN.dataset_json_keys())
    rows = trainers.matched_input_channels(legacy, context)
    assert rows == [0, 1, None, None, None, None]
    # reordered channels follow their recipes; a recipe matches one source channel only
    swapped = [{"source": "T1"}, {"source": "CT"}, {"source": "CT"}]
    assert trainers.matched_input_channels(legacy, swapped) == [1, 0, None]
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    wide = torch.nn.Conv2d(6, 4, 3, padding=1)
    with torch.no_grad():
        wide.weight.copy_(trainers.expand_input_channels(conv.weight, rows))
        wide.bias.copy_(conv.bias)
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(wide(x), conv(x[:, :2]))
    # the suffixes name every weight of nnU-Net's U-Net that depends on the number of input channels
    assert all(k.endswith(trainers.FIRST_CONV_SUFFIXES) for k in _plain_unet_state_keys(torch))


def _plain_unet_state_keys(torch) -> list[str]:  # noqa: ANN001 - the torch module
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    net = PlainConvUNet(6, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), 2, 3, (2, 2), True, torch.nn.InstanceNorm2d,
                        {"affine": True}, nonlin=torch.nn.LeakyReLU)
    keys = [k for k, v in net.state_dict().items() if v.ndim == 4 and v.shape[1] == 6]
    assert keys, "no weight sees the 6 input channels"
    return keys


@pytest.mark.parametrize("src_merged", [False, True], ids=["sides-to-merged", "merged-to-merged"])
def test_continuation_init_matches_heads_by_name_and_input_channels_by_recipe(tmp_path, src_merged):
    """``nnUNetTrainerCPU_partial._remapped_init`` on a hand-made checkpoint: the merged head row is the mean of its
    sides (or the merged row itself when the source is merged already), other rows follow their names, and the
    first convolution gains zero weights for the 2.5-D context channels."""
    trainers = pytest.importorskip("training.trainers", reason="nnunetv2 is installed for training/tests only")
    torch = pytest.importorskip("torch")
    src_labels = ({"background": 0, "Brainstem": 1, "Parotid": 2} if src_merged else
                  {"background": 0, "Parotid_L": 1, "Parotid_R": 2, "Brainstem": 3})
    heads = torch.arange(len(src_labels) * 4, dtype=torch.float32).reshape(len(src_labels), 4, 1, 1)
    first = torch.randn(4, 2, 3, 3)
    folder = tmp_path / "weights"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "T1"}, "labels": src_labels}))
    torch.save({"network_weights": {"decoder.seg_layers.0.weight": heads,
                                    "encoder.stages.0.0.convs.0.conv.weight": first,
                                    "decoder.encoder.stages.0.0.convs.0.conv.weight": first}},
               folder / "fold_0" / "checkpoint_final.pth")
    logged = []
    fake = SimpleNamespace(device=torch.device("cpu"), print_to_log_file=logged.append, dataset_json={
        **Z_CONTEXT_PLAN.dataset_json_keys(), "labels": {"background": 0, "Parotid": 1, "Brainstem": 2},
        "lr_split": {"Parotid": ["Parotid_L", "Parotid_R"]}})
    state = trainers.nnUNetTrainerCPU_partial._remapped_init(fake, str(folder / "fold_0" / "checkpoint_final.pth"))
    rows = state["decoder.seg_layers.0.weight"]
    assert rows.shape[0] == 3
    torch.testing.assert_close(rows[0], heads[0])
    torch.testing.assert_close(rows[1], heads[2] if src_merged else (heads[1] + heads[2]) / 2)
    torch.testing.assert_close(rows[2], heads[1] if src_merged else heads[3])
    for key in ("encoder.stages.0.0.convs.0.conv.weight", "decoder.encoder.stages.0.0.convs.0.conv.weight"):
        assert state[key].shape == (4, 6, 3, 3)
        torch.testing.assert_close(state[key][:, :2], first)
        assert not state[key][:, 2:].any()
    assert any("new channels [2, 3, 4, 5]" in line for line in logged)


def test_inference_defers_the_context_channels_and_preprocesses_them_as_arrays(real_ct, tmp_path):
    """prepare_case_channels (inference) gives z-context channels as DeferredChannel (computed when the
    preprocessing reads them, one at a time), and the model input equals that of the same channels as arrays
    (the converters' form): same numbers, so the nnU-Net equivalence of the array form carries over."""
    from model.model_folder import load_model_folder
    from model.preprocess import preprocess_case
    from preprocessing.channels import DeferredChannel, prepare_case_channels

    ct = real_ct[20:100, 20:100, 40:80]
    built = prepare_case_channels(ct, None, Z_CONTEXT_PLAN)
    deferred = [i for i, a in enumerate(built.arrays) if isinstance(a, DeferredChannel)]
    assert deferred == [2, 3, 4, 5]
    assert all(built.arrays[i].shape == built.arrays[0].shape and built.arrays[i].dtype == np.float32
               for i in deferred)
    eager = channel_arrays(Z_CONTEXT_PLAN, ct, None)
    assert all(isinstance(a, np.ndarray) for a in eager)
    for i in deferred:
        assert np.array_equal(np.asarray(built.arrays[i]), eager[i])
    model = load_model_folder(make_test_model(
        tmp_path / "m", folds=1, channel_names=["CT", "T1"] + ["CT"] * 4,
        spacing_zyx=(2.5, 6.0, 6.0), patch_size=(32, 32), features=(4, 8), mirror_axes=(0, 1),
        dataset_extra=Z_CONTEXT_PLAN.dataset_json_keys()))
    a = preprocess_case(built.arrays, ct.GetSpacing(), model)
    b = preprocess_case(eager, ct.GetSpacing(), model)
    assert a.data.shape[0] == 6 and a.bbox == b.bbox
    assert np.array_equal(a.data.numpy(), b.data.numpy())


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_inflated_3d_network_is_the_2d_network_on_an_input_constant_along_z(deep_supervision):
    """``inflate_state_dict``: a 2-D U-Net's weights in the 3-D U-Net of the same plan (strided convolutions,
    transposed convolutions, heads) compute the 2-D network on every slice of a z-constant volume, and the weights
    differ from a plain copy (a real volume's neighbouring slices do reach the new z taps once trained)."""
    trainers = pytest.importorskip("training.trainers", reason="nnunetv2 is installed for training/tests only")
    torch = pytest.importorskip("torch")
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    def unet(dim: int) -> torch.nn.Module:
        conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d,
                                                                                 torch.nn.InstanceNorm3d)
        return PlainConvUNet(2, 3, (4, 8, 16), conv, 3, (1, 2, 2), 2, 3, (2, 2), True, norm,
                             {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                             nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)

    torch.manual_seed(0)
    net2, net3 = unet(2).eval(), unet(3).eval()
    with torch.no_grad():  # non-trivial norm parameters, so that a wrong copy would show
        for p in net2.parameters():
            p.add_(0.1 * torch.randn_like(p))
    shapes = {k: tuple(v.shape) for k, v in net3.state_dict().items()}
    state = trainers.inflate_state_dict(net2.state_dict(), shapes)
    net3.load_state_dict(state, strict=True)
    x2 = torch.randn(2, 2, 16, 16)
    x3 = x2.unsqueeze(2).expand(2, 2, 8, 16, 16).contiguous()
    with torch.no_grad():
        out2, out3 = net2(x2), net3(x3)
    if deep_supervision:
        out2, out3 = out2[0], out3[0]
    for z in range(8):
        torch.testing.assert_close(out3[:, :, z], out2, rtol=1e-4, atol=1e-5)
    conv = "encoder.stages.1.0.convs.0.conv.weight"  # a strided convolution: 2-D kernel at the centre tap only
    assert state[conv].shape == shapes[conv] and not state[conv][:, :, [0, 2]].any()
    up = next(k for k in state if ".transpconvs." in k and k.endswith("weight"))
    torch.testing.assert_close(state[up][:, :, 0], state[up][:, :, 1])  # nearest-neighbour along z
    with pytest.raises(ValueError, match="cannot be inflated"):
        trainers.inflate_state_dict({conv: torch.zeros(8, 4, 5, 5)}, {conv: shapes[conv]})

"""Reading nnU-Net v2 model folders, building the network, choosing the device."""

from __future__ import annotations

import json

import pytest
import torch

from contract.errors import ModelFolderError
from devkit.make_test_model import make_test_model
from model.device import autocast_for, select_device
from model.model_folder import load_model_folder, resolve_configuration
from model.network import build_network, load_fold_weights, locate


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp("m") / "model", folds=2, patch_size=(16, 32, 32))


def test_reads_every_fold_and_the_channel_roles(model_dir):
    model = load_model_folder(model_dir)
    assert [f.name for f in model.folds] == ["0", "1"]
    assert model.channel_names == ("CT", "T1") and model.ct_channel == 0 and model.mr_channel == 1
    assert model.num_classes == 31 and model.mirror_axes == (0, 1, 2)
    assert model.configuration.patch_size == (16, 32, 32) and not model.configuration.is_2d


def test_fold_selection_and_missing_folds(model_dir):
    assert [f.name for f in load_model_folder(model_dir, ["1"]).folds] == ["1"]
    with pytest.raises(ModelFolderError, match=r"fold\(s\) \['3'\].*available folds: \['0', '1'\]"):
        load_model_folder(model_dir, ["3"])


def test_ct_only_model_has_no_mr_channel(tmp_path):
    model = load_model_folder(make_test_model(tmp_path / "m", folds=1, channel_names=("CT",)))
    assert model.mr_channel is None and model.num_input_channels == 1


def test_missing_files_name_the_file(tmp_path, model_dir):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="plans.json: missing"):
        load_model_folder(tmp_path / "empty")


def test_network_is_rebuilt_from_plans_and_takes_every_fold(model_dir):
    model = load_model_folder(model_dir)
    network = build_network(model)
    for fold in model.folds:
        load_fold_weights(network, fold.weights, str(fold.path))
    with torch.no_grad():
        out = network(torch.zeros(1, 2, 16, 32, 32))
    assert out.shape == (1, 31, 16, 32, 32)


def test_weights_that_do_not_fit_the_plans_are_refused(model_dir):
    model = load_model_folder(model_dir)
    network = build_network(model)
    weights = dict(model.folds[0].weights)
    weights.pop(next(iter(weights)))
    with pytest.raises(ModelFolderError, match="do not fit the network"):
        load_fold_weights(network, weights, "fold_0")


def test_plans_cannot_import_arbitrary_code():
    with pytest.raises(ModelFolderError, match="refusing to import"):
        locate("os.system")
    assert locate("torch.nn.modules.conv.Conv3d") is torch.nn.Conv3d


def test_unsupported_plans_are_refused(tmp_path):
    folder = make_test_model(tmp_path / "m", folds=1)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization", "MyNorm"]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelFolderError, match="unsupported normalization"):
        load_model_folder(folder)


def test_configuration_inheritance_is_resolved():
    plans = {"configurations": {"base": {"a": 1, "b": 2}, "child": {"inherits_from": "base", "b": 3}}}
    assert resolve_configuration(plans, "child", "plans.json") == {"a": 1, "b": 3}


def test_device_selection_falls_back_and_refuses_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unsupported device"):
        select_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_is_fp16_on_cuda_and_off_on_cpu():
    ctx = autocast_for(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    assert not isinstance(autocast_for(torch.device("cpu")), torch.autocast)

"""Model folders are data, not code (issue 13, part 1): safe checkpoint loading, allow-listed classes, field checks.

The attacks are real: a checkpoint whose pickle runs a command, and a plans.json that names ``torch.hub.load``
through attribute walking with a ``hubconf.py`` in the model folder. Each must leave no marker file and exit 4.
A checkpoint written by nnU-Net's own ``nnUNetTrainer.save_checkpoint`` (optimiser state, numpy scalars in its
logs) must still load without ``--trust-model``.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

from contract.errors import ModelFolderError
from devkit.make_test_model import make_test_model
from model.model_folder import load_model_folder
from model.network import build_network, locate
from test.test_process import make_case, run_process


class _RunsCode:
    """Unpickling this calls ``exec`` (any callable would do): the classic malicious-pickle payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def one_fold_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("m") / "model", folds=1, spacing_zyx=(6.0, 8.0, 8.0))


def _copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


def _edit_json(folder: Path, name: str, edit) -> Path:  # noqa: ANN001
    path = folder / name
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
    return folder


def _config(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]


def _malicious_checkpoint(folder: Path, marker: Path) -> Path:
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["logging"] = {"note": _RunsCode(marker)}
    torch.save(checkpoint, path)
    return path


# --- malicious model folders: no code runs, exit 4 -------------------------------------------------------------

def test_malicious_checkpoint_runs_nothing_and_exits_4(one_fold_model, real_ct, tmp_path):
    marker = tmp_path / "marker"
    folder = _copy(one_fold_model, tmp_path / "model")
    ckpt = _malicious_checkpoint(folder, marker)
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", folder)
    assert result.returncode == 4, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model folder: ") and str(ckpt) in last and "--trust-model" in last, last
    assert "refused global exec" in last and len(last) < 400
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_the_same_checkpoint_does_run_its_payload_under_trust_model(one_fold_model, tmp_path):
    """Proof that the payload above is live: with --trust-model (full unpickling) it writes the marker."""
    marker = tmp_path / "marker"
    folder = _copy(one_fold_model, tmp_path / "model")
    _malicious_checkpoint(folder, marker)
    load_model_folder(folder, trust_model=True)
    assert marker.read_text() == "pwned"


def test_hub_load_through_attribute_walking_is_refused(one_fold_model, real_ct, tmp_path, cli):
    """``torch.nn.modules.module.torch.hub.load`` passed the old prefix test; with ``source: local`` it would run
    the model folder's hubconf.py."""
    marker = tmp_path / "marker"
    folder = _copy(one_fold_model, tmp_path / "model")
    (folder / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n\ndef net(**kw):\n    pass\n")

    def edit(plans: dict) -> None:
        arch = _config(plans)["architecture"]
        arch["network_class_name"] = "torch.nn.modules.module.torch.hub.load"
        arch["arch_kwargs"] = {"repo_or_dir": str(folder), "model": "net", "source": "local"}
        arch["_kw_requires_import"] = []

    _edit_json(folder, "plans.json", edit)
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    result = cli("--input", root, "--output", tmp_path / "out", "--model", folder)
    assert result.returncode == 4, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "refusing class 'torch.nn.modules.module.torch.hub.load'" in last and "plans.json" in last, last
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["os.system", "torch.nn.modules.module.torch.hub.load", "torch.nn.Module",
                                  "torch.nn.modules.conv.os", "dynamic_network_architectures.architectures.unet.nn",
                                  "torch.nn.Conv3d.__init__", 3, None])
def test_only_exact_allow_listed_class_names_resolve(name):
    with pytest.raises(ModelFolderError, match="refusing class"):
        locate(name)


def test_allow_listed_names_resolve_to_their_classes():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    assert locate("torch.nn.modules.conv.Conv3d") is torch.nn.Conv3d
    assert locate("torch.nn.LeakyReLU") is torch.nn.LeakyReLU
    assert locate("dynamic_network_architectures.architectures.unet.PlainConvUNet") is PlainConvUNet


def test_a_layer_class_cannot_stand_in_for_the_network(one_fold_model, tmp_path):
    folder = _edit_json(_copy(one_fold_model, tmp_path / "m"), "plans.json", lambda p: _config(p)["architecture"]
                        .update(network_class_name="torch.nn.modules.conv.Conv3d"))
    with pytest.raises(ModelFolderError, match="refusing class"):
        build_network(load_model_folder(folder))


# --- a stock nnU-Net checkpoint loads without --trust-model -------------------------------------------------------

def test_checkpoint_written_by_nnunet_trainer_loads_safely(tmp_path):
    """nnUNetTrainer.save_checkpoint's file: optimizer_state, grad_scaler_state, np.float64 logs, _best_ema, a
    torch.device in init_args; the safe loader takes it, and a plain weights_only=True load would not.
    nnunetv2 is a test requirement (requirements-test.txt), so it is imported, not skipped."""
    from test.nnunet_checkpoint import write_trainer_checkpoints

    folder = make_test_model(tmp_path / "m", folds=1, spacing_zyx=(6.0, 8.0, 8.0))
    path, = write_trainer_checkpoints(folder, tmp_path / "work", folds=1)
    raw = torch.load(path, weights_only=False)
    assert {"optimizer_state", "logging", "_best_ema", "grad_scaler_state"} <= set(raw)
    assert raw["optimizer_state"]["state"], "the optimiser state has momentum buffers"
    assert type(raw["_best_ema"]).__module__ == "numpy"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    model = load_model_folder(folder)
    for key, value in raw["network_weights"].items():
        assert torch.equal(model.folds[0].weights[key], value)
    build_network(model)


# --- every field in use is checked: one clear error each, exit 4 ---------------------------------------------------

def _set_checkpoint(folder: Path, change) -> Path:  # noqa: ANN001
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    return folder


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CHECKPOINT_CASES = {
    "no-configuration": (lambda c: c["init_args"].pop("configuration"), "no configuration name"),
    "bare-tensor-weights": (lambda c: c.update(network_weights=torch.zeros(3)), "must be a state_dict"),
    "mirror-axes-not-ints": (lambda c: c.update(inference_allowed_mirroring_axes="012"), "list of axis indices"),
    "not-a-dict": (None, "not an nnU-Net v2 checkpoint"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=list(CHECKPOINT_CASES))
def test_bad_checkpoint_fields_are_model_errors(one_fold_model, tmp_path, case):
    change, message = CHECKPOINT_CASES[case]
    folder = _copy(one_fold_model, tmp_path / "m")
    if change is None:
        torch.save([1, 2, 3], folder / "fold_0" / "checkpoint_final.pth")
    else:
        _set_checkpoint(folder, change)
    with pytest.raises(ModelFolderError, match=message) as err:
        load_model_folder(folder)
    assert "checkpoint_final.pth" in str(err.value)


PLANS_CASES = {
    "patch-size-0": (lambda p: _config(p).update(patch_size=[0, 48, 48]), "patch size"),
    "spacing-0": (lambda p: _config(p).update(spacing=[0.0, 8.0, 8.0]), "spacing"),
    "tiny-spacing": (lambda p: _config(p).update(spacing=[1e-4, 8.0, 8.0]), "spacing"),
    "spacing-string": (lambda p: _config(p).update(spacing=["6", 8.0, 8.0]), "spacing"),
    "bad-transpose": (lambda p: p.update(transpose_forward=[0, 0, 1]), "transpose_forward"),
    "inconsistent-transpose": (lambda p: p.update(transpose_forward=[1, 2, 0], transpose_backward=[1, 2, 0]),
                               "does not undo"),
    "resampling-order": (lambda p: _config(p)["resampling_fn_data_kwargs"].update(order=9), "order"),
    "configurations-list": (lambda p: p.update(configurations=[1]), "configurations"),
    "arch-kwargs-string": (lambda p: _config(p)["architecture"].update(arch_kwargs="x"), "arch_kwargs"),
    "bad-arch-kwargs": (lambda p: _config(p)["architecture"]["arch_kwargs"].update(n_stages=-1), "cannot build"),
}


@pytest.mark.parametrize("case", PLANS_CASES, ids=list(PLANS_CASES))
def test_bad_plans_fields_are_model_errors(one_fold_model, tmp_path, case):
    change, message = PLANS_CASES[case]
    folder = _edit_json(_copy(one_fold_model, tmp_path / "m"), "plans.json", change)
    with pytest.raises(ModelFolderError, match=message) as err:
        build_network(load_model_folder(folder))
    assert "plans.json" in str(err.value)


def test_mirror_axes_out_of_range_are_a_model_error(one_fold_model, tmp_path):
    folder = _set_checkpoint(_copy(one_fold_model, tmp_path / "m"),
                             lambda c: c.update(inference_allowed_mirroring_axes=(0, 1, 5)))
    with pytest.raises(ModelFolderError, match="mirror axes"):
        load_model_folder(folder)


DATASET_CASES = {
    "labels-not-ints": (lambda d: d["labels"].update(Brainstem="1"), "labels must map"),
    "labels-with-gap": (lambda d: d["labels"].update(Brainstem=99), "label values must be"),
    "channel-names-list": (lambda d: d.update(channel_names=["CT"]), "channel_names"),
}


@pytest.mark.parametrize("case", DATASET_CASES, ids=list(DATASET_CASES))
def test_bad_dataset_fields_are_model_errors(one_fold_model, tmp_path, case):
    change, message = DATASET_CASES[case]
    folder = _edit_json(_copy(one_fold_model, tmp_path / "m"), "dataset.json", change)
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(folder)


@pytest.mark.parametrize("name", ["dataset.json", "plans.json"])
def test_deeply_nested_json_is_a_model_error(one_fold_model, tmp_path, name):
    folder = _copy(one_fold_model, tmp_path / "m")
    (folder / name).write_text('{"a": ' + _nested(sys.getrecursionlimit() * 2) + "}")
    with pytest.raises(ModelFolderError, match="nested too deeply"):
        load_model_folder(folder)


def test_bad_plans_is_exit_4_with_one_line(one_fold_model, real_ct, tmp_path, cli):
    folder = _edit_json(_copy(one_fold_model, tmp_path / "m"), "plans.json",
                        lambda p: _config(p).update(patch_size=[0, 48, 48]))
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    result = cli("--input", root, "--output", tmp_path / "out", "--model", folder)
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "patch size" in result.stderr.strip().splitlines()[-1]

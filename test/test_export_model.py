"""Safe export (training.export_model): a failing export leaves the weights folder byte-identical; a good one swaps
the new model in whole and keeps the old one as a backup instead of deleting anything.

Everything works on COPIES of the repository's ``weights/`` in tmp_path: the copy plays both the run folder (its
checkpoints carry network_weights / init_args / trainer_name like a training checkpoint) and the export target.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from contract.errors import ModelFolderError, OutputError
from training import export_model

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (directories included by name)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(run folder, weights copy, digest of the weights copy)."""
    if not (WEIGHTS / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.fail("the repository's weights/ has no fold_0 checkpoint (it is committed; checkout incomplete?)")
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS, weights)
    run = tmp_path / "results" / "Dataset501_X" / "nnUNetTrainerCPU__nnUNetPlansCPU__2d"
    run.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(WEIGHTS / name, run / name)
    for fold in ("0", "1"):
        (run / f"fold_{fold}").mkdir()
        name = f"fold_{fold}/checkpoint_final.pth"
        shutil.copyfile(WEIGHTS / name, run / name)
    return run, weights, tree_digest(weights)


def _siblings(weights: Path) -> list[str]:
    return sorted(p.name for p in weights.parent.iterdir() if p.name != "results")


def test_export_over_size_budget_leaves_weights_identical(setup: tuple[Path, Path, dict[str, str]]) -> None:
    run, weights, before = setup
    with pytest.raises(OutputError, match="max-mb"):
        export_model.export(run, ["0", "1"], weights, max_mb=10.0)  # 2 folds x 7.5 MB
    assert tree_digest(weights) == before
    assert _siblings(weights) == ["weights"]  # no temporary folder, no backup left behind


def test_export_with_missing_checkpoint_leaves_weights_identical(setup: tuple[Path, Path, dict[str, str]]) -> None:
    run, weights, before = setup
    (run / "fold_1" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelFolderError, match="fold_1"):
        export_model.export(run, ["0", "1"], weights)
    assert tree_digest(weights) == before
    assert _siblings(weights) == ["weights"]


def test_export_with_corrupt_checkpoint_leaves_weights_identical(setup: tuple[Path, Path, dict[str, str]]) -> None:
    run, weights, before = setup
    (run / "fold_1" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFolderError, match="cannot load checkpoint"):
        export_model.export(run, ["0", "1"], weights)
    assert tree_digest(weights) == before
    assert _siblings(weights) == ["weights"]


def test_weights_that_do_not_fit_the_plans_fail_after_writing_and_leave_weights_identical(
        setup: tuple[Path, Path, dict[str, str]]) -> None:
    """The late check (the predictor loads the new folder back) fails after the temporary folder was written."""
    run, weights, before = setup
    plans = json.loads((run / "plans.json").read_text())
    for config in plans["configurations"].values():
        if "architecture" in config:
            kwargs = config["architecture"]["arch_kwargs"]
            kwargs["features_per_stage"] = [2 * f for f in kwargs["features_per_stage"]]
    (run / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelFolderError, match="do not fit"):
        export_model.export(run, ["0", "1"], weights)
    assert tree_digest(weights) == before
    assert _siblings(weights) == ["weights"]


def test_cli_reports_one_line_and_exit_code(setup: tuple[Path, Path, dict[str, str]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run, weights, before = setup
    assert export_model.main(["--run", str(run), "--folds", "0", "1", "--out", str(weights), "--max-mb", "5"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "max-mb" in err[0]
    assert export_model.main(["--run", str(run), "--folds", "0", "7", "--out", str(weights)]) == 4
    assert "fold_7" in capsys.readouterr().err
    assert tree_digest(weights) == before


def test_good_export_swaps_whole_folder_and_keeps_the_previous_one(setup: tuple[Path, Path, dict[str, str]]) -> None:
    run, weights, before = setup
    summary = export_model.export(run, ["0"], weights)
    backup = Path(summary["previous"])
    # the previous model is kept whole (fold_1 and its held-out table included), not deleted or mixed in
    assert backup.parent == weights.parent and backup.name.startswith("weights.previous-")
    assert tree_digest(backup) == before
    names = {p.name for p in weights.iterdir()}
    assert names == {"plans.json", "dataset.json", "fold_0", "training_curve.json", "README.md"}
    card = (weights / "README.md").read_text()
    assert "Not measured yet" in card  # the new model's card: no stale held-out table of the old model
    from model.model_folder import load_model_folder

    assert [f.name for f in load_model_folder(weights).folds] == ["0"]
    assert (weights / "fold_0" / "checkpoint_final.pth").read_bytes() != b""


def test_size_budget_counts_shared_weights_once_as_torch_save_writes_them(tmp_path):
    """nnU-Net's U-Net lists each encoder weight under several keys; the export budget must count what the file
    holds (a 3-D fold was refused at 68.7 MB counted for a 21.6 MB file)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    net = PlainConvUNet(2, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), 2, 3, (2, 2), True, torch.nn.InstanceNorm3d,
                        {"affine": True}, nonlin=torch.nn.LeakyReLU)
    state = net.state_dict()
    per_key = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    torch.save(state, tmp_path / "w.pth")
    on_disk = (tmp_path / "w.pth").stat().st_size / 2**20
    counted = export_model.tensor_megabytes(state)
    assert counted <= on_disk < counted + 0.2  # the file is the tensors plus a little pickle
    assert per_key > 2 * counted  # the aliases the old per-key sum counted again

"""training.checkpoints: a snapshot restores into a fresh results folder as a resumable / exportable run."""

from __future__ import annotations

import json

import torch

from training import checkpoints


def test_snapshot_and_restore_round_trip_with_the_run_files(tmp_path):
    run = tmp_path / "results" / "Dataset504_X" / "nnUNetTrainerCPU_partial_6ep__nnUNetPlansCPU__2d"
    (run / "fold_1").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (run / name).write_text(json.dumps({"name": name}))
    weights = {"w": torch.randn(3, 3)}
    moments = torch.randn(3, 3)
    torch.save({"network_weights": weights, "current_epoch": 6,
                "optimizer_state": {"param_groups": [{"lr": 0.0}], "state": {0: {"step": torch.tensor(600.0),
                                                                                "exp_avg": moments}}}},
               run / "fold_1" / "checkpoint_final.pth")
    torch.save({"network_weights": weights}, run / "fold_1" / "checkpoint_latest.pth")
    (run / "fold_0").mkdir()  # an unfinished fold: resumable, so its optimiser state comes along
    torch.save({"network_weights": weights, "current_epoch": 3,
                "optimizer_state": {"param_groups": [{"lr": 0.0}], "state": {0: {"step": torch.tensor(300.0),
                                                                                "exp_avg": moments}}}},
               run / "fold_0" / "checkpoint_latest.pth")
    snap = tmp_path / "snap"
    written = checkpoints.snapshot(tmp_path / "results", snap)
    assert [p.parent.name + "/" + p.name for p in written] == ["fold_0/checkpoint_latest.pth",
                                                               "fold_1/checkpoint_final.pth"]  # newest kind only
    latest, final = (torch.load(p, weights_only=False) for p in written)
    assert latest["optimizer_state"]["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert latest["optimizer_state"]["state"][0]["step"].dtype == torch.float32  # step kept
    assert final["optimizer_state"] is None  # a finished fold is never resumed: weights only
    fresh = tmp_path / "fresh"
    restored = checkpoints.restore(fresh, snap)
    out = fresh / run.relative_to(tmp_path / "results")
    assert restored == [out / "fold_0" / "checkpoint_latest.pth", out / "fold_1" / "checkpoint_final.pth"]
    back_latest, back = (torch.load(p, weights_only=False) for p in restored)
    assert torch.equal(back["network_weights"]["w"], weights["w"]) and "snapshot_of" not in back
    assert back["current_epoch"] == 6 and back["optimizer_state"] is None
    assert back_latest["optimizer_state"]["state"][0]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(back_latest["optimizer_state"]["state"][0]["exp_avg"], moments, rtol=1e-2,
                               atol=1e-2)
    # the run's plans / dataset.json come along (a restored finished fold is exported, never retrained)
    assert json.loads((out / "plans.json").read_text()) == {"name": "plans.json"}
    assert (out / "dataset.json").is_file() and not (out / "dataset_fingerprint.json").exists()
    assert checkpoints.restore(fresh, snap) == []  # a local checkpoint is never overwritten

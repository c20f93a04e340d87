"""CPU smoke run of the whole training path on 3 shared OpenKBP cases (2 to train, 1 held out), in a few minutes.

The same commands as training/run_shipped_model.sh and the export: conversion (synthetic T1, registered back),
fingerprint + default plans, CPU plans, preprocessing, trainer install, ``nnUNetv2_train`` (3 tiny epochs, fold
``all`` because 2 cases cannot be split 5-fold), resume with ``--c``, export to a weights folder, and the held-out
evaluation with nnU-Net's predictor (with and without the T1 channel). It checks the plumbing, not the accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from devkit.data import SHARED_SKIP_REASON
from training.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
OPENKBP = shared_data_dir() / "openkbp_hn_ct"
BIN = Path(sys.executable).parent
CASES = ["pt_4", "pt_13", "pt_201"]  # pt_201 is a validation-pats case: held out in imagesTs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (OPENKBP / "cases.json").exists(), reason=SHARED_SKIP_REASON),
    pytest.mark.skipif(not (BIN / "nnUNetv2_train").exists(), reason="nnunetv2 not installed (requirements-train)"),
]


def _run(cmd: list[str], env: dict[str, str], timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_training_smoke(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "pre"), "nnUNet_results": str(work / "res"),
        "nnUNet_n_proc_DA": "1", "HANSEG_TORCH_THREADS": "1", "PYTHONPATH": str(REPO),
    })
    py = sys.executable
    _run([py, "-m", "training.convert_openkbp", "--out", env["nnUNet_raw"], "--dataset-id", "990",
          "--name", "Smoke", "--t1", "synthetic", "--cases", *CASES], env)
    raw = work / "raw" / "Dataset990_Smoke"
    report = json.loads((raw / "conversion_report.json").read_text())
    assert report["summary"]["num_training"] == 2 and report["summary"]["num_test"] == 1

    _run([str(BIN / "nnUNetv2_extract_fingerprint"), "-d", "990", "-np", "1", "--verify_dataset_integrity"], env)
    _run([str(BIN / "nnUNetv2_plan_experiment"), "-d", "990"], env)
    _run([py, "-m", "training.cpu_plans", "-d", "990"], env)
    _run([str(BIN / "nnUNetv2_preprocess"), "-d", "990", "-plans_name", "nnUNetPlansCPU", "-c", "2d", "-np", "1"], env)
    check = subprocess.run([py, "-m", "training.install_trainers", "--check"], cwd=REPO, env=env)
    if check.returncode != 0:
        _run([py, "-m", "training.install_trainers"], env)

    train = [str(BIN / "nnUNetv2_train"), "990", "2d", "all", "-tr", "nnUNetTrainerCPU_3ep", "-p", "nnUNetPlansCPU",
             "-device", "cpu", "--c"]
    log = _run(train, env)
    assert "Epoch 2" in log
    run = work / "res" / "Dataset990_Smoke" / "nnUNetTrainerCPU_3ep__nnUNetPlansCPU__2d"
    final = run / "fold_all" / "checkpoint_final.pth"
    assert final.exists() and (run / "fold_all" / "validation" / "summary.json").exists()
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 3 and ckpt["inference_allowed_mirroring_axes"] is None

    weights = tmp_path / "weights"
    _run([py, "-m", "training.export_model", "--run", str(run), "--folds", "all", "--out", str(weights)], env)
    exported = torch.load(weights / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert set(exported) <= {"network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
                             "current_epoch"}
    assert "optimizer_state" not in exported and exported["trainer_name"] == "nnUNetTrainerCPU_3ep"
    assert (weights / "plans.json").exists() and (weights / "dataset.json").exists()
    assert "Model card" in (weights / "README.md").read_text()

    out = _run([py, "-m", "training.evaluate_heldout", "--model", str(weights), "--raw", str(raw),
                "--work", str(tmp_path / "heldout")], env)
    assert "Dice with T1" in out
    card = (weights / "README.md").read_text()
    assert "| Brainstem |" in card and "Not measured yet" not in card
    metrics = json.loads((weights / "heldout_metrics.json").read_text())
    assert metrics["with_t1"]["summary"]["all"]["n"] == 7  # 1 case x 7 OARs scored

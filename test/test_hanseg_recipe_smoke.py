"""The HaN-Seg recipe's smoke variant end to end (training/hanseg_recipe.sh with SMOKE=1), on the CPU, in minutes.

SAME steps as the full recipe: a HaN-Seg-layout sample (4 OpenKBP CTs at 8 x 8 x 6 mm with own-grid synthetic
MRs, OAR_data.csv, one OAR missing from case_02), convert_hanseg (registration, OAR table, label availability),
nnU-Net's default 3d_fullres planning and preprocessing, nnUNetTrainerNoMirroring_smoke on fold `all`, the safe
export, and the held-out evaluation through process.py that writes the new model card. Checks the plumbing and
the records, not accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shared_data_dir() / "openkbp_hn_ct" / "cases.json").is_file(),
                       reason="shared OpenKBP data (../shared/data/openkbp_hn_ct) not present"),
]


def test_hanseg_recipe_smoke(tmp_path: Path) -> None:
    assert (BIN / "nnUNetv2_train").exists(), "nnunetv2 is not installed (./setup.sh --test or --train)"
    work, weights = tmp_path / "work", tmp_path / "weights"
    env = dict(os.environ, SMOKE="1", WORK=str(work), OUT=str(weights), PYTHON=sys.executable, NP="1",
               HANSEG_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(name, None)  # the script puts them under WORK
    proc = subprocess.run(["bash", str(REPO / "training" / "hanseg_recipe.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"recipe failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    raw = work / "nnUNet_raw" / "Dataset991_HaNSegSmoke"
    report = json.loads((raw / "conversion_report.json").read_text())
    cases = {r["case"]: r for r in report["cases"]}
    assert cases["case_02"]["oars_missing"] == ["SpinalCord"] and cases["case_01"]["oars_missing"] == []
    assert cases["case_04"]["split"].startswith("test") and report["summary"]["oar_table"].endswith("OAR_data.csv")
    assert all(r["t1"]["mode"] == "registered" for r in report["cases"])
    availability = json.loads((raw / "label_availability.json").read_text())
    assert "SpinalCord" not in availability["cases"]["case_02"] and "SpinalCord" in availability["cases"]["case_01"]

    run = work / "nnUNet_results" / "Dataset991_HaNSegSmoke" / "nnUNetTrainerNoMirroring_smoke__nnUNetPlans__3d_fullres"
    ckpt = torch.load(run / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["inference_allowed_mirroring_axes"] is None
    assert ckpt["init_args"]["configuration"] == "3d_fullres"

    exported = torch.load(weights / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert "optimizer_state" not in exported and exported["trainer_name"] == "nnUNetTrainerNoMirroring_smoke"
    card = (weights / "README.md").read_text()
    assert "nnUNetTrainerNoMirroring_smoke" in card and "SMOKE LENGTH" in card
    assert "| Brainstem |" in card and "Not measured yet" not in card  # the held-out table of THIS model
    assert "OpenKBP validation-pats" not in card and "SYNTHETIC" not in card  # no text of the shipped OpenKBP model
    metrics = json.loads((weights / "heldout_metrics.json").read_text())
    assert metrics["cases"] == ["case_04.nii.gz"]
    assert metrics["with_t1"]["summary"]["all"]["n"] == 7  # 1 held-out case x its 7 OARs

"""Deciding the largest-component post-processing on cross-validation cases (training.determine_postprocessing)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from contract.labels import HANSEG_LABELS
from devkit.data import SHARED_SKIP_REASON, shared_present
from model.model_folder import load_model_folder
from training.determine_postprocessing import (
    card_section,
    crossval_validation_cases,
    decide,
    main,
    score_case,
)


def test_the_validation_folds_partition_the_cases_whatever_their_order():
    ids = [f"pt_{i}" for i in range(1, 41)]
    folds = [crossval_validation_cases(ids, f) for f in range(5)]
    assert sorted(c for fold in folds for c in fold) == sorted(ids)
    assert all(len(f) == 8 for f in folds)
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    assert [crossval_validation_cases(shuffled, f) for f in range(5)] == folds  # the trainer's sorted order


def test_a_stray_blob_lowers_raw_dice_and_the_oar_is_chosen():
    gt = np.zeros((20, 30, 30), np.uint8)
    brainstem, cord = HANSEG_LABELS["Brainstem"], HANSEG_LABELS["SpinalCord"]
    gt[5:10, 5:10, 5:10] = brainstem
    gt[12:18, 20:24, 20:24] = cord
    pred = gt.copy()
    pred[14:18, 2:6, 2:6] = brainstem  # a false-positive island (64 voxels) far from the brainstem (125)
    pred[12:18, 20:22, 20:24] = 0  # the cord half found: one component, post-processing changes nothing
    scores = score_case(pred, gt, ["Brainstem", "SpinalCord", "Parotid_L"], (2.0, 1.0, 1.0))
    assert set(scores) == {"Brainstem", "SpinalCord"}  # Parotid_L has no ground truth here: not scored
    assert scores["Brainstem"]["dice_lcc"] == pytest.approx(1.0)
    assert scores["Brainstem"]["dice"] < 0.9
    assert scores["Brainstem"]["hd95_lcc"] < scores["Brainstem"]["hd95"]
    assert scores["SpinalCord"]["dice_lcc"] == scores["SpinalCord"]["dice"]
    table = decide({"a": scores})
    assert table["Brainstem"]["apply"] and table["SpinalCord"]["apply"]  # equal Dice: kept (nnU-Net's rule)


def test_an_oar_whose_dice_drops_is_not_chosen():
    per_case = {"a": {"Parotid_L": {"dice": 0.8, "dice_lcc": 0.6, "hd95": 5.0, "hd95_lcc": 4.0}},
                "b": {"Parotid_L": {"dice": 0.7, "dice_lcc": 0.75, "hd95": 5.0, "hd95_lcc": 5.0}}}
    table = decide(per_case)
    assert table["Parotid_L"]["n"] == 2 and not table["Parotid_L"]["apply"]
    assert table["Parotid_L"]["dice"] == pytest.approx(0.75)


def test_the_card_gains_the_section_before_the_held_out_one(tmp_path):
    (tmp_path / "README.md").write_text("# Card\n\n## Held-out evaluation\ntable\n")
    card_section(tmp_path, "| OAR | n |", ["Brainstem"])
    text = (tmp_path / "README.md").read_text()
    assert text.index("<!-- postprocessing:begin -->") < text.index("## Held-out evaluation")
    assert "Applied to: **Brainstem**" in text and "| OAR | n |" in text
    card_section(tmp_path, "| new |", [])  # rerun: replaced, not added twice
    text = (tmp_path / "README.md").read_text()
    assert text.count("<!-- postprocessing:begin -->") == 1 and "| new |" in text and "**none**" in text


@pytest.mark.slow
def test_the_command_predicts_a_fold_s_own_validation_case_and_writes_a_loadable_decision(small_model, tmp_path,
                                                                                          capsys):
    if not shared_present():
        pytest.skip(SHARED_SKIP_REASON)
    model = tmp_path / "model"
    shutil.copytree(small_model, model)
    report = tmp_path / "report.json"
    assert main(["--model", str(model), "--folds", "0", "--max-cases", "1", "--threads", "1",
                 "--report", str(report), "--write"]) == 0
    out = capsys.readouterr().out
    result = json.loads(report.read_text())
    (case,) = result["per_case"]
    assert case in crossval_validation_cases(_train_ids(), 0)
    chosen = out.strip().splitlines()[-1]
    assert chosen.startswith("RESULT largest_component:")
    declared = json.loads((model / "dataset.json").read_text())["largest_component"]
    assert declared == [n for n, e in result["table"].items() if e["apply"]]
    assert list(load_model_folder(model).largest_component) == declared


def _train_ids() -> list[str]:
    from training.convert_openkbp import default_sources
    from training.determine_postprocessing import openkbp_training_cases

    return list(openkbp_training_cases(default_sources()))

"""End-to-end tests of ``python -m evaluation`` on tiny datasets written as real files, in both GT layouts."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import InputError
from contract.labels import HANSEG_LABELS, HANSEG_OAR_NAMES
from devkit.data import SHARED_SKIP_REASON, openkbp_cases_dir
from evaluation.__main__ import main
from evaluation.cases import case_key, discover_ground_truth, match_cases, names_match
from evaluation.evaluate import evaluate_folder
from test.test_evaluation_support import (
    SIZE_XYZ,
    SPACING_XYZ,
    make_image,
    standard_cases,
    write_dataset,
    write_predictions,
)

REPO = Path(__file__).resolve().parents[1]
OPENKBP = openkbp_cases_dir()
DIAGONAL = float(np.linalg.norm((np.asarray(SIZE_XYZ) - 1) * np.asarray(SPACING_XYZ)))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as fh:
        return {(r["case_id"], r["oar"]): r for r in csv.DictReader(fh)}


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    gt, pred = standard_cases()
    return {
        "folder": write_dataset(tmp_path, "folder", gt),
        "labelmap": write_dataset(tmp_path, "labelmap", gt),
        "pred": write_predictions(tmp_path / "pred", pred),
        "root": tmp_path,
    }


@pytest.mark.parametrize("layout", ["folder", "labelmap"])
def test_cli_end_to_end(dataset: dict[str, Path], layout: str, capsys) -> None:
    out = dataset["root"] / f"out_{layout}"
    code, stdout, _ = run(["--pred", str(dataset["pred"]), "--gt", str(dataset[layout]), "--out", str(out)], capsys)
    assert code == 0
    for name in ("metrics_per_case.csv", "metrics_per_case.json", "summary.csv", "summary.json", "summary.txt"):
        assert (out / name).is_file()
    rows = read_csv(out / "metrics_per_case.csv")
    assert len(rows) == 2 * len(HANSEG_OAR_NAMES)
    # case_01: Brainstem exact, SpinalCord moved 1 voxel (0.8 mm) along x, Parotid_L not predicted.
    r = rows[("case_01", "Brainstem")]
    assert (float(r["dsc"]), float(r["hd95_mm"]), float(r["surface_dice"])) == (1.0, 0.0, 1.0)
    r = rows[("case_01", "SpinalCord")]
    assert float(r["dsc"]) == pytest.approx(5 / 6, abs=1e-5)
    assert float(r["hd95_mm"]) == pytest.approx(0.8, abs=1e-5)
    assert float(r["surface_dice"]) == 1.0
    r = rows[("case_01", "Parotid_L")]
    assert r["status"] == "ok" and float(r["dsc"]) == 0.0 and r["hd95_mm"] == "inf"
    assert float(r["hd95_penalised_mm"]) == pytest.approx(DIAGONAL, rel=1e-5)
    # case_02: Brainstem moved 2 voxels (1.6 mm); Parotid_L predicted without ground truth -> skipped, listed.
    r = rows[("case_02", "Brainstem")]
    assert float(r["dsc"]) == pytest.approx(0.8, abs=1e-5)
    assert float(r["hd95_mm"]) == pytest.approx(1.6, abs=1e-5)
    r = rows[("case_02", "Parotid_L")]
    assert r["status"] == "missing_gt" and r["dsc"] == "" and float(r["pred_volume_ml"]) > 0
    assert rows[("case_02", "Glottis")]["status"] == "missing_gt"

    per_case = json.loads((out / "metrics_per_case.json").read_text())
    c1 = per_case["cases"]["case_01"]
    assert c1["oars"]["Parotid_L"]["hd95_mm"] == "inf"
    assert c1["penalty_hd95_mm"] == pytest.approx(DIAGONAL)
    assert "image diagonal" in per_case["metadata"]["hd95_penalty"]
    assert per_case["metadata"]["surface_dice_tolerance_mm"] == 2.0
    summary = json.loads((out / "summary.json").read_text())
    assert "Parotid_L" in summary["missing_gt"]["case_02"]
    parotid = summary["per_oar"]["Parotid_L"]
    assert (parotid["n"], parotid["n_missing_gt"], parotid["n_empty_prediction"]) == (1, 1, 1)
    assert parotid["hd95_mm"]["mean"] == pytest.approx(DIAGONAL)
    assert parotid["hd95_median_raw_mm"] == "inf"
    brainstem = summary["per_oar"]["Brainstem"]
    assert brainstem["dsc"]["mean"] == pytest.approx(0.9)
    assert brainstem["dsc"]["sd"] == pytest.approx(np.std([1.0, 0.8], ddof=1))
    assert summary["all"]["n"] == 5
    # Printed table: one line per scored OAR, the ALL line, and the OARs without ground truth.
    assert "Brainstem" in stdout and "0.900 ± 0.141" in stdout and "ALL" in stdout
    assert "Missing ground truth (not scored): case_02: Parotid_L" in stdout
    assert stdout.strip() == (out / "summary.txt").read_text().strip()


def test_both_layouts_give_the_same_numbers(dataset: dict[str, Path]) -> None:
    a = evaluate_folder(dataset["pred"], dataset["folder"])
    b = evaluate_folder(dataset["pred"], dataset["labelmap"])
    rows_a = [(r.case_id, r.oar, r.status, r.dsc, r.hd95_mm, r.surface_dice) for c in a.cases for r in c.oars]
    rows_b = [(r.case_id, r.oar, r.status, r.dsc, r.hd95_mm, r.surface_dice) for c in b.cases for r in c.oars]
    assert rows_a == rows_b


@pytest.mark.parametrize("layout", ["folder", "labelmap"])
@pytest.mark.parametrize(
    ("change", "expected"),
    [({"spacing_xyz": (0.81, 0.8, 2.0)}, "spacing"), ({"origin_xyz": (-12.0, 30.5, 5.0)}, "origin")],
)
def test_geometry_mismatch_is_an_error_naming_both_files(
    dataset: dict[str, Path], layout: str, change: dict, expected: str, capsys
) -> None:
    _, pred = standard_cases()
    bad = write_predictions(dataset["root"] / "bad", pred, **change)
    code, _, err = run(["--pred", str(bad), "--gt", str(dataset[layout]), "--out", str(dataset["root"] / "o")],
                       capsys)
    assert code == 1
    message = err.strip().splitlines()
    assert len(message) == 1 and expected in message[0] and "never resamples" in message[0]
    assert str(bad / "case_01.mha") in message[0]
    gt_file = "case_01.nii.gz" if layout == "labelmap" else "case_01_OAR_"
    assert gt_file in message[0]
    assert not (dataset["root"] / "o" / "summary.json").exists()


def test_size_mismatch_is_an_error(dataset: dict[str, Path], capsys) -> None:
    bad = dataset["root"] / "bad"
    bad.mkdir()
    sitk.WriteImage(make_image(np.zeros((20, 36, 41), np.uint8)), str(bad / "case_01.mha"))
    code, _, err = run(["--pred", str(bad), "--gt", str(dataset["labelmap"]), "--out", str(dataset["root"] / "o"),
                        "--allow-missing"], capsys)
    assert code == 1 and "size (41, 36, 20) vs (40, 36, 20)" in err


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing_pred_dir", "prediction folder does not exist"),
        ("bad_values", "label values outside 0..30: [31]"),
        ("unmatched", "no prediction matches a ground-truth case"),
        ("case_without_prediction", "no prediction for 1 case(s): case_02"),
        ("float_labels", "must hold integer label values"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(dataset: dict[str, Path], setup: str, expected: str, capsys) -> None:
    gt, pred = standard_cases()
    folder = dataset["root"] / setup
    if setup == "bad_values":
        pred["case_01"][0, 0, 0] = 31
        write_predictions(folder, pred)
    elif setup == "unmatched":
        write_predictions(folder, {"other_1": pred["case_01"]})
    elif setup == "case_without_prediction":
        write_predictions(folder, {"case_01": pred["case_01"]})
    elif setup == "float_labels":
        write_predictions(folder, {k: v.astype(np.float32) + 0.5 for k, v in pred.items()})
    code, _, err = run(["--pred", str(folder), "--gt", str(dataset["folder"]), "--out", str(dataset["root"] / "o")],
                       capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("evaluation: error: ")
    assert expected in err


def test_allow_missing_scores_the_others(dataset: dict[str, Path], capsys) -> None:
    _, pred = standard_cases()
    folder = write_predictions(dataset["root"] / "one", {"case_01": pred["case_01"]})
    out = dataset["root"] / "o"
    code, _, _ = run(["--pred", str(folder), "--gt", str(dataset["folder"]), "--out", str(out), "--allow-missing"],
                     capsys)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == ["case_01"] and summary["cases_without_prediction"] == ["case_02"]


def test_subprocess_entry_point_and_exit_status(dataset: dict[str, Path]) -> None:
    cmd = [sys.executable, "-m", "evaluation", "-q", "--pred", str(dataset["pred"]), "--gt", str(dataset["labelmap"]),
           "--out", str(dataset["root"] / "sub")]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "SpinalCord" in ok.stdout and ok.stderr == ""
    bad = subprocess.run(cmd[:5] + [str(dataset["root"] / "nope")] + cmd[6:], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_qa_flag_writes_pictures_for_prediction_and_ground_truth(dataset: dict[str, Path], capsys) -> None:
    out = dataset["root"] / "o"
    code, _, _ = run(["-q", "--pred", str(dataset["pred"]), "--gt", str(dataset["folder"]), "--out", str(out),
                      "--qa"], capsys)
    assert code == 0
    names = sorted(p.name for p in (out / "qa").iterdir())
    assert names == sorted(f"case_0{i}_{w}_{k}" for i in (1, 2) for w in ("pred", "gt")
                           for k in ("qa.png", "volumes.json"))
    volumes = json.loads((out / "qa" / "case_01_gt_volumes.json").read_text())
    assert volumes["volumes_ml"]["Brainstem"] == pytest.approx(6 * 10 * 10 * 0.8 * 0.8 * 2.0 / 1000)


def test_name_matching_rules() -> None:
    assert case_key("case_01_IMG_CT") == case_key("Case-1") == "case_01"
    assert names_match("case_01_IMG_CT", "case_1")
    assert not names_match("case_1", "case_10")
    assert names_match("pt_5_pred", "pt_5") and names_match("pt_5", "pt_5")
    assert not names_match("pt_5", "pt_50")


def test_ambiguous_and_duplicate_predictions_are_errors(dataset: dict[str, Path]) -> None:
    ground_truth = discover_ground_truth(dataset["labelmap"])
    with pytest.raises(InputError, match="second prediction for case case_01"):
        match_cases([Path("case_01.mha"), Path("case_1_pred.nii.gz")], ground_truth)
    matching = match_cases([Path("case_01_IMG_CT.mha"), Path("junk.mha")], ground_truth)
    assert [p.case_id for p in matching.pairs] == ["case_01"]
    assert matching.unmatched_predictions == [Path("junk.mha")] and matching.cases_without_prediction == ["case_02"]


def test_unknown_mask_files_are_ignored_and_empty_masks_listed(dataset: dict[str, Path]) -> None:
    folder = dataset["folder"] / "case_02"
    empty = make_image(np.zeros((20, 36, 40), np.uint8))
    sitk.WriteImage(empty, str(folder / "case_02_OAR_Lips.seg.nrrd"))
    sitk.WriteImage(empty, str(folder / "case_02_OAR_NotAnOrgan.seg.nrrd"))
    result = evaluate_folder(dataset["pred"], dataset["folder"])
    case = {c.case_id: c for c in result.cases}["case_02"]
    lips = next(r for r in case.oars if r.oar == "Lips")
    assert lips.status == "missing_gt" and "empty" in lips.note
    assert discover_ground_truth(dataset["folder"])["case_02"].ignored_files[0].name.startswith("case_02_OAR_NotAn")


@pytest.mark.skipif(not OPENKBP.is_dir(), reason=SHARED_SKIP_REASON)
def test_realistic_run_on_openkbp_cases(tmp_path: Path, capsys) -> None:
    """Two real H&N CTs with clinical OARs (mapped to HaN-Seg names); prediction = GT moved one voxel along x."""
    mapping = {1: "Brainstem", 2: "SpinalCord", 3: "Parotid_R", 4: "Parotid_L", 5: "Esophagus_S", 6: "Larynx_SG",
               7: "Bone_Mandible"}
    lut = np.zeros(256, np.uint8)
    for k, name in mapping.items():
        lut[k] = HANSEG_LABELS[name]
    cases = sorted(p for p in OPENKBP.iterdir() if (p / "oar_labels.nii.gz").is_file())[:2]
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "ct").mkdir()
    spacing_x = {}
    for case in cases:
        labels = sitk.ReadImage(str(case / "oar_labels.nii.gz"))
        gt = lut[sitk.GetArrayFromImage(labels)]
        for folder, array in (("gt", gt), ("pred", np.roll(gt, 1, axis=2))):
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(labels)
            sitk.WriteImage(image, str(tmp_path / folder / f"{case.name}.nii.gz"))
        (tmp_path / "ct" / f"{case.name}_0000.nii.gz").symlink_to(case / "ct.nii.gz")
        spacing_x[case.name] = labels.GetSpacing()[0]
    out = tmp_path / "out"
    code, stdout, _ = run(["-q", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out),
                           "--qa", "--images", str(tmp_path / "ct")], capsys)
    assert code == 0
    rows = read_csv(out / "metrics_per_case.csv")
    for (case_id, oar), r in rows.items():
        if oar in mapping.values():
            assert r["status"] == "ok"
            assert 0.3 < float(r["dsc"]) < 1.0
            # A one-voxel move along x: every surface voxel has the moved copy of itself one x-voxel away.
            assert 0 < float(r["hd95_mm"]) <= spacing_x[case_id] * (1 + 1e-6)
        else:
            assert r["status"] == "missing_gt"
    assert all(math.isfinite(float(r["hd95_mm"])) for r in rows.values() if r["status"] == "ok")
    assert len(list((out / "qa").glob("*_qa.png"))) == 4
    assert "Bone_Mandible" in stdout

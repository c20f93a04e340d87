"""training.ab_table: the paired A/B table of recipe changes, from hand-made cross-validation reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import ab_table


def _report(path: Path, per_case: dict, folds: tuple[str, ...] = ("0",)) -> Path:
    path.write_text(json.dumps({"folds": list(folds), "per_case": per_case, "table": {}}))
    return path


def _scores(**dice: float) -> dict:
    return {oar: {"dice": d, "dice_lcc": d, "hd95": 1.0, "hd95_lcc": 1.0} for oar, d in dice.items()}


def test_arms_are_compared_case_by_case_on_the_cases_both_scored(tmp_path, capsys):
    control = _report(tmp_path / "a.json", {"pt_1": _scores(Brainstem=0.5, Larynx_SG=0.4),
                                            "pt_2": _scores(Brainstem=0.7),
                                            "pt_3": _scores(Brainstem=0.9)})
    other = _report(tmp_path / "b.json", {"pt_1": _scores(Brainstem=0.6, Larynx_SG=0.4),
                                          "pt_2": _scores(Brainstem=0.6)})  # pt_3 missing: not paired
    card = tmp_path / "model"
    card.mkdir()
    (card / "README.md").write_text("# card\n\n## Post-processing\nx\n\n## Held-out evaluation\ny\n")
    out = tmp_path / "ab.json"
    assert ab_table.main(["--arm", "control", "600", str(control), "--arm", "2.5-D", "600", str(other),
                          "--card", str(card), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    brainstem = result["rows"]["2.5-D"]["Brainstem"]
    assert brainstem["n"] == 2 and brainstem["better"] == 1 and brainstem["worse"] == 1
    assert brainstem["delta"] == pytest.approx(0.0) and brainstem["control"] == pytest.approx(0.6)
    assert result["rows"]["2.5-D"]["Larynx_SG"] == {"n": 1, "control": 0.4, "dice": 0.4, "delta": 0.0,
                                                    "better": 0, "worse": 0}
    assert result["oars"] == ["Brainstem", "Larynx_SG"]  # label order
    printed = capsys.readouterr().out
    assert "| 2.5-D | 600 | 0.600 (+0.000; 1/1) | 0.400 (+0.000; 0/0) |" in printed
    text = (card / "README.md").read_text()
    assert text.index("<!-- ab:begin -->") < text.index("## Post-processing") and "| 2.5-D | 600 |" in text


def test_arms_on_different_folds_or_a_bad_report_are_refused(tmp_path):
    a = _report(tmp_path / "a.json", {"pt_1": _scores(Brainstem=0.5)}, folds=("0",))
    b = _report(tmp_path / "b.json", {"pt_1": _scores(Brainstem=0.5)}, folds=("1",))
    with pytest.raises(ValueError, match="not the same cases"):
        ab_table.table([ab_table.Arm.from_report("a", 1, a), ab_table.Arm.from_report("b", 1, b)])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a training.determine_postprocessing report"):
        ab_table.Arm.from_report("x", 1, tmp_path / "bad.json")
    assert ab_table.main(["--arm", "a", "1", str(a), "--arm", "x", "1", str(tmp_path / "bad.json")]) == 2


def test_a_two_fold_report_is_compared_on_one_folds_cases_only(tmp_path, monkeypatch):
    """``--folds 0``: the shipped model's report of folds 0 and 1 against a one-fold arm, on fold 0's cases; an arm
    that never scored the fold is refused."""
    both = _report(tmp_path / "both.json", {"pt_1": _scores(Brainstem=0.5), "pt_2": _scores(Brainstem=0.9)},
                   folds=("0", "1"))
    one = _report(tmp_path / "one.json", {"pt_1": _scores(Brainstem=0.7)}, folds=("0",))
    monkeypatch.setattr(ab_table, "fold_validation_cases", lambda folds: {"0": ["pt_1"], "1": ["pt_2"]})
    out = tmp_path / "ab.json"
    assert ab_table.main(["--arm", "shipped", "9100", str(both), "--arm", "3-D", "10100", str(one),
                          "--folds", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["folds"] == ["0"]
    assert result["rows"]["shipped"]["Brainstem"]["dice"] == pytest.approx(0.5)  # pt_2 (fold 1) left out
    assert result["rows"]["3-D"]["Brainstem"]["delta"] == pytest.approx(0.2)
    assert ab_table.main(["--arm", "a", "1", str(one), "--arm", "b", "1", str(both), "--folds", "1"]) == 2
    with pytest.raises(ValueError, match=r"not the same cases"):  # without --folds the fold sets must match
        ab_table.table([ab_table.Arm.from_report("a", 1, both), ab_table.Arm.from_report("b", 1, one)])


def test_fold_validation_cases_are_the_trainers_split():
    """The real split of the shared train-pats: 5 disjoint folds of nnU-Net's generate_crossval_split."""
    pytest.importorskip("nnunetv2", reason="nnunetv2 is installed for training/tests only")
    folds = ab_table.fold_validation_cases(["0", "1"])
    assert len(folds["0"]) == 34 and len(folds["1"]) == 34 and not set(folds["0"]) & set(folds["1"])

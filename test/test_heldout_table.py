"""The model card's held-out table (training.evaluate_heldout): its rows, with and without a baseline model."""

from __future__ import annotations

from typing import Any

from training.evaluate_heldout import heldout_markdown, table_row


def test_table_row_keeps_empty_cells_one_space_wide() -> None:
    assert table_row(["**mean**", "", "0.5", ""]) == "| **mean** | | 0.5 | |"
    assert table_row(["a", "1"], ["0.7", "-"]) == "| a | 1 | 0.7 | - |"


def _summary(dsc: float | None, hd: float | None) -> dict[str, Any]:
    per = {"n": 2, "dsc": {"mean": dsc}, "hd95_mm": {"mean": hd}}
    return {"per_oar": {"Brainstem": per}, "all": {"dsc": {"mean": dsc}, "hd95_mm": {"mean": hd}}}


def _results(dsc: float | None) -> dict[str, Any]:
    return {"cases": ["case_1.nii.gz"], "heldout_note": {"cases": "held out", "t1": ""},
            "with_t1": {"summary": _summary(dsc, 3.25), "seconds_per_case": 10},
            "without_t1": {"summary": _summary(None, None), "seconds_per_case": 9}}


def test_heldout_table_rows_with_and_without_a_baseline() -> None:
    rows = [line for line in heldout_markdown(_results(0.8), ["Brainstem"]).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| Brainstem | 2 | 0.800 | - | 3.2 | - |",
                        "| **mean of the per-OAR means** | | **0.800** | **-** | | |",
                        "| mean (all OAR x case pairs) | | 0.800 | - | 3.2 | - |"]
    rows = [line for line in heldout_markdown(_results(0.8), ["Brainstem"], _results(0.5)).splitlines()
            if line.startswith("| ")]
    assert rows[1:] == ["| Brainstem | 2 | 0.800 | - | 3.2 | - | 0.500 | - |",
                        "| **mean of the per-OAR means** | | **0.800** | **-** | | | 0.500 | - |",
                        "| mean (all OAR x case pairs) | | 0.800 | - | 3.2 | - | 0.500 | - |"]

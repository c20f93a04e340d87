"""Paired Wilcoxon comparison of two prediction sets (evaluation.compare and the CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from evaluation.__main__ import main
from evaluation.compare import CASE_MEAN, compare_rows, holm, rank_safe_differences, wilcoxon_paired
from evaluation.evaluate import OarResult
from test.test_evaluation_support import BOXES, label_map, standard_cases, write_dataset, write_predictions


def rows(values: dict[str, list[tuple[float, float]]]) -> list[OarResult]:
    """OarResult rows from {oar: [(dsc, hd95), ...] per case}; penalised HD95 = 500 mm for inf."""
    out = []
    for oar, per_case in values.items():
        for i, (dsc, hd) in enumerate(per_case):
            out.append(OarResult(f"case_{i:02d}", oar, 0, "ok", dsc=dsc, hd95_mm=hd,
                                 hd95_penalised_mm=hd if math.isfinite(hd) else 500.0, surface_dice=dsc))
    return out


def test_consistently_better_set_is_significant_with_exact_p() -> None:
    rng = np.random.default_rng(0)
    dsc_b = rng.uniform(0.5, 0.8, 10)
    hd_b = rng.uniform(3, 8, 10)
    a = rows({"Brainstem": list(zip(dsc_b + rng.uniform(0.01, 0.1, 10), hd_b - rng.uniform(0.1, 1.0, 10)))})
    b = rows({"Brainstem": list(zip(dsc_b, hd_b))})
    tests = {(t.scope, t.metric): t for t in compare_rows(a, b)}
    for metric in ("dsc", "hd95_mm"):
        t = tests[("Brainstem", metric)]
        # All 10 differences have one sign: exact two-sided p = 2 / 2^10.
        assert t.p_value == pytest.approx(2 / 1024)
        assert t.better == "A" and t.n_pairs == 10 and t.n_nonzero == 10
    assert tests[("Brainstem", "dsc")].w_plus == 55 and tests[("Brainstem", "hd95_mm")].w_minus == 55
    # Swapping the sets swaps the verdict.
    swapped = {(t.scope, t.metric): t for t in compare_rows(b, a)}
    assert swapped[("Brainstem", "dsc")].better == "B" and swapped[("Brainstem", "hd95_mm")].better == "B"
    assert tests[(CASE_MEAN, "dsc")].better == "A"


def test_matches_scipy_on_finite_values() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.7, 0.1, 14), rng.normal(0.72, 0.1, 14)
    _, _, _, statistic, p, _ = wilcoxon_paired(a, b, higher_is_better=True)
    reference = stats.wilcoxon(a, b)
    assert p == pytest.approx(reference.pvalue) and statistic == pytest.approx(reference.statistic)


def test_infinite_hd95_ranks_as_the_largest_difference() -> None:
    d = rank_safe_differences(np.array([math.inf, 1.0, math.inf, 5.0]), np.array([math.inf, 2.0, 3.0, math.inf]))
    assert d[0] == 0 and d[1] == -1.0 and d[2] > 2 * 1.0 and d[3] == -d[2]
    # With one infinite value the test equals the test with inf replaced by any value beyond the others.
    a = np.array([2.0, 3.0, math.inf, 4.0, 2.5, 3.5, 6.0, 4.5])
    b = np.array([2.5, 3.2, 3.0, 4.4, 2.9, 3.1, 6.5, 4.0])
    big = np.where(np.isinf(a), 1e6, a)
    _, _, _, _, p_inf, better_inf = wilcoxon_paired(a, b, higher_is_better=False)
    _, _, _, _, p_big, _ = wilcoxon_paired(big, b, higher_is_better=False)
    assert p_inf == pytest.approx(p_big)
    assert better_inf == "none"
    # Several infinite differences tie with each other (they share the top ranks).
    a[7] = math.inf
    ranks = stats.rankdata(np.abs(rank_safe_differences(a, b)))
    assert list(ranks[np.isinf(a)]) == [7.5, 7.5]
    n_nonzero, w_plus, w_minus, _, _, _ = wilcoxon_paired(a, b, higher_is_better=False)
    assert n_nonzero == 8 and w_plus + w_minus == 36 and w_plus >= 15


def test_all_equal_and_empty() -> None:
    assert wilcoxon_paired([0.5, 0.6], [0.5, 0.6], True)[4] == 1.0
    assert wilcoxon_paired([], [], True)[4] is None


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])


def test_only_pairs_scored_in_both_sets_are_compared() -> None:
    a = rows({"Brainstem": [(0.8, 2.0), (0.7, 3.0)], "Glottis": [(0.5, 4.0)]})
    b = rows({"Brainstem": [(0.6, 3.0), (0.5, 5.0)]})
    tests = compare_rows(a, b)
    assert {t.scope for t in tests} == {"Brainstem", CASE_MEAN}
    assert all(t.n_pairs == 2 for t in tests)


@pytest.fixture
def two_sets(tmp_path: Path) -> dict[str, Path]:
    gt, pred = standard_cases()
    worse = {k: label_map({n: b for n, b in BOXES.items() if (k, n) != ("case_02", "Parotid_L")},
                          {"Brainstem": 3, "SpinalCord": 2}) for k in gt}
    return {
        "gt": write_dataset(tmp_path, "labelmap", gt),
        "a": write_predictions(tmp_path / "model_a", pred),
        "b": write_predictions(tmp_path / "model_b", worse),
        "root": tmp_path,
    }


def test_compare_subcommand_end_to_end(two_sets: dict[str, Path], capsys) -> None:
    out = two_sets["root"] / "cmp"
    code = main(["compare", "-q", "--a", str(two_sets["a"]), "--b", str(two_sets["b"]), "--gt", str(two_sets["gt"]),
                 "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert (out / "A" / "metrics_per_case.csv").is_file() and (out / "B" / "summary.json").is_file()
    result = json.loads((out / "comparison.json").read_text())
    assert (result["a"], result["b"]) == ("model_a", "model_b")
    tests = {(t["scope"], t["metric"]): t for t in result["tests"]}
    assert set(tests) == {(s, m) for s in ("Brainstem", "SpinalCord", "Parotid_L", CASE_MEAN)
                          for m in ("dsc", "hd95_mm")}
    brainstem = tests[("Brainstem", "dsc")]
    assert brainstem["n_pairs"] == 2 and brainstem["mean_a"] > brainstem["mean_b"]
    # Parotid_L: A's prediction is empty in case_01 (HD95 inf), B's is not.
    assert tests[("Parotid_L", "hd95_mm")]["mean_a"] > tests[("Parotid_L", "hd95_mm")]["mean_b"]
    assert "A = model_a, B = model_b" in stdout and "case_mean" in stdout
    assert (out / "comparison.csv").is_file() and (out / "comparison.txt").read_text().strip() == stdout.strip()

    # Comparing the two evaluation output folders again needs no ground truth and gives the same tests.
    again = two_sets["root"] / "cmp2"
    assert main(["compare", "-q", "--a", str(out / "A"), "--b", str(out / "B"), "--out", str(again),
                 "--name-a", "model_a", "--name-b", "model_b"]) == 0
    capsys.readouterr()
    assert json.loads((again / "comparison.json").read_text())["tests"] == result["tests"]


def test_compare_flag_of_the_main_command(two_sets: dict[str, Path], capsys) -> None:
    out = two_sets["root"] / "eval"
    code = main(["-q", "--pred", str(two_sets["a"]), "--gt", str(two_sets["gt"]), "--out", str(out),
                 "--compare", str(two_sets["b"])])
    stdout = capsys.readouterr().out
    assert code == 0
    assert (out / "summary.json").is_file() and (out / "compare_B" / "summary.json").is_file()
    assert (out / "comparison.json").is_file() and "Paired Wilcoxon" in stdout


def test_compare_without_ground_truth_for_a_prediction_folder_is_an_error(two_sets: dict[str, Path], capsys) -> None:
    code = main(["compare", "--a", str(two_sets["a"]), "--b", str(two_sets["b"]), "--out",
                 str(two_sets["root"] / "x")])
    err = capsys.readouterr().err
    assert code == 1 and "give --gt" in err and len(err.strip().splitlines()) == 1

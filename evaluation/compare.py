"""Paired comparison of two prediction sets on the same ground truth: Wilcoxon signed-rank tests per OAR.

The HaN-Seg challenge ranked participants per metric (DSC, HD95) with pairwise Wilcoxon signed-rank tests. This
module runs the same test for two prediction sets A and B:

- per OAR and metric, over the cases where that OAR has ground truth in both evaluations (pairs = cases);
- once more on the per-case means over OARs (``scope = "case_mean"``; the OARs scored in both sets), the single
  overall test with independent units.

Test: ``scipy.stats.wilcoxon`` on the differences A - B, two-sided, zero differences dropped (Wilcoxon's
convention), exact distribution when scipy can use it (n <= 50, no ties), otherwise the normal approximation.
An empty prediction has HD95 = inf; only ranks of |A - B| and signs enter the test, so a difference with one infinite
side is replaced by a value larger than every finite difference (it ranks highest, ties with the other infinite
ones) and inf - inf counts as 0. Means shown next to the tests use the penalised HD95 (image diagonal).
``better`` names the set with the better metric (higher DSC, lower HD95) when p < alpha, else ``none``;
``p_holm`` is Holm's step-down adjustment over the per-OAR tests of one metric. With fewer than 6 cases no
two-sided p-value can fall below 0.05.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from contract.labels import HANSEG_OAR_NAMES
from evaluation.evaluate import STATUS_OK, OarResult, csv_text, json_value, write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05

METRICS: dict[str, tuple[str, str, bool]] = {
    "dsc": ("dsc", "dsc", True),
    "hd95_mm": ("hd95_mm", "hd95_penalised_mm", False),
}
"""metric -> (field used for the test, field used for the means, higher is better)."""

CASE_MEAN = "case_mean"


@dataclass
class PairedTest:
    """One Wilcoxon signed-rank test of metric values of A against B.

    ``median_difference`` is the median of A - B (penalised HD95 for ``hd95_mm``, so it stays finite);
    ``statistic`` is scipy's (min(W+, W-) for the two-sided test); ``w_plus``/``w_minus`` are the rank sums of the
    positive and negative differences.
    """

    scope: str
    metric: str
    n_pairs: int
    n_nonzero: int
    mean_a: float | None
    mean_b: float | None
    median_difference: float | None
    w_plus: float
    w_minus: float
    statistic: float | None
    p_value: float | None
    p_holm: float | None
    better: str


def rank_safe_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A - B with +inf handled for a rank test: inf - inf = 0, inf - x = +BIG, x - inf = -BIG.

    BIG exceeds every finite |difference|, so the ranks of |A - B| and the signs are those the infinite values imply.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.isnan(a).any() or np.isnan(b).any() or np.isneginf(a).any() or np.isneginf(b).any():
        raise ValueError("metric values must be numbers or +inf")
    fin = np.isfinite(a) & np.isfinite(b)
    d = np.zeros(a.shape, dtype=float)
    d[fin] = a[fin] - b[fin]
    big = 2.0 * float(np.abs(d[fin]).max(initial=0.0)) + 1.0
    d[np.isinf(a) & np.isfinite(b)] = big
    d[np.isfinite(a) & np.isinf(b)] = -big
    return d


def wilcoxon_paired(
    a: Sequence[float], b: Sequence[float], higher_is_better: bool, alpha: float = DEFAULT_ALPHA
) -> tuple[int, float, float, float | None, float | None, str]:
    """Two-sided Wilcoxon signed-rank test of paired values (``+inf`` allowed, see the module docstring).

    Returns:
        (n_nonzero, W+, W-, statistic, p_value, better) with ``better`` in {"A", "B", "none"};
        the p-value is 1.0 when every difference is zero and None when there are no pairs.
    """
    d = rank_safe_differences(np.asarray(a), np.asarray(b))
    nonzero = d[d != 0]
    if d.size == 0:
        return 0, 0.0, 0.0, None, None, "none"
    if nonzero.size == 0:
        return 0, 0.0, 0.0, None, 1.0, "none"
    ranks = stats.rankdata(np.abs(nonzero))
    w_plus, w_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    p = float(res.pvalue)
    better = "none"
    if p < alpha and w_plus != w_minus:
        a_larger = w_plus > w_minus
        better = "A" if a_larger == higher_is_better else "B"
    return int(nonzero.size), w_plus, w_minus, float(res.statistic), p, better


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None entries stay None and do not count)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])  # type: ignore[arg-type, return-value]
    m = len(order)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * float(p_values[i])))  # type: ignore[arg-type]
        adjusted[i] = running
    return adjusted


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def compare_rows(
    rows_a: Sequence[OarResult], rows_b: Sequence[OarResult], alpha: float = DEFAULT_ALPHA
) -> list[PairedTest]:
    """Per-OAR and case-mean Wilcoxon tests of A against B (see the module docstring).

    Only (case, OAR) pairs scored in both A and B enter; others are logged.
    """
    a = {(r.case_id, r.oar): r for r in rows_a if r.status == STATUS_OK}
    b = {(r.case_id, r.oar): r for r in rows_b if r.status == STATUS_OK}
    common = sorted(set(a) & set(b))
    if set(a) ^ set(b):
        log.warning(
            "%d (case, OAR) pairs are scored in only one of the two sets (different cases or ground truth); "
            "they are left out of the comparison", len(set(a) ^ set(b)),
        )
    tests: list[PairedTest] = []
    for metric, (test_field, mean_field, higher) in METRICS.items():
        per_metric: list[PairedTest] = []
        for oar in HANSEG_OAR_NAMES:
            keys = [k for k in common if k[1] == oar]
            if not keys:
                continue
            per_metric.append(_test(oar, metric, [a[k] for k in keys], [b[k] for k in keys], test_field, mean_field,
                                    higher, alpha))
        for t, p in zip(per_metric, holm([t.p_value for t in per_metric])):
            t.p_holm = p
        tests.extend(per_metric)
        cases = sorted({k[0] for k in common})
        case_a = [_CaseMean(c, [a[k] for k in common if k[0] == c]) for c in cases]
        case_b = [_CaseMean(c, [b[k] for k in common if k[0] == c]) for c in cases]
        if cases:
            tests.append(_test(CASE_MEAN, metric, case_a, case_b, mean_field, mean_field, higher, alpha))
    return tests


class _CaseMean:
    """Per-case mean of each metric over the given OAR rows (penalised HD95), duck-typed like OarResult."""

    def __init__(self, case_id: str, rows: Sequence[OarResult]) -> None:
        self.case_id = case_id
        self.dsc = float(np.mean([r.dsc for r in rows]))
        self.hd95_penalised_mm = float(np.mean([r.hd95_penalised_mm for r in rows]))


def _test(scope: str, metric: str, ra: Sequence[Any], rb: Sequence[Any], test_field: str, mean_field: str,
          higher: bool, alpha: float) -> PairedTest:
    va = [float(getattr(r, test_field)) for r in ra]
    vb = [float(getattr(r, test_field)) for r in rb]
    ma = [float(getattr(r, mean_field)) for r in ra]
    mb = [float(getattr(r, mean_field)) for r in rb]
    n_nonzero, w_plus, w_minus, statistic, p, better = wilcoxon_paired(va, vb, higher, alpha)
    return PairedTest(
        scope, metric, len(va), n_nonzero, _mean(ma), _mean(mb),
        float(np.median(np.subtract(ma, mb))) if ma else None, w_plus, w_minus, statistic, p, None, better,
    )


def format_comparison(tests: Sequence[PairedTest], name_a: str, name_b: str, alpha: float = DEFAULT_ALPHA) -> str:
    """Printable table: one line per OAR (and the case-mean line) with both metrics."""
    by = {(t.scope, t.metric): t for t in tests}
    scopes = [s for s in [*HANSEG_OAR_NAMES, CASE_MEAN] if any((s, m) in by for m in METRICS)]
    head = (f"{'OAR':<17}{'n':>4}  {'DSC A':>6} {'DSC B':>6} {'p':>8} {'better':>6}   "
            f"{'HD95 A':>7} {'HD95 B':>7} {'p':>8} {'better':>6}")
    lines = [
        f"Paired Wilcoxon signed-rank tests (two-sided, alpha {alpha:g}): A = {name_a}, B = {name_b}; "
        "HD95 means use the image-diagonal penalty",
        head,
        "-" * len(head),
    ]

    def cell(t: PairedTest | None, digits: int, width: int) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.{digits}f}"

        if t is None:
            return f"{'-':>{width}} {'-':>{width}} {'-':>8} {'-':>6}"
        p = "-" if t.p_value is None else f"{t.p_value:.2g}"
        return f"{fmt(t.mean_a):>{width}} {fmt(t.mean_b):>{width}} {p:>8} {t.better:>6}"

    for scope in scopes:
        d, h = by.get((scope, "dsc")), by.get((scope, "hd95_mm"))
        n = (d or h).n_pairs  # type: ignore[union-attr]
        if scope == CASE_MEAN:
            lines.append("-" * len(head))
        lines.append(f"{scope:<17}{n:>4}  {cell(d, 3, 6)}   {cell(h, 2, 7)}")
    wins = {m: (sum(t.better == "A" for t in tests if t.metric == m and t.scope != CASE_MEAN),
                sum(t.better == "B" for t in tests if t.metric == m and t.scope != CASE_MEAN)) for m in METRICS}
    lines.append(
        "OARs significantly better (unadjusted p; Holm-adjusted p in comparison.json/csv): "
        + "; ".join(f"{m}: A {wa}, B {wb}" for m, (wa, wb) in wins.items())
    )
    if tests and max(t.n_pairs for t in tests) < 6:
        lines.append("Note: with fewer than 6 paired cases no two-sided p-value can fall below 0.05.")
    return "\n".join(lines)


def write_comparison(
    tests: Sequence[PairedTest], out_dir: str | Path, name_a: str, name_b: str, alpha: float = DEFAULT_ALPHA,
    sources: dict[str, str] | None = None,
) -> list[Path]:
    """Write ``comparison.json``, ``comparison.csv`` and ``comparison.txt`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    fields = list(PairedTest.__dataclass_fields__)
    payload = {
        "a": name_a,
        "b": name_b,
        "sources": sources or {},
        "alpha": alpha,
        "test": "scipy.stats.wilcoxon on A - B, two-sided, zero_method='wilcox'; inf handled by rank (see README)",
        "tests": [asdict(t) for t in tests],
    }
    files = {
        "comparison.json": json.dumps(json_value(payload), indent=1, allow_nan=False) + "\n",
        "comparison.csv": csv_text(fields, ([getattr(t, f) for f in fields] for t in tests)),
        "comparison.txt": format_comparison(tests, name_a, name_b, alpha) + "\n",
    }
    paths = []
    for name, text in files.items():
        write_text_atomic(out_dir / name, text)
        paths.append(out_dir / name)
    return paths

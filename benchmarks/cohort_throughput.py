"""Cohort throughput: cases per minute for the sequential engine and for 1 and 2 local Ray actors, and the
model-load cost that one process for the whole cohort saves per case against one process per case.

Each candidate is one ``process.py`` run in a fresh subprocess over the same cohort (``--cases`` small real
OpenKBP CTs, 64 x 64 x 12 voxels, test/cohort_support.py), every process and actor on one thread. Two rates:
``wall`` from process start to exit (Ray start and model loads included), ``steady`` over the span in which cases
ran (first case start to last case end, from the manifest). The one-process-per-case cost is measured on
``--single`` cases, each run alone (its own process: start, imports, model load, the case).

    python -m benchmarks.cohort_throughput [--model DIR] [--cases 12] [--single 3] [--workers 1 2]

The table goes to stdout; its LAST LINE gives the rates and the saving per case.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks.monitor import run_monitored
from cohort.manifest import latest_records

log = logging.getLogger("benchmarks.cohort_throughput")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Candidate:
    name: str
    cases: int
    wall_s: float
    steady_s: float
    peak_gb: float

    @property
    def wall_per_min(self) -> float:
        return 60 * self.cases / self.wall_s

    @property
    def steady_per_min(self) -> float:
        return 60 * self.cases / self.steady_s


def run_cohort_command(name: str, dataset: Path, out: Path, model: Path, extra: Sequence[str]) -> Candidate:
    """One ``process.py`` dataset-mode run; fails loudly unless every case was written."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HANSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "process.py"), "--input", str(dataset), "--output", str(out),
           "--model", str(model), "--no-progress", *extra]
    run = run_monitored(cmd, env, cwd=REPO)
    records = latest_records(out)
    if run.returncode != 0 or not records or any(r["status"] != "done" for r in records.values()):
        raise SystemExit(f"{name}: exit {run.returncode}\n{run.stderr[-3000:]}")
    starts = [datetime.fromisoformat(r["started_at"]) for r in records.values()]
    ends = [datetime.fromisoformat(r["finished_at"]) for r in records.values()]
    return Candidate(name, len(records), run.seconds, (max(ends) - min(starts)).total_seconds(), run.peak_tree_gb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder (default: a random-weight 2-fold test model, "
                        "6 x 8 x 8 mm grid, run with one fold and no mirroring)")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--single", type=int, default=3, help="cases run one process each")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actor counts to try")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from test.cohort_support import make_cohort

    with tempfile.TemporaryDirectory(prefix="cohort-bench-") as tmp:
        root = Path(tmp)
        case_ids = make_cohort(root / "dataset", args.cases, corrupt=False)
        model, model_args = args.model, []
        if model is None:
            from devkit.make_test_model import make_test_model

            model = make_test_model(root / "model", folds=2, spacing_zyx=(6.0, 8.0, 8.0))
            model_args = ["--no-tta", "--folds", "0"]
        candidates = [run_cohort_command("sequential (local engine)", root / "dataset", root / "seq", model,
                                         model_args)]
        for workers in args.workers:
            candidates.append(run_cohort_command(f"Ray, {workers} actor(s)", root / "dataset", root / f"ray{workers}",
                                                 model, [*model_args, "--engine", "ray", "--workers", str(workers)]))
        singles = []
        for case_id in case_ids[:args.single]:
            alone = root / f"alone_{case_id}"
            shutil.copytree(root / "dataset" / case_id, alone / case_id)
            singles.append(run_cohort_command(f"alone {case_id}", alone, root / f"out_{case_id}", model, model_args))

    print("| engine | cases | wall s | cases/min (wall) | cases/min (steady) | peak RSS of the tree GB |")
    print("|---|---|---|---|---|---|")
    for c in candidates:
        print(f"| {c.name} | {c.cases} | {c.wall_s:.1f} | {c.wall_per_min:.1f} | {c.steady_per_min:.1f} | "
              f"{c.peak_gb:.2f} |")
    per_process = sum(s.wall_s for s in singles) / len(singles)
    per_case_in_cohort = candidates[0].wall_s / candidates[0].cases
    print(f"\none process per case: {per_process:.1f} s per case (mean of {len(singles)}); in one sequential "
          f"process: {per_case_in_cohort:.1f} s per case (wall / cases)")
    rates = ", ".join(f"{c.name}: {c.steady_per_min:.1f}/min steady, {c.wall_per_min:.1f}/min wall"
                      for c in candidates)
    print(f"RESULT {rates} | saved per case by loading the model once: {per_process - per_case_in_cohort:.1f} s "
          f"({per_process / per_case_in_cohort:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

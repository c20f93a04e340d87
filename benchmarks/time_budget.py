"""Time budget (``process.py --time-budget``): do runs finish inside it, and what do they give up?

Runs the whole command line (``process.py``, CT + a T1-like MR under a known rigid motion, so registration is
part of the run) on a real OpenKBP CT, first once without a budget (the full plan's wall time T), then
``--runs`` times at each budget. Default budgets: 1.25 T (should give up nothing) and halfway between T and the
cheapest plan's time T_min (one fold, tile step 1, no mirroring; measured once): below T, so it must degrade, and
above T_min, so it can be met. The wall time is measured by this parent from process start to exit, which is what
the platform's limit sees.

    python -m benchmarks.time_budget [--model weights] [--case pt_201] [--budgets auto | S1 S2 ...] [--runs 5]

The table goes to stdout; its LAST LINE gives, per budget, how many runs finished inside it and how many degraded.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from benchmarks.nnunet_comparison import OPENKBP, REPO

log = logging.getLogger("benchmarks.time_budget")
GAVE_UP = "time budget: gave up"


@dataclass
class BudgetRun:
    budget: float | None
    seconds: float
    returncode: int
    given_up: list[str]

    @property
    def inside(self) -> bool:
        return self.returncode == 0 and (self.budget is None or self.seconds <= self.budget)


def make_input(case: str, root: Path) -> Path:
    """ROOT/images/ct/<case>.mha and ROOT/images/t1-mri/<case>_t1.mha (T1-like, moved 3 deg / 20 mm)."""
    from preprocessing.synthetic_t1 import make_t1_like

    ct = sitk.Cast(sitk.ReadImage(str(OPENKBP / case / "ct.nii.gz")), sitk.sitkInt16)
    mr = make_t1_like(ct, rotation_deg=(3.0, -2.0, 2.0), translation_mm=(12.0, -20.0, 8.0), spacing_mm=(1.5, 1.5, 3.0),
                      seed=3).image
    for sub, name, image in (("ct", f"{case}.mha", ct), ("t1-mri", f"{case}_t1.mha", mr)):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / "images" / sub / name))
    return root


def run_once(input_root: Path, out: Path, model: Path, budget: float | None, extra: Sequence[str] = ()) -> BudgetRun:
    """One ``process.py`` run in a fresh interpreter; wall seconds from spawn to exit."""
    cmd = [sys.executable, str(REPO / "process.py"), "--input", str(input_root), "--output", str(out), "--model",
           str(model), "--no-progress", *extra]
    if budget is not None:
        cmd += ["--time-budget", f"{budget:.1f}"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    seconds = time.perf_counter() - start
    given_up = [line.split(GAVE_UP, 1)[1].strip() for line in result.stderr.splitlines() if GAVE_UP in line]
    run = BudgetRun(budget, seconds, result.returncode, given_up)
    log.info("budget %s: %.1f s, exit %d, gave up: %s", f"{budget:.0f} s" if budget else "none", seconds,
             result.returncode, "; ".join(given_up) or "nothing")
    if result.returncode != 0:
        log.error("run failed: %s", result.stderr.strip().splitlines()[-1:] or "")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "weights", help="nnU-Net v2 model folder")
    parser.add_argument("--case", default="pt_201", help="OpenKBP case")
    parser.add_argument("--budgets", nargs="+", default=["auto"],
                        help="seconds per case, or 'auto' = 1.25 T and (T + T_min) / 2 (module docstring)")
    parser.add_argument("--runs", type=int, default=5, help="runs per budget")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="time_budget_") as tmp:
        workdir = args.workdir or Path(tmp)
        root = make_input(args.case, workdir / "input")
        full = run_once(root, workdir / "out_full", args.model, None)
        first_fold = sorted(p.name.removeprefix("fold_") for p in args.model.glob("fold_*"))[0]
        cheapest = run_once(root, workdir / "out_min", args.model, None,
                            ["--folds", first_fold, "--tile-step", "1", "--no-tta"])
        if args.budgets == ["auto"]:
            budgets = [round(1.25 * full.seconds), round((full.seconds + cheapest.seconds) / 2, 1)]
        else:
            budgets = [float(b) for b in args.budgets]
        runs = [run_once(root, workdir / f"out_{b}_{i}", args.model, b) for b in budgets for i in range(args.runs)]

    print(f"model: {args.model} | case: {args.case} (CT + T1 MR, registration included) | "
          f"unbudgeted run T: {full.seconds:.1f} s | cheapest plan T_min: {cheapest.seconds:.1f} s")
    print(f"{'budget s':>8} {'run':>3} {'wall s':>7} {'inside':>6}  given up")
    for r in runs:
        print(f"{r.budget:>8g} {runs.index(r) % args.runs + 1:>3} {r.seconds:>7.1f} {str(r.inside):>6}  "
              f"{'; '.join(r.given_up) or '-'}")
    parts = []
    for b in budgets:
        mine = [r for r in runs if r.budget == b]
        worst = max(r.seconds for r in mine)
        parts.append(f"budget {b:g} s: {sum(r.inside for r in mine)}/{len(mine)} inside (slowest {worst:.1f} s), "
                     f"{sum(bool(r.given_up) for r in mine)}/{len(mine)} degraded")
    print("RESULT " + " | ".join(parts))
    return 0 if all(r.inside for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

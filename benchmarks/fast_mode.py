"""Fast CPU mode (``--fast``) against exact mode: speed and per-label agreement on the held-out OpenKBP cases.

Each prediction runs in its own subprocess (whole-process wall time: imports, model loading, preprocessing,
sliding window, export, writing), exact and fast alternating per case so the machine's background load hits both
alike. Inputs are the CT and a T1-like channel already on the CT grid (no registration), as in
``benchmarks.nnunet_comparison``, whose child runner this reuses.

    python -m benchmarks.fast_mode [--model weights] [--cases pt_201 pt_222 pt_225 pt_236] [--repeats 2]

The table goes to stdout; its LAST LINE holds the fast/exact wall-time ratio on case (a) (the first case) and over
all cases, and the minimum per-label Dice of fast against exact over every case.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from benchmarks.nnunet_comparison import REPO, RunResult, per_label_dice, run_child, write_case
from devkit.data import openkbp_case

log = logging.getLogger("benchmarks.fast_mode")

HELD_OUT = ("pt_201", "pt_222", "pt_225", "pt_236")
"""OpenKBP validation-pats: never seen by the shipped model in training."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "weights", help="nnU-Net v2 model folder")
    parser.add_argument("--cases", nargs="+", default=list(HELD_OUT), help="OpenKBP cases (first = case (a))")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode and case (alternating order)")
    parser.add_argument("--mem-cap-gb", type=float, default=16.0, help="kill a run above this process-tree RSS")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # run_child reads these options of the nnunet_comparison command line
    child_args = argparse.Namespace(folds=None, no_tta=False, time_budget=None)

    with tempfile.TemporaryDirectory(prefix="fast_mode_") as tmp:
        workdir = args.workdir or Path(tmp)
        results: dict[str, dict[str, list[RunResult]]] = {}
        for case in args.cases:
            folder = openkbp_case(case)
            if folder is None:
                parser.error(f"OpenKBP case {case} not found (shared full or partial folders, or bundled)")
            ct = sitk.Cast(sitk.ReadImage(str(folder / "ct.nii.gz")), sitk.sitkInt16)
            files = write_case(ct, workdir / "inputs" / case)
            results[case] = {"ours": [], "fast": []}
            for rep in range(args.repeats):
                for who in (("ours", "fast") if rep % 2 == 0 else ("fast", "ours")):
                    out = workdir / "runs" / f"{case}_{who}_{rep}"
                    results[case][who].append(run_child(who, case, files, args.model, out, child_args,
                                                        args.mem_cap_gb))
        return report(results, args)


def report(results: dict[str, dict[str, list[RunResult]]], args: argparse.Namespace) -> int:
    """Print the per-case table and the last line of ratios; exit 1 if a run failed."""
    print(f"model: {args.model} | repeats: {args.repeats} | exact = default mode, fast = --fast")
    print(f"{'case':8} {'exact s (median)':>17} {'fast s (median)':>16} {'fast/exact':>10} {'min Dice':>9} "
          f"{'label':>5} {'mean Dice':>9}  peak RSS GB exact / fast")
    ratios, min_dice, failed = {}, {}, False
    for case, runs in results.items():
        good = {who: [r for r in rs if r.ok] for who, rs in runs.items()}
        if not good["ours"] or not good["fast"]:
            failed = True
            print(f"{case:8} failed: " + "; ".join(r.note for rs in runs.values() for r in rs if r.note))
            continue
        exact_s = statistics.median(r.seconds for r in good["ours"])
        fast_s = statistics.median(r.seconds for r in good["fast"])
        dice = per_label_dice(good["ours"][0].labels, good["fast"][0].labels)
        worst = min(dice, key=dice.get)
        ratios[case], min_dice[case] = fast_s / exact_s, dice[worst]
        peak = [max(r.peak_tree_gb for r in good[w]) for w in ("ours", "fast")]
        print(f"{case:8} {exact_s:>17.1f} {fast_s:>16.1f} {ratios[case]:>10.3f} {dice[worst]:>9.4f} {worst:>5} "
              f"{statistics.mean(dice.values()):>9.4f}  {peak[0]:.2f} / {peak[1]:.2f}")
    if not ratios:
        print("RATIOS fast/exact | no successful case")
        return 1
    first = next(iter(results))
    case_a = f"case (a) {first}: wall {ratios[first]:.2f}x ({1 / ratios[first]:.1f}x faster)" \
        if first in ratios else f"case (a) {first}: failed"
    print(f"RATIOS fast/exact | {case_a} | all cases: wall {statistics.median(ratios.values()):.2f}x (median) | "
          f"min per-label Dice vs exact over {len(min_dice)} cases: {min(min_dice.values()):.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

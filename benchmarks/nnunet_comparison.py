"""Our predictor against nnU-Net v2's ``nnUNetPredictor.predict_from_files``: wall time, peak RSS, agreement.

Both run on the same model folder and the same input files (CT + a T1-like channel already on the CT grid, so both
do exactly the same work: no registration), each run in its own subprocess, alternating ours / nnU-Net's, so that
the machine's background load hits both alike. Per run we record:

- wall time (s) of the whole subprocess: imports, model loading, preprocessing, sliding window, export, writing;
- peak RSS (GB) of the whole process tree (the run and any worker processes it starts) and of its single largest
  process (``benchmarks.monitor``: sampled from ``/proc`` every 50 ms);
- per-label Dice between the two label maps (model label indices, every label either predictor used).

Cases:
    (a) ``openkbp``: a real OpenKBP validation CT (128^3, ~3.9 x 3.9 x 2.5 mm): forward-pass dominated;
    (b) ``hanseg``: the same CT resampled to 0.56 x 0.56 x 2 mm on a 1024 x 1024 x 200 grid (air outside the
        original field of view), HaN-Seg sized: export dominated (31 full-resolution logit channels).

Model: ``--model DIR`` (an nnU-Net v2 results folder, e.g. ``weights/``); without it a random-weight folder with
the shipped model's architecture is built (2-D 5-stage 16..256 PlainConvUNet, 128 x 128 patch, 4.688 mm,
2 folds, CT + T1), or the 3-D 6-stage 32..320 one with ``--random-arch 3d``.

    python -m benchmarks.nnunet_comparison [--model DIR] [--repeats 2] [--cases openkbp hanseg] [--quick]

The table goes to stdout; its LAST LINE holds the ratios ours / nnU-Net per case (wall time, peak RSS) and the
minimum per-label Dice. ``--mode fast`` benchmarks our ``--fast`` mode instead of the exact one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.monitor import run_monitored
from devkit.data import openkbp_cases_dir

REPO = Path(__file__).resolve().parents[1]
OPENKBP = openkbp_cases_dir()  # ../shared (34 cases), else the 3 bundled in test/data
log = logging.getLogger("benchmarks.nnunet_comparison")

HANSEG_SPACING_XYZ = (0.56, 0.56, 2.0)
"""Spacing (mm, x y z) of the HaN-Seg-sized case (b)."""
HANSEG_SIZE_XYZ = (1024, 1024, 200)
QUICK_HANSEG_SIZE_XYZ = (1024, 1024, 100)


# ----------------------------------------------------------------------------------------------- inputs, models
def hanseg_sized_ct(ct: sitk.Image, size_xyz: Sequence[int] = HANSEG_SIZE_XYZ,
                    spacing_xyz: Sequence[float] = HANSEG_SPACING_XYZ) -> sitk.Image:
    """``ct`` linearly resampled onto a grid of ``size_xyz`` voxels of ``spacing_xyz`` mm centred on the CT's
    centre (identity direction); air (-1024 HU) outside the CT. Returns an int16 image."""
    centre = ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()])
    origin = [c - (n - 1) / 2 * sp for c, n, sp in zip(centre, size_xyz, spacing_xyz)]
    out = sitk.Resample(ct, [int(s) for s in size_xyz], sitk.Transform(), sitk.sitkLinear, origin,
                        [float(s) for s in spacing_xyz], ct.GetDirection(), -1024.0, sitk.sitkInt16)
    return out


def write_case(ct: sitk.Image, folder: Path) -> tuple[Path, Path]:
    """Write ``case_0000.nii.gz`` (CT, int16 HU) and ``case_0001.nii.gz`` (T1-like, float32, same grid)."""
    from preprocessing.synthetic_t1 import hu_to_t1

    folder.mkdir(parents=True, exist_ok=True)
    hu = sitk.GetArrayFromImage(ct)
    t1 = sitk.GetImageFromArray(hu_to_t1(hu))
    t1.CopyInformation(ct)
    ct_path, mr_path = folder / "case_0000.nii.gz", folder / "case_0001.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    sitk.WriteImage(t1, str(mr_path))
    return ct_path, mr_path


def make_inputs(workdir: Path, cases: Sequence[str], source_case: str, quick: bool) -> dict[str, tuple[Path, Path]]:
    """Input files per benchmark case name."""
    ct = sitk.ReadImage(str(OPENKBP / source_case / "ct.nii.gz"))
    inputs = {}
    for name in cases:
        if name == "openkbp":
            inputs[name] = write_case(sitk.Cast(ct, sitk.sitkInt16), workdir / "inputs" / name)
        elif name == "hanseg":
            size = QUICK_HANSEG_SIZE_XYZ if quick else HANSEG_SIZE_XYZ
            inputs[name] = write_case(hanseg_sized_ct(ct, size), workdir / "inputs" / name)
        else:
            raise ValueError(f"unknown case {name!r}")
    return inputs


def make_random_model(out: Path, arch: str, folds: int) -> Path:
    """A random-weight nnU-Net v2 model folder shaped like the shipped model (2d) or a 6-stage 3-D net."""
    from devkit.make_test_model import make_test_model

    if arch == "2d":
        return make_test_model(out, folds=folds, spacing_zyx=(2.5, 4.688, 4.688), patch_size=(128, 128),
                               features=(16, 32, 64, 128, 256), mirror_axes=(0, 1))
    return make_test_model(out, folds=folds, spacing_zyx=(3.0, 4.0, 4.0), patch_size=(64, 128, 128),
                           features=(32, 64, 128, 256, 320, 320), mirror_axes=(0, 1, 2))


# ----------------------------------------------------------------------------------------------- child runs
def child_main(args: argparse.Namespace) -> int:
    """Inside the subprocess: predict one case with ``args.child`` and write the label map + a stats JSON."""
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [Path(args.ct), Path(args.mr)]
    folds = tuple(args.folds) if args.folds else None
    if args.child == "nnunet":
        import torch

        from devkit.nnunet_reference import nnunet_predict

        torch.set_num_threads(os.cpu_count() or 1)
        fold_ids = folds or tuple(p.name.split("_", 1)[1] for p in sorted(Path(args.model).glob("fold_*")))
        fold_ids = tuple(int(f) if f.isdigit() else f for f in fold_ids)
        from contract.labels import model_to_hanseg_lookup
        from model.model_folder import load_json

        indices = nnunet_predict(Path(args.model), files, out / "nnunet", folds=fold_ids,
                                 use_mirroring=not args.no_tta, sequential=False)
        dataset = load_json(Path(args.model) / "dataset.json")
        # merged L/R labels (lr_split) map to their left member, as our predictor holds them before the split:
        # both predictors are compared on the merged labels, before the pipeline's split and post-processing
        lookup = model_to_hanseg_lookup(dataset["labels"], dataset.get("lr_split"))
        labels = np.asarray(lookup, dtype=np.uint8)[indices]
    else:
        import torch

        from model.device import select_device
        from model.model_folder import load_model_folder
        from model.predictor import Predictor, PredictorOptions

        model = load_model_folder(args.model, list(folds) if folds else None)
        options = PredictorOptions(use_mirroring=not args.no_tta, progress=False, fast=args.child == "fast",
                                   time_budget=args.time_budget)
        predictor = Predictor(model, select_device("cpu"), options)
        # as process.py does: views into the images, which are freed before the ensemble and the export
        images = [sitk.ReadImage(str(f)) for f in files]
        case = predictor.preprocess([sitk.GetArrayViewFromImage(i) for i in images], images[0].GetSpacing())
        del images
        labels = predictor.predict_preprocessed(case)
    image = sitk.GetImageFromArray(labels.astype(np.uint8, copy=False))
    header = sitk.ImageFileReader()
    header.SetFileName(str(files[0]))
    header.ReadImageInformation()  # geometry only: no second copy of the CT in memory
    image.SetOrigin(header.GetOrigin())
    image.SetSpacing(header.GetSpacing())
    image.SetDirection(header.GetDirection())
    sitk.WriteImage(image, str(out / "labels.nii.gz"))
    stats = {
        "seconds_in_child": time.perf_counter() - start,
    }
    (out / "stats.json").write_text(json.dumps(stats))
    return 0


@dataclass
class RunResult:
    """One subprocess run."""

    who: str
    case: str
    seconds: float
    peak_tree_gb: float
    maxrss_gb: float
    ok: bool
    note: str = ""
    labels: np.ndarray | None = field(default=None, repr=False)


def run_child(who: str, case: str, files: tuple[Path, Path], model: Path, out: Path, args: argparse.Namespace,
              mem_cap_gb: float) -> RunResult:
    """Run one prediction in a fresh subprocess, sampling its process tree's RSS; kill it above ``mem_cap_gb``."""
    cmd = [sys.executable, "-m", "benchmarks.nnunet_comparison", "--child", who, "--model", str(model),
           "--ct", str(files[0]), "--mr", str(files[1]), "--out", str(out)]
    if args.folds:
        cmd += ["--folds", *args.folds]
    if args.no_tta:
        cmd += ["--no-tta"]
    if args.time_budget and who != "nnunet":
        cmd += ["--time-budget", str(args.time_budget)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(os.cpu_count() or 1))
    run = run_monitored(cmd, env, cwd=REPO, kill_above_gb=mem_cap_gb)
    ok = run.returncode == 0 and (out / "stats.json").is_file()
    note = ""
    if run.killed:
        note = f"killed above the {mem_cap_gb:g} GB cap"
    elif not ok:
        note = f"exit {run.returncode}: {run.last_stderr_line[:200]}"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz"))) if ok else None
    result = RunResult(who, case, run.seconds, run.peak_tree_gb, run.largest_process_gb, ok, note, labels)
    log.info("%-6s %-8s %7.1f s  peak tree RSS %5.2f GB  largest process %5.2f GB  %s", who, case, run.seconds,
             result.peak_tree_gb, result.maxrss_gb, note)
    return result


def per_label_dice(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """Dice per label for every non-zero label present in either array."""
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    out = {}
    for label in labels:
        x, y = a == label, b == label
        out[int(label)] = float(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return out


# ----------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="nnU-Net v2 model folder (default: a random-weight one)")
    parser.add_argument("--random-arch", choices=["2d", "3d"], default="2d", help="architecture of the random model")
    parser.add_argument("--random-folds", type=int, default=2, help="folds of the random model")
    parser.add_argument("--cases", nargs="+", default=["openkbp", "hanseg"], choices=["openkbp", "hanseg"])
    parser.add_argument("--source-case", default="pt_201", help="OpenKBP case the inputs are made from")
    parser.add_argument("--repeats", type=int, default=2, help="runs per predictor and case (alternating)")
    parser.add_argument("--mode", choices=["exact", "fast"], default="exact", help="which of our modes to run")
    parser.add_argument("--folds", nargs="+", help="folds to use (both predictors; default: all)")
    parser.add_argument("--no-tta", action="store_true", help="no mirroring (both predictors)")
    parser.add_argument("--time-budget", type=float, help="pass --time-budget to our predictor")
    parser.add_argument("--mem-cap-gb", type=float, default=16.0,
                        help="kill a run whose process tree exceeds this RSS (protects a shared machine)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, case (b) with 100 slices")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    # child mode (internal)
    parser.add_argument("--child", choices=["ours", "fast", "nnunet"], help=argparse.SUPPRESS)
    parser.add_argument("--ct", help=argparse.SUPPRESS)
    parser.add_argument("--mr", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.child:
        return child_main(args)
    if args.quick:
        args.repeats = 1
    with tempfile.TemporaryDirectory(prefix="nnunet_cmp_") as tmp:
        workdir = args.workdir or Path(tmp)
        model = args.model or make_random_model(workdir / "model", args.random_arch, args.random_folds)
        inputs = make_inputs(workdir, args.cases, args.source_case, args.quick)
        ours_name = "ours" if args.mode == "exact" else "fast"
        results: list[RunResult] = []
        for case, files in inputs.items():
            for rep in range(args.repeats):
                order = ["nnunet", ours_name] if rep % 2 else [ours_name, "nnunet"]
                for who in order:
                    out = workdir / "runs" / f"{case}_{who}_{rep}"
                    results.append(run_child(who, case, files, model, out, args, args.mem_cap_gb))
        return report(results, inputs, ours_name, model, args)


def report(results: list[RunResult], inputs: dict, ours_name: str, model: Path, args: argparse.Namespace) -> int:
    """Print the table; last line: ratios per case."""
    print(f"model: {model} | mode: {args.mode} | folds: {args.folds or 'all'} | mirroring: {not args.no_tta} | "
          f"threads: {os.cpu_count()} | repeats: {args.repeats}")
    print(f"{'case':8} {'predictor':9} {'runs':>4} {'wall s (median)':>16} {'wall s (all)':>22} "
          f"{'peak RSS GB':>12} {'largest proc GB':>16}  note")
    ratio_parts = []
    raw = []
    for case in inputs:
        summary = {}
        for who in (ours_name, "nnunet"):
            runs = [r for r in results if r.case == case and r.who == who]
            good = [r for r in runs if r.ok]
            wall = statistics.median(r.seconds for r in good) if good else float("nan")
            peak = max((r.peak_tree_gb for r in runs), default=float("nan"))
            largest = max((r.maxrss_gb for r in good), default=float("nan"))
            notes = "; ".join(sorted({r.note for r in runs if r.note}))
            summary[who] = (wall, peak, good)
            all_walls = ", ".join(f"{r.seconds:.1f}" for r in runs)
            print(f"{case:8} {who:9} {len(runs):>4} {wall:>16.1f} {all_walls:>22} {peak:>12.2f} {largest:>16.2f}  "
                  f"{notes}")
            raw += [{"case": r.case, "who": r.who, "seconds": r.seconds, "peak_tree_gb": r.peak_tree_gb,
                     "maxrss_gb": r.maxrss_gb, "ok": r.ok, "note": r.note} for r in runs]
        ours_runs, ref_runs = summary[ours_name][2], summary["nnunet"][2]
        if ours_runs and ref_runs:
            dice = per_label_dice(ours_runs[0].labels, ref_runs[0].labels)
            min_label = min(dice, key=dice.get)
            mean = float(np.mean(list(dice.values())))
            print(f"{case:8} Dice ours vs nnU-Net: min {dice[min_label]:.5f} (label {min_label}), mean {mean:.5f}, "
                  f"{len(dice)} labels; voxel agreement {(ours_runs[0].labels == ref_runs[0].labels).mean():.6f}")
            dice_text = f"{dice[min_label]:.4f}"
        else:
            dice_text = "n/a"
        wall_ratio = summary[ours_name][0] / summary["nnunet"][0]
        rss_ratio = summary[ours_name][1] / summary["nnunet"][1]
        bound = "" if all(r.ok for r in results if r.case == case and r.who == "nnunet") else " (nnU-Net failed)"
        ratio_parts.append(f"{case}: wall {wall_ratio:.2f}x, peak RSS {rss_ratio:.2f}x, min Dice {dice_text}{bound}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    print(f"RATIOS {ours_name}/nnU-Net | " + " | ".join(ratio_parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

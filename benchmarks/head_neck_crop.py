"""Time and peak memory of a full ``process.py`` run with and without the head-and-neck crop, on a HaN-Seg-sized CT.

The input is a real OpenKBP CT resampled to about 1 x 1 x 2 mm (542 x 542 x 160 voxels, as in
``benchmarks.registration_benchmark``), without an MR (the crop's effect is on the CT-grid work: channels,
preprocessing, sliding window, export). The model folder (default ``weights/``) is copied twice, once with
``"head_neck_crop": true`` added to its dataset.json. Each run is a subprocess; its process tree's RSS is sampled
(``benchmarks.monitor``).

    python -m benchmarks.head_neck_crop [--model weights] [--case pt_17] [--threads 2]

Prints one table row per variant: wall seconds, peak RSS (GB), voxels the network's grid covered.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

from benchmarks.monitor import run_monitored
from benchmarks.registration_benchmark import DATA, hanseg_sized_ct

REPO = Path(__file__).resolve().parents[1]


def model_variant(model: Path, out: Path, crop: bool) -> Path:
    """A copy of ``model`` (fold checkpoints linked, not copied) with or without ``head_neck_crop``."""
    out.mkdir(parents=True)
    for item in model.iterdir():
        if item.name.startswith("fold_"):
            (out / item.name).mkdir()
            for f in item.iterdir():
                (out / item.name / f.name).symlink_to(f.resolve())
        elif item.is_file():
            shutil.copy2(item, out / item.name)
    dataset = json.loads((out / "dataset.json").read_text())
    dataset.pop("head_neck_crop", None)
    if crop:
        dataset["head_neck_crop"] = True
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "weights")
    parser.add_argument("--case", default="pt_17")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", nargs="+", default=["0"], help="folds to run (default: 0, to keep it short)")
    args = parser.parse_args(argv)
    ct = hanseg_sized_ct(sitk.ReadImage(str(DATA / args.case / "ct.nii.gz")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    print(f"CT {args.case} resampled to {ct.GetSize()} at {ct.GetSpacing()} mm; model {args.model}, folds "
          f"{args.folds}, {args.threads} threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"nice {os.nice(0)}")
    print(f"{'variant':<10}{'exit':>5}{'wall s':>9}{'peak RSS GB':>13}  crop (log)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in" / "images" / "ct").mkdir(parents=True)
        sitk.WriteImage(ct, str(root / "in" / "images" / "ct" / "case.mha"))
        rows = []
        for crop in (False, True):
            model = model_variant(args.model, root / f"model_{crop}", crop)
            cmd = [sys.executable, str(REPO / "process.py"), "--input", str(root / "in"), "--output",
                   str(root / f"out_{crop}"), "--model", str(model), "--threads", str(args.threads), "--no-progress",
                   "--device", "cpu", "--folds", *args.folds]
            run = run_monitored(cmd, env, cwd=REPO)
            note = next((line.split("head-and-neck crop: ")[1] for line in run.stderr.splitlines()
                         if "head-and-neck crop: " in line), "-")
            rows.append(run)
            print(f"{'crop' if crop else 'no crop':<10}{run.returncode:>5}{run.seconds:>9.1f}{run.peak_tree_gb:>13.2f}"
                  f"  {note}", flush=True)
            if run.returncode != 0:
                print(run.last_stderr_line, file=sys.stderr)
        if all(r.returncode == 0 for r in rows):
            a, b = (sitk.GetArrayViewFromImage(sitk.ReadImage(str(next((root / f"out_{c}").rglob("*.mha")))))
                    for c in (False, True))
            print(f"SUMMARY: crop saves {rows[0].seconds - rows[1].seconds:.1f} s and "
                  f"{rows[0].peak_tree_gb - rows[1].peak_tree_gb:.2f} GB peak RSS; labels equal on "
                  f"{100.0 * float((a == b).mean()):.3f} % of voxels")
    return 0 if all(r.returncode == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check: one command to run on a CUDA machine, a table and a last line of ratios.

Steps (all in this one process, one after the other):

1. **Agreement**: the model folder (default the shipped ``weights/``) on the held-out OpenKBP cases, on
   ``--device`` and on the CPU; per-label Dice of the device's labels against the CPU's, and both wall times.
2. **HaN-Seg-sized case**: a 31-class random-weight model folder with a 3d_fullres-sized plan (0.56 x 0.56 x 2 mm,
   patch 40 x 224 x 192, tiny features so that the run takes minutes) on a 1024 x 1024 x 200 CT (+ a T1-like
   channel on its grid): wall time per stage (preprocessing, sliding window, export), the memory path chosen
   (:mod:`model.placement`), peak GPU memory (``torch.cuda.max_memory_allocated``) and peak RSS per stage.
3. **nnU-Net side by side**: nnunetv2's ``nnUNetPredictor`` (``perform_everything_on_device=True``, its own
   fallback to the host) on the same device, same model folder and case: wall, peak GPU memory, peak RSS, Dice
   against ours. Skipped with a note if nnunetv2 is not installed (it is a test requirement, not in the image).

    python -m benchmarks.gpu_check                       # on the GPU machine: cuda, weights/, full sizes
    python -m benchmarks.gpu_check --device cpu --quick  # dry run of every step (CI): tiny model, small case

Last line: ``RATIOS device/cpu wall ..., min Dice ... | hanseg ours/nnU-Net wall ..., peak GPU ..., peak RSS ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks.nnunet_comparison import OPENKBP, REPO, hanseg_sized_ct, per_label_dice, write_case

log = logging.getLogger("benchmarks.gpu_check")

HELD_OUT = ("pt_201", "pt_222", "pt_225", "pt_236")
HANSEG_SIZE_XYZ = (1024, 1024, 200)
HANSEG_PLAN = {"spacing_zyx": (2.0, 0.56, 0.56), "patch_size": (40, 224, 192), "features": (4, 8, 16, 32)}
"""A 3d_fullres-sized plan of a HaN-Seg model (spacing, patch), with tiny features (the memory is in the logits)."""
QUICK_SIZE_XYZ = (48, 48, 16)
QUICK_PLAN = {"spacing_zyx": (4.0, 2.24, 2.24), "patch_size": (8, 32, 32), "features": (4, 8)}
QUICK_CROP = 40
"""--quick: the agreement step's CT is cropped to its first 40 voxels per axis."""
GB = 1024**3


# ----------------------------------------------------------------------------------------------- measuring
class PeakRss:
    """Peak resident memory of this process, sampled from /proc/self/statm every 20 ms while running."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Stage:
    """One timed stage: wall seconds, peak GPU bytes allocated (0 on the CPU), peak process RSS bytes."""

    name: str
    seconds: float = 0.0
    gpu_peak: int = 0
    rss_peak: int = 0
    note: str = ""


@contextmanager
def measured(name: str, device: torch.device, stages: list[Stage]) -> Iterator[Stage]:
    stage = Stage(name)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        start = time.perf_counter()
        yield stage
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stage.seconds = time.perf_counter() - start
    stage.rss_peak = rss.peak
    stage.gpu_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    stages.append(stage)
    log.info("%s: %.1f s, peak GPU %.2f GB, peak RSS %.2f GB %s", name, stage.seconds, stage.gpu_peak / GB,
             stage.rss_peak / GB, stage.note)


# ----------------------------------------------------------------------------------------------- our predictor
def read_channels(files: Sequence[Path]) -> tuple[list[np.ndarray], tuple[float, ...]]:
    images = [sitk.ReadImage(str(f)) for f in files]
    return [sitk.GetArrayFromImage(i) for i in images], images[0].GetSpacing()


def make_predictor(model_dir: Path, device: torch.device):  # noqa: ANN201 - model.predictor imported lazily
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    return Predictor(load_model_folder(model_dir), device, PredictorOptions(progress=False))


def predict_staged(model_dir: Path, files: Sequence[Path], device: torch.device,
                   stages: list[Stage]) -> np.ndarray:
    """Our predictor on ``device``, stage by stage (preprocessing, sliding window, export), measured."""
    from model.export import labels_to_image_array, logits_to_labels

    predictor = make_predictor(model_dir, device)
    with measured("ours: preprocessing", device, stages):
        channels, spacing = read_channels(files)
        case = predictor.preprocess(channels, spacing)
        del channels
    with measured("ours: sliding window", device, stages) as stage:
        logits = predictor.predict_logits(case)
        stage.note = f"{predictor.last_placement.path} path"
    with measured("ours: export", device, stages) as stage:
        kwargs = predictor.model.configuration.probabilities_resampling_kwargs
        export = {"target_shape": case.shape_after_cropping, "current_spacing": case.model_spacing,
                  "target_spacing": case.original_spacing, "force_separate_z": kwargs.get("force_separate_z", False)}
        on_device = predictor.last_placement.export_on_device
        stage.note = "on the GPU" if on_device else "chunked on the host"
        labels = logits_to_labels(logits, on_device=on_device, **export) if on_device else \
            logits_to_labels(logits.cpu(), **export)
        del logits
        result = labels_to_image_array(labels, case, predictor.lookup)
    return result


# ----------------------------------------------------------------------------------------------- nnU-Net
def nnunet_staged(model_dir: Path, files: Sequence[Path], device: torch.device, workdir: Path,
                  stages: list[Stage]) -> np.ndarray | None:
    """nnunetv2's predictor on ``device`` (everything on the device, its own host fallback), whole run measured."""
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError:
        stages.append(Stage("nnU-Net", note="skipped: nnunetv2 not installed (requirements-test.txt)"))
        return None
    folds = tuple(int(p.name.split("_", 1)[1]) for p in sorted(model_dir.glob("fold_*")))
    out = workdir / "nnunet"
    out.mkdir(parents=True, exist_ok=True)
    with measured("nnU-Net: whole run", device, stages) as stage:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds)
        predictor.predict_from_files_sequential([[str(f) for f in files]], [str(out / "case")],
                                                save_probabilities=False, overwrite=True)
        stage.note = "predict_from_files_sequential"
    from contract.labels import model_to_hanseg_lookup
    from model.model_folder import load_model_folder

    lookup = np.asarray(model_to_hanseg_lookup(load_model_folder(model_dir).labels), dtype=np.uint8)
    return lookup[sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz")))]


# ----------------------------------------------------------------------------------------------- steps
@dataclass
class Agreement:
    case: str
    device_s: float
    cpu_s: float
    min_dice: float
    labels: int


def agreement_step(model_dir: Path, cases: Sequence[str], device: torch.device, workdir: Path,
                   crop: int | None) -> list[Agreement]:
    rows = []
    for name in cases:
        ct = sitk.ReadImage(str(OPENKBP / name / "ct.nii.gz"))
        if crop:
            ct = ct[:crop, :crop, :crop]
        files = write_case(sitk.Cast(ct, sitk.sitkInt16), workdir / "agreement" / name)
        seconds, labels = {}, {}
        for where in (device, torch.device("cpu")):
            channels, spacing = read_channels(files)
            predictor = make_predictor(model_dir, where)
            start = time.perf_counter()
            labels[where.type] = predictor.predict(channels, spacing)
            seconds[where.type] = time.perf_counter() - start
        dice = per_label_dice(labels[device.type], labels["cpu"])
        rows.append(Agreement(name, seconds[device.type], seconds["cpu"], min(dice.values(), default=1.0), len(dice)))
        log.info("agreement %s: %s", name, rows[-1])
    return rows


@dataclass
class LargeCase:
    ours: list[Stage] = field(default_factory=list)
    nnunet: list[Stage] = field(default_factory=list)
    min_dice_vs_nnunet: float | None = None


def large_step(device: torch.device, workdir: Path, size_xyz: Sequence[int], plan: dict, with_nnunet: bool,
               source_case: str = "pt_201") -> LargeCase:
    from devkit.make_test_model import make_test_model

    model_dir = make_test_model(workdir / "model_31", folds=2, mirror_axes=(2,), **plan)
    ct = hanseg_sized_ct(sitk.ReadImage(str(OPENKBP / source_case / "ct.nii.gz")), size_xyz,
                         (plan["spacing_zyx"][2], plan["spacing_zyx"][1], plan["spacing_zyx"][0]))
    files = write_case(ct, workdir / "large")
    del ct
    result = LargeCase()
    ours = predict_staged(model_dir, files, device, result.ours)
    if with_nnunet:
        reference = nnunet_staged(model_dir, files, device, workdir, result.nnunet)
        if reference is not None:
            result.min_dice_vs_nnunet = min(per_label_dice(ours, reference).values(), default=1.0)
    return result


# ----------------------------------------------------------------------------------------------- report
def report(device: torch.device, agreement: list[Agreement], large: LargeCase, size_xyz: Sequence[int]) -> str:
    lines = [f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}) | "
             f"torch {torch.__version__} | CPU threads {torch.get_num_threads()}", "",
             f"| case | {device.type} s | cpu s | {device.type}/cpu | min per-label Dice {device.type} vs cpu "
             "| labels |",
             "|---|---|---|---|---|---|"]
    for row in agreement:
        lines.append(f"| {row.case} | {row.device_s:.1f} | {row.cpu_s:.1f} | {row.device_s / row.cpu_s:.2f}x | "
                     f"{row.min_dice:.4f} | {row.labels} |")
    lines += ["", f"HaN-Seg-sized case {' x '.join(map(str, size_xyz))}, 31 classes, 3d_fullres-sized plan, 2 folds:",
              "", "| stage | wall s | peak GPU GB | peak RSS GB | note |", "|---|---|---|---|---|"]
    for stage in large.ours + large.nnunet:
        lines.append(f"| {stage.name} | {stage.seconds:.1f} | {stage.gpu_peak / GB:.2f} | {stage.rss_peak / GB:.2f} | "
                     f"{stage.note} |")
    ours_s = sum(s.seconds for s in large.ours)
    ours_gpu = max((s.gpu_peak for s in large.ours), default=0)
    ours_rss = max((s.rss_peak for s in large.ours), default=0)
    lines.append(f"| ours: whole | {ours_s:.1f} | {ours_gpu / GB:.2f} | {ours_rss / GB:.2f} | |")
    wall = sum(r.device_s for r in agreement) / max(sum(r.cpu_s for r in agreement), 1e-9)
    min_dice = min((r.min_dice for r in agreement), default=1.0)
    last = f"RATIOS {device.type}/cpu wall {wall:.2f}x, min Dice {min_dice:.4f}"
    nn = [s for s in large.nnunet if s.seconds]
    if nn:
        ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"  # noqa: E731
        last += (f" | hanseg ours/nnU-Net wall {ratio(ours_s, nn[0].seconds)}, peak GPU "
                 f"{ratio(ours_gpu, nn[0].gpu_peak)}, peak RSS {ratio(ours_rss, nn[0].rss_peak)}, min Dice "
                 f"{large.min_dice_vs_nnunet:.4f}")
    else:
        last += f" | hanseg ours wall {ours_s:.1f} s, nnU-Net {large.nnunet[0].note if large.nnunet else 'not run'}"
    lines += ["", last]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a dry run of every step)")
    parser.add_argument("--model", type=Path, help="model folder for the agreement step (default: weights/, or a "
                                                   "tiny random one with --quick)")
    parser.add_argument("--cases", nargs="+", help=f"OpenKBP cases for the agreement step (default {HELD_OUT})")
    parser.add_argument("--size", type=int, nargs=3, help="HaN-Seg-sized CT x y z (default 1024 1024 200)")
    parser.add_argument("--quick", action="store_true", help="tiny model, one cropped case, small large case")
    parser.add_argument("--no-nnunet", action="store_true", help="skip nnU-Net's predictor")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    from model.device import select_device

    try:
        device = select_device(args.device)
    except ValueError as err:
        print(f"error: --device: {err}", file=sys.stderr)
        return 2
    size = args.size or (QUICK_SIZE_XYZ if args.quick else HANSEG_SIZE_XYZ)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = args.workdir or Path(tmp)
        model_dir = args.model
        if model_dir is None and args.quick:
            from devkit.make_test_model import make_test_model

            model_dir = make_test_model(workdir / "tiny", folds=2, spacing_zyx=(6.0, 8.0, 8.0), patch_size=(16, 16, 16),
                                        features=(4, 8), mirror_axes=(2,))
        model_dir = model_dir or REPO / "weights"
        cases = args.cases or (HELD_OUT[:1] if args.quick else HELD_OUT)
        agreement = agreement_step(model_dir, cases, device, workdir, QUICK_CROP if args.quick else None)
        large = large_step(device, workdir, size, QUICK_PLAN if args.quick else HANSEG_PLAN, not args.no_nnunet)
    print(f"model (agreement step): {model_dir}")
    print(report(device, agreement, large, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HaN-Seg OAR segmentation: CT + T1 MR in, one 30-label organ-at-risk map on the CT grid out.

Modes:
    python process.py                                 platform: /input -> /output (roots: HANSEG_INPUT_DIR,
                                                      HANSEG_OUTPUT_DIR)
    python process.py --input DIR --output DIR        local, same layout under DIR (images/ct, images/t1-mri)
    python process.py --input DATASET --output DIR    dataset: DATASET/case_XX/case_XX_IMG_CT.nrrd (+ _IMG_MR_T1),
                                                      one map per case as DIR/case_XX.mha

Data path per case: read and check the images (contract.imageio) -> permute/flip the CT to the model's training
orientation (preprocessing.orientation) -> register the MR to the CT and check the result
(preprocessing.registration) -> preprocess as the plans say (preprocessing.preprocess) -> sliding-window
ensemble (model.predictor) -> back to the CT grid and HaN-Seg labels (model.export) -> merged left/right labels
split by the mid-sagittal plane (preprocessing.laterality; models declaring dataset.json lr_split) -> back to the
CT's own axis order -> atomic write.

Exit codes: 0 success; 2 bad input; 3 output not writable; 4 bad model folder; 1 unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from contract.errors import InputError, ModelFolderError, OutputError
from contract.imageio import check_extent, read_image, read_scan, repair_intensities, write_image_atomic
from contract.inputs import OUTPUT_FOLDER, CaseInputs, find_dataset_cases, find_folder_case, is_dataset_root
from contract.labels import MAX_LABEL
from preprocessing.channels import ChannelPlan, MrOnCt, channel_arrays, mr_on_ct_grid, write_transforms
from preprocessing.head_neck_crop import crop_image, head_neck_box, uncrop_labels
from preprocessing.laterality import split_left_right
from preprocessing.orientation import labels_to_original_orientation, orientation_of, reorient

log = logging.getLogger("process")

APP_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = APP_DIR / "weights"
PLATFORM_MODEL_DIR = Path("/opt/ml/model")
EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class RunOptions:
    """Command-line options that affect every case."""

    model_dir: Path
    device: str = "auto"
    folds: tuple[str, ...] | None = None
    use_mirroring: bool = True
    tile_step: float = 0.5
    qa_dir: Path | None = None
    threads: int | None = None
    progress: bool = True
    fast: bool = False
    time_budget: float | None = None
    reorient: bool = True


def resolve_model_dir(cli_value: Path | None) -> Path:
    """``--model`` > ``HANSEG_MODEL_DIR`` > ``/opt/ml/model`` (if it holds a plans.json) > ``weights/``."""
    if cli_value is not None:
        return cli_value
    if os.environ.get("HANSEG_MODEL_DIR"):
        return Path(os.environ["HANSEG_MODEL_DIR"])
    if (PLATFORM_MODEL_DIR / "plans.json").is_file():
        return PLATFORM_MODEL_DIR
    return DEFAULT_MODEL_DIR


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Segment 30 head-and-neck organs at risk from a CT and a T1 MR (HaN-Seg).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--input", type=Path, help="input root (default: $HANSEG_INPUT_DIR or /input)")
    parser.add_argument("--output", type=Path, help="output root (default: $HANSEG_OUTPUT_DIR or /output)")
    parser.add_argument("--model", type=Path, help="nnU-Net v2 model folder (default: $HANSEG_MODEL_DIR, "
                        "/opt/ml/model if present, else weights/)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--folds", nargs="+", help="folds to ensemble (default: every fold in the model folder)")
    parser.add_argument("--no-tta", action="store_true", help="disable mirroring test-time augmentation")
    parser.add_argument("--tile-step", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch (0 < step <= 1; default 0.5)")
    parser.add_argument("--qa", type=Path, metavar="DIR", help="also write quality-control PNGs and volumes here")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("HANSEG_THREADS", "0")) or None,
                        help="CPU threads (default: $HANSEG_THREADS, else all available cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--fast", action="store_true",
                        help="fast CPU mode: bf16 where the CPU has it, mirroring over one axis (model/fast.py)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", default=_env_float("HANSEG_TIME_BUDGET"),
                        help="finish each case within this many seconds by reducing folds / mirroring / tile step "
                        "(default: $HANSEG_TIME_BUDGET, else no budget)")
    parser.add_argument("--as-stored", action="store_true",
                        help="feed the voxel arrays in their stored axis order, as nnU-Net does, instead of permuting "
                        "them to the model's training orientation (only for models trained on mixed orientations)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if not 0 < args.tile_step <= 1:
        parser.error(f"--tile-step must be in (0, 1], got {args.tile_step}")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    return args


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclass
class CaseChannels:
    """A case's model input on the CT grid: ``arrays`` (numpy z, y, x, channel order; views into ``keep`` where
    possible) and how the MR was brought onto the grid (``mr``; None for a CT-only model)."""

    arrays: list[np.ndarray]
    mr: MrOnCt | None
    keep: tuple[sitk.Image | None, ...] = ()


def prepare_channels(case: CaseInputs, ct: sitk.Image, plan: ChannelPlan) -> CaseChannels:
    """The model's input channels as its folder declares them (:mod:`preprocessing.channels`, the builder the
    training converters use too). A missing MR, or one whose registration fails its check, makes every
    T1-derived channel the modality-dropout fill."""
    if not plan.uses_mr:
        if case.mr_path is not None:
            log.info("model has no MR channel: %s is not used", case.mr_path)
        return CaseChannels(channel_arrays(plan, ct, None), None, (ct,))
    if case.mr_path is None:
        log.warning("no T1 MR for case %s: predicting from the CT alone", case.case_id)
        mr = MrOnCt(None, "missing", "no MR for this case", plan.mr_registration)
    else:
        mr = registered_mr(case.mr_path, ct, plan.mr_registration)
    return CaseChannels(channel_arrays(plan, ct, mr.image), mr, (ct, mr.image))


def registered_mr(mr_path: Path, ct: sitk.Image, mode: str = "rigid") -> MrOnCt:
    """The MR registered (``mode``: ``rigid`` or ``rigid+bspline``) and resampled onto the CT grid.

    A file that cannot be read as a 3-D scalar image is an input error (raised). An MR that reads but has no
    usable intensities, or whose registration fails its quality check, gives ``image=None`` with a warning: the
    case is predicted from the CT alone, as the model was trained to do under modality dropout.
    """
    mr = read_image(mr_path, "T1 MR")
    try:
        check_extent(mr, mr_path, "T1 MR")
        mr = repair_intensities(mr, mr_path, "T1 MR")
    except InputError as err:
        log.warning("%s: predicting from the CT alone", err)
        return MrOnCt(None, "rejected", str(err), mode)
    result = mr_on_ct_grid(ct, mr, mode)
    if result.image is None:
        log.warning("%s: MR-to-CT registration failed its quality check (%s): predicting from the CT alone",
                    mr_path, result.reason)
        return result
    log.info("MR registered to CT (%s) in %.1f s (%s)", mode, result.rigid.seconds, _format_metrics(result.metrics))
    return result


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())


def to_label_image(labels: np.ndarray, ct: sitk.Image) -> sitk.Image:
    """The label array as a uint8 image carrying the CT's exact size, spacing, origin and direction."""
    if labels.dtype != np.uint8 or labels.shape != sitk.GetArrayViewFromImage(ct).shape:
        raise AssertionError(f"label map {labels.dtype} {labels.shape} does not match the CT")
    if labels.max(initial=0) > MAX_LABEL:
        raise AssertionError(f"label value {labels.max()} outside 0..{MAX_LABEL}")
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return image


def run_case(case: CaseInputs, output_path: Path, predictor, options: RunOptions) -> None:  # noqa: ANN001
    """Segment one case and write its label map atomically to ``output_path``."""
    start = time.perf_counter()
    log.info("case %s: CT %s, MR %s", case.case_id, case.ct_path, case.mr_path or "none")
    ct = read_scan(case.ct_path, "CT")
    oriented = ct
    if options.reorient:
        oriented = reorient(ct, predictor.model.orientation)
        if oriented is not ct:
            log.info("CT stored in %s orientation: permuted to the model's %s for prediction, labels permuted back",
                     orientation_of(ct), predictor.model.orientation)
    crop = predictor.model.head_neck_crop
    box = head_neck_box(oriented, crop) if crop is not None else None
    work = oriented if box is None else crop_image(oriented, box)
    channels = prepare_channels(case, work, predictor.model.channel_plan)
    preprocessed = predictor.preprocess(channels.arrays, work.GetSpacing())
    mr_on_ct = channels.mr.image if options.qa_dir is not None and channels.mr is not None else None
    transforms = channels.mr.transforms() if channels.mr is not None else []
    del channels  # the registered MR (0.8 GB on a HaN-Seg CT) is not needed for the ensemble and export
    labels = predictor.predict_preprocessed(preprocessed)
    del preprocessed
    if box is not None:
        labels = uncrop_labels(labels, box, sitk.GetArrayViewFromImage(oriented).shape)
    labels = split_left_right(labels, oriented, predictor.lateral_splits)
    image = to_label_image(labels_to_original_orientation(labels, oriented, ct), ct)
    write_image_atomic(image, output_path)
    if options.qa_dir is not None:
        write_case_qa(case, oriented, to_label_image(labels, oriented), mr_on_ct, options.qa_dir, transforms)
    n_oars = int((np.bincount(labels.ravel(), minlength=MAX_LABEL + 1)[1:] > 0).sum())
    log.info("case %s done in %.1f s: %d OARs labelled -> %s", case.case_id, time.perf_counter() - start, n_oars,
             output_path)


def write_case_qa(case: CaseInputs, ct: sitk.Image, labels: sitk.Image, mr_on_ct: sitk.Image | None,
                  qa_dir: Path, transforms: list[tuple[str, sitk.Transform]] | None = None) -> None:
    """Quality-control PNG and per-OAR volumes for one case (the MR row shows the registered MR, if any), and the
    MR registration transforms the case used (``<case>_ct_to_mr_<stage>.tfm``, CT -> MR physical space); ``ct``,
    ``labels`` and ``mr_on_ct`` on the grid the model saw (the CT in the model's orientation)."""
    from evaluation.qa import write_qa

    try:
        written = write_qa(ct, labels, qa_dir, case.case_id, mr=mr_on_ct)
        written += write_transforms(transforms or [], qa_dir, case.case_id)
    except ValueError as err:
        raise OutputError(qa_dir, f"cannot make the QA picture of case {case.case_id} ({err})") from None
    except (OSError, RuntimeError) as err:
        raise OutputError(qa_dir, f"cannot write the QA output of case {case.case_id} ({err})") from None
    log.info("QA: %s", ", ".join(str(p) for p in written))


def build_predictor(options: RunOptions):  # noqa: ANN201 - imported lazily to keep --help fast
    from model.device import select_device
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    model = load_model_folder(options.model_dir, list(options.folds) if options.folds else None)
    predictor = Predictor(
        model,
        select_device(options.device),
        PredictorOptions(use_mirroring=options.use_mirroring, tile_step=options.tile_step,
                         progress=options.progress, fast=options.fast, time_budget=options.time_budget),
    )
    if options.threads:  # after the predictor, which defaults to every available core
        import torch

        torch.set_num_threads(options.threads)
        log.info("CPU threads: %d", options.threads)
    return predictor


def run(input_root: Path, output_root: Path, options: RunOptions) -> int:
    """Process the input root in folder or dataset mode. Returns the exit code."""
    if not input_root.is_dir():
        raise InputError(input_root, "input folder does not exist")
    if is_dataset_root(input_root):
        return run_dataset(input_root, output_root, options)
    case = find_folder_case(input_root)
    output_path = output_root / OUTPUT_FOLDER / f"{case.case_id}.mha"
    run_case(case, output_path, build_predictor(options), options)
    return EXIT_OK


def run_dataset(input_root: Path, output_root: Path, options: RunOptions) -> int:
    """Every case folder under ``input_root``: finish all that can be done, report the others."""
    cases, failed = find_dataset_cases(input_root)
    log.info("dataset mode: %d cases under %s", len(cases), input_root)
    predictor = build_predictor(options) if cases else None
    written = 0
    for case in cases:
        try:
            run_case(case, output_root / f"{case.case_id}.mha", predictor, options)
            written += 1
        except (InputError, OutputError) as err:
            log.error("case %s failed: %s", case.case_id, err)
            failed.append((case.ct_path.parent, err))
    log.info("dataset mode: %d of %d cases written to %s", written, written + len(failed), output_root)
    for folder, err in failed:
        print(f"error: case {folder.name}: {err}", file=sys.stderr)
    return EXIT_INPUT if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    input_root = args.input or Path(os.environ.get("HANSEG_INPUT_DIR", "/input"))
    output_root = args.output or Path(os.environ.get("HANSEG_OUTPUT_DIR", "/output"))
    options = RunOptions(
        model_dir=resolve_model_dir(args.model),
        device=args.device,
        folds=tuple(args.folds) if args.folds else None,
        use_mirroring=not args.no_tta,
        tile_step=args.tile_step,
        qa_dir=args.qa,
        threads=args.threads,
        progress=not args.no_progress,
        fast=args.fast,
        time_budget=args.time_budget,
        reorient=not args.as_stored,
    )
    try:
        return run(input_root, output_root, options)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_OUTPUT
    except ModelFolderError as err:
        print(f"error: model folder: {err}", file=sys.stderr)
        return EXIT_MODEL
    except ValueError as err:  # a usage error, e.g. --device cuda on a machine without CUDA
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())

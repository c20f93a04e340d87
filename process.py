"""HaN-Seg OAR segmentation: CT + T1 MR in, one 30-label organ-at-risk map on the CT grid out.

Modes:
    python process.py                                 platform: /input -> /output (roots: HANSEG_INPUT_DIR,
                                                      HANSEG_OUTPUT_DIR)
    python process.py --input DIR --output DIR        local, same layout under DIR (images/ct, images/t1-mri)
    python process.py --input DATASET --output DIR    dataset: DATASET/case_XX/case_XX_IMG_CT.nrrd (+ _IMG_MR_T1),
                                                      one map per case as DIR/case_XX.mha

This is the command line over the in-memory API (:func:`hanseg.segment`): it finds and reads the files
(contract.inputs, contract.imageio), builds the one settings object from flags and HANSEG_* variables
(hanseg.settings), sets the CPU threads once, segments each case with one loaded model, and writes the label map,
QA output and run record atomically. Data path inside segment(): README "How a case flows through the code"
(orientation -> MR registered onto the CT -> nnU-Net preprocessing -> fold ensemble -> export to the CT grid and
HaN-Seg labels -> merged left/right labels split by the mid-sagittal plane (preprocessing.laterality; models
declaring dataset.json lr_split) -> back to the CT's own axis order).

Exit codes: 0 success; 2 bad input or bad flag/variable; 3 output not writable; 4 bad model folder; 1 unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from contract.errors import InputError, ModelFolderError, OutputError
from contract.imageio import read_image, read_scan, write_image_atomic
from contract.inputs import OUTPUT_FOLDER, CaseInputs, find_dataset_cases, find_folder_case, is_dataset_root
from hanseg.settings import ENV_RECORD_DIR, Settings, SettingsError

log = logging.getLogger("process")

EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL = 0, 1, 2, 3, 4
RunOptions = Settings
"""The options of a run are the one settings object (:class:`hanseg.settings.Settings`)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as given (numbers stay strings: :meth:`Settings.from_sources` validates them by name)."""
    parser = argparse.ArgumentParser(
        description="Segment 30 head-and-neck organs at risk from a CT and a T1 MR (HaN-Seg).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--input", type=Path, help="input root (default: $HANSEG_INPUT_DIR or /input)")
    parser.add_argument("--output", type=Path, help="output root (default: $HANSEG_OUTPUT_DIR or /output)")
    parser.add_argument("--model", type=Path, help="nnU-Net v2 model folder (default: $HANSEG_MODEL_DIR, "
                        "/opt/ml/model if present, else weights/)")
    parser.add_argument("--device", help="auto (CUDA if available), cpu, cuda or cuda:N (default: $HANSEG_DEVICE, "
                        "else auto)")
    parser.add_argument("--folds", nargs="+", help="folds to ensemble (default: every fold in the model folder)")
    parser.add_argument("--no-tta", action="store_true", help="disable mirroring test-time augmentation")
    parser.add_argument("--tile-step", help="sliding-window step as a fraction of the patch (0 < step <= 1; "
                        "default 0.5)")
    parser.add_argument("--qa", type=Path, metavar="DIR",
                        help="also write quality-control PNGs, volumes and the run record here")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help=f"write each case's run record (JSON) and CT->MR transform here (default: "
                        f"${ENV_RECORD_DIR}; never inside the platform output folder)")
    parser.add_argument("--threads", help="CPU threads (default: $HANSEG_THREADS, else all available cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--fast", action="store_true",
                        help="fast CPU mode: bf16 where the CPU has it, mirroring over one axis (model/fast.py)")
    parser.add_argument("--time-budget", metavar="SECONDS",
                        help="finish each case within this many seconds by reducing folds / mirroring / tile step "
                        "(default: $HANSEG_TIME_BUDGET, else no budget)")
    parser.add_argument("--as-stored", action="store_true",
                        help="feed the voxel arrays in their stored axis order, as nnU-Net does, instead of permuting "
                        "them to the model's training orientation (only for models trained on mixed orientations)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """The one settings object from the parsed flags and the ``HANSEG_*`` variables (raises SettingsError)."""
    settings = Settings.from_sources({
        "input_root": args.input, "output_root": args.output, "model_dir": args.model, "device": args.device,
        "folds": args.folds, "use_mirroring": False if args.no_tta else None, "tile_step": args.tile_step,
        "qa_dir": args.qa, "record_dir": args.record, "threads": args.threads,
        "progress": False if args.no_progress else None, "fast": True if args.fast else None,
        "time_budget": args.time_budget, "reorient": False if args.as_stored else None,
    }, environ)
    if settings.record_dir is not None and not is_dataset_root(settings.input_root):
        platform_folder = (settings.output_root / OUTPUT_FOLDER).resolve()
        record = settings.record_dir.resolve()
        if record == platform_folder or platform_folder in record.parents:
            name = "--record" if args.record is not None else ENV_RECORD_DIR
            raise SettingsError(name, f"{settings.record_dir} is inside the platform output folder "
                                f"{settings.output_root / OUTPUT_FOLDER}, which must hold only the label map")
    return settings


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads once for the whole run: ``threads``, else every core this process may use."""
    import torch

    from model.predictor import available_cpu_threads

    n = threads or available_cpu_threads()
    torch.set_num_threads(n)
    log.info("CPU threads: %d", n)
    return n


def read_case(case: CaseInputs, wants_mr: bool) -> tuple:
    """The CT (checked, :func:`contract.imageio.read_scan`) and the MR as read (None if the case has none, or
    the model takes no MR: then the file is never read). An MR file that cannot be read as a 3-D scalar image is
    an input error; one with unusable intensities is dropped later, by the channel builder."""
    ct = read_scan(case.ct_path, "CT")
    if case.mr_path is not None and not wants_mr:
        log.info("model has no MR channel: %s is not used", case.mr_path)
    mr = read_image(case.mr_path, "T1 MR") if case.mr_path is not None and wants_mr else None
    return ct, mr


def run_case(case: CaseInputs, output_path: Path, model, options: Settings,  # noqa: ANN001
             deadline: float | None = None) -> None:
    """Segment one case (:func:`hanseg.segment`) and write its label map atomically to ``output_path``; the QA
    output and the run record too, when asked for. ``deadline``: ``time.monotonic()`` by which the case must be
    done (None: the time budget from now)."""
    from hanseg.api import segment
    from hanseg.record import write_record

    start = time.perf_counter()
    log.info("case %s: CT %s, MR %s", case.case_id, case.ct_path, case.mr_path or "none")
    ct, mr = read_case(case, wants_mr=model.folder.mr_channel is not None)
    mr_source = str(case.mr_path) if case.mr_path else "T1 MR"
    result = segment(ct, mr, model, deadline=deadline, case_id=case.case_id, mr_source=mr_source,
                     keep_model_grid=options.qa_dir is not None)
    del ct, mr
    write_image_atomic(result.labels, output_path)
    transforms = [result.mr.ct_to_mr] if result.mr.ct_to_mr is not None else []
    record = {**result.record, "inputs": {"ct": case.ct_path.name, "mr": case.mr_path.name if case.mr_path else None},
              "output": output_path.name}
    if options.qa_dir is not None:
        write_case_qa(case, result.oriented_ct, result.oriented_labels, result.mr_on_ct, options.qa_dir)
        write_record(record, options.qa_dir, case.case_id, transforms)
        write_stage_transforms(result.mr.stages, options.qa_dir, case.case_id)
    if options.record_dir is not None:
        write_record(record, options.record_dir, case.case_id, transforms)
    log.info("case %s done in %.1f s: %d OARs labelled -> %s", case.case_id, time.perf_counter() - start,
             len(result.record["volumes_ml"]), output_path)


def write_stage_transforms(stages, qa_dir: Path, case_id: str) -> None:  # noqa: ANN001
    """The MR registration transforms by stage (``<case>_ct_to_mr_rigid.tfm``, ``<case>_ct_to_mr_deformable.tfm``
    when the B-spline stage was used; CT -> MR physical space) beside the QA output."""
    from preprocessing.channels import write_transforms

    try:
        write_transforms(stages, qa_dir, case_id)
    except (OSError, RuntimeError) as err:
        raise OutputError(qa_dir, f"cannot write the transforms of case {case_id} ({err})") from None


def write_case_qa(case: CaseInputs, ct, labels, mr_on_ct, qa_dir: Path) -> None:  # noqa: ANN001
    """Quality-control PNG and per-OAR volumes for one case (the MR row shows the registered MR, if any); ``ct``,
    ``labels`` and ``mr_on_ct`` on the grid the model saw (the CT in the model's orientation)."""
    from evaluation.qa import write_qa

    try:
        written = write_qa(ct, labels, qa_dir, case.case_id, mr=mr_on_ct)
    except ValueError as err:
        raise OutputError(qa_dir, f"cannot make the QA picture of case {case.case_id} ({err})") from None
    log.info("QA: %s", ", ".join(str(p) for p in written))


def build_predictor(options: Settings):  # noqa: ANN201 - imported lazily to keep --help fast
    """The model handle (:class:`hanseg.Model`), loaded once for every case of the run."""
    from hanseg.api import Model

    return Model.load(options.model_dir, options)


def first_case_deadline(options: Settings) -> float | None:
    """The first case's time budget counts from process start (the platform's clock includes start-up)."""
    from model.budget import process_start_monotonic

    if options.time_budget is None:
        return None
    return (process_start_monotonic() or time.monotonic()) + options.time_budget


def run(input_root: Path, output_root: Path, options: Settings) -> int:
    """Process the input root in folder or dataset mode. Returns the exit code."""
    if not input_root.is_dir():
        raise InputError(input_root, "input folder does not exist")
    if is_dataset_root(input_root):
        return run_dataset(input_root, output_root, options)
    case = find_folder_case(input_root)
    output_path = output_root / OUTPUT_FOLDER / f"{case.case_id}.mha"
    run_case(case, output_path, build_predictor(options), options, first_case_deadline(options))
    return EXIT_OK


def run_dataset(input_root: Path, output_root: Path, options: Settings) -> int:
    """Every case folder under ``input_root``: finish all that can be done, report the others."""
    cases, failed = find_dataset_cases(input_root)
    log.info("dataset mode: %d cases under %s", len(cases), input_root)
    predictor = build_predictor(options) if cases else None
    written = 0
    deadline = first_case_deadline(options)
    for case in cases:
        try:
            run_case(case, output_root / f"{case.case_id}.mha", predictor, options, deadline)
            written += 1
        except (InputError, OutputError) as err:
            log.error("case %s failed: %s", case.case_id, err)
            failed.append((case.ct_path.parent, err))
        deadline = None  # later cases: the budget counts from their own start
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
    try:
        options = settings_from_args(args)
        apply_threads(options.threads)
        return run(options.input_root, options.output_root, options)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_OUTPUT
    except ModelFolderError as err:
        print(f"error: model folder: {err}", file=sys.stderr)
        return EXIT_MODEL
    except ValueError as err:  # a usage error (SettingsError names the flag or variable; --device cuda without CUDA)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())

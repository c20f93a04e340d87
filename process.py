"""HaN-Seg OAR segmentation: CT + T1 MR in, one 30-label organ-at-risk map on the CT grid out.

Modes:
    python process.py                                 platform: /input -> /output (roots: HANSEG_INPUT_DIR,
                                                      HANSEG_OUTPUT_DIR)
    python process.py --input DIR --output DIR        local, same layout under DIR (images/ct, images/t1-mri)
    python process.py --input DATASET --output DIR    dataset: DATASET/case_XX/case_XX_IMG_CT.nrrd (+ _IMG_MR_T1),
                                                      one map per case as DIR/case_XX.mha, DIR/manifest.jsonl;
                                                      a rerun skips finished cases (cohort/; --engine ray,
                                                      --shard I/N, --retry-failed, --force)
    python process.py --input STUDY --output DIR      DICOM: a folder (any depth) or .zip of DICOM files, or a
                                                      folder of such studies (dicom_io.cases); --output-type
                                                      mha,rtstruct,dicom-seg adds DIR/dicom/<case>/RTSTRUCT.dcm,
                                                      SEG.dcm (dicom_io.outputs)

This is the command line over the in-memory API (:func:`hanseg.segment`): it finds and reads the files
(contract.inputs, contract.imageio), builds the one settings object from flags and HANSEG_* variables
(hanseg.settings), sets the CPU threads once, segments each case with one loaded model, and writes the label map,
QA output and run record atomically. Data path inside segment(): README "How a case flows through the code"
(orientation -> MR registered onto the CT -> nnU-Net preprocessing -> fold ensemble -> export to the CT grid and
HaN-Seg labels -> merged left/right labels split by the mid-sagittal plane (preprocessing.laterality; models
declaring dataset.json lr_split) -> back to the CT's own axis order).

Exit codes: 0 success; 2 bad input or bad flag/variable; 3 output not writable or not in a usable state; 4 bad
model folder; 130/143 interrupted by SIGINT/SIGTERM; 1 unexpected (README "Exit codes", "Security").
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cohort.case_files import apply_threads, build_predictor, first_case_deadline, run_case
from cohort.job import DatasetOptions, EngineSettings
from cohort.shard import parse_shard
from contract.errors import EXIT_INPUT, EXIT_OK, InputError, ModelFolderError, OutputError, error_line, exit_code
from contract.inputs import OUTPUT_FOLDER, CaseInputs, find_folder_case, is_dataset_root
from contract.output_state import (
    Interrupted,
    check_output_name,
    check_output_not_in_input,
    check_single_image_folder,
    install_signal_handlers,
    remove_stale_partials,
)
from hanseg.settings import ENV_RECORD_DIR, Settings, SettingsError

log = logging.getLogger("process")

RunOptions = Settings
"""The options of a run are the one settings object (:class:`hanseg.settings.Settings`)."""


@dataclass(frozen=True)
class DicomRequest:
    """The DICOM flags: ``--output-type`` (subset of mha, rtstruct, dicom-seg), ``--ct-series``, ``--mr-series``."""

    output_types: frozenset[str] = frozenset({"mha"})
    ct_series: str | None = None
    mr_series: str | None = None


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
    parser.add_argument("--threads", help="CPU threads (default: $HANSEG_THREADS, else the usable cores that no "
                        "other process is busy on, measured at start)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--fast", action="store_true",
                        help="fast CPU mode: bf16 where the CPU has it, mirroring over one axis (model/fast.py)")
    parser.add_argument("--time-budget", metavar="SECONDS",
                        help="finish each case within this many seconds by reducing folds / mirroring / tile step "
                        "(default: $HANSEG_TIME_BUDGET, else no budget)")
    parser.add_argument("--as-stored", action="store_true",
                        help="feed the voxel arrays in their stored axis order, as nnU-Net does, instead of permuting "
                        "them to the model's training orientation (only for models trained on mixed orientations)")
    parser.add_argument("--trust-model", action="store_true",
                        help="load the model folder's checkpoints with full unpickling, which can run code the files "
                        "carry; only for a model folder you trust as code (default: weights and plain values only, "
                        "anything else refused with exit 4)")
    parser.add_argument("--output-type", default="mha", metavar="TYPES",
                        help="comma-separated outputs: mha (default, the platform contract), rtstruct, dicom-seg")
    parser.add_argument("--ct-series", metavar="UID", help="DICOM input: SeriesInstanceUID of the CT to segment")
    parser.add_argument("--mr-series", metavar="UID", help="DICOM input: SeriesInstanceUID of the T1 MR to use")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cohort = parser.add_argument_group("dataset mode (cohorts; cohort/ and README \"Cohorts\")")
    cohort.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process, one case after another (default); ray: Ray actors that each "
                        "load the model once (pip install -r requirements-ray.txt)")
    cohort.add_argument("--address", help="with --engine ray: join this Ray cluster (auto or HOST:PORT) instead "
                        "of starting a local Ray for the run")
    cohort.add_argument("--workers", type=int, help="with --engine ray: number of actors (default: one per GPU, "
                        "else one per --cpus-per-worker CPUs)")
    cohort.add_argument("--cpus-per-worker", type=int, help="with --engine ray: CPUs (and threads) per actor "
                        "(default 1)")
    cohort.add_argument("--shard", metavar="I/N", help="only the cases with hash(case) mod N == I (I from 0), for "
                        "job arrays: N runs with I = 0..N-1 cover the cohort exactly once")
    cohort.add_argument("--retry-failed", action="store_true", help="also rerun the cases the manifest records as "
                        "failed (finished cases are still skipped)")
    cohort.add_argument("--force", action="store_true", help="redo every case, even those already finished")
    args = parser.parse_args(argv)
    if any(value is not None and value < 1 for value in (args.workers, args.cpus_per_worker)):
        parser.error("--workers and --cpus-per-worker must be >= 1")
    if args.engine != "ray" and (args.address or args.workers or args.cpus_per_worker):
        parser.error("--address, --workers and --cpus-per-worker need --engine ray")
    try:
        args.dicom = DicomRequest(_parse_output_types(args.output_type), args.ct_series, args.mr_series)
    except ValueError as err:
        parser.error(str(err))
    return args


def _parse_output_types(text: str) -> frozenset[str]:
    if text.strip().lower() == "mha":
        return frozenset({"mha"})
    from dicom_io.outputs import parse_output_types

    return parse_output_types(text)


def dataset_options_from_args(args: argparse.Namespace) -> DatasetOptions:
    """The dataset-mode flags (raises ValueError naming --shard on a bad value)."""
    return DatasetOptions(
        engine=EngineSettings(kind=args.engine, address=args.address, workers=args.workers,
                              cpus_per_worker=args.cpus_per_worker or 1),
        shard=parse_shard(args.shard) if args.shard else None,
        retry_failed=args.retry_failed, force=args.force)


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """The one settings object from the parsed flags and the ``HANSEG_*`` variables (raises SettingsError)."""
    settings = Settings.from_sources({
        "input_root": args.input, "output_root": args.output, "model_dir": args.model, "device": args.device,
        "folds": args.folds, "use_mirroring": False if args.no_tta else None, "tile_step": args.tile_step,
        "qa_dir": args.qa, "record_dir": args.record, "threads": args.threads,
        "progress": False if args.no_progress else None, "fast": True if args.fast else None,
        "time_budget": args.time_budget, "reorient": False if args.as_stored else None,
        "trust_model": True if args.trust_model else None,
    }, environ)
    if settings.record_dir is not None and not is_dataset_root(settings.input_root):
        platform_folder = (settings.output_root / OUTPUT_FOLDER).resolve()
        record = settings.record_dir.resolve()
        if record == platform_folder or platform_folder in record.parents:
            name = "--record" if args.record is not None else ENV_RECORD_DIR
            raise SettingsError(name, f"{settings.record_dir} is inside the platform output folder "
                                f"{settings.output_root / OUTPUT_FOLDER}, which must hold only the label map")
    return settings


def run(input_root: Path, output_root: Path, options: Settings, dataset: DatasetOptions | None = None,
        dicom: DicomRequest | None = None) -> int:
    """Process the input root in folder, dataset or DICOM mode. Returns the exit code."""
    dicom = dicom or DicomRequest()
    if _is_dicom_input(input_root):
        return run_dicom(input_root, output_root, options, dicom)
    if not input_root.is_dir():
        raise InputError(input_root, "input folder does not exist")
    check_output_not_in_input(input_root, output_root)
    if is_dataset_root(input_root):
        if dicom.output_types != frozenset({"mha"}):
            raise ValueError(f"{input_root}: --output-type rtstruct/dicom-seg is not yet available for a dataset of "
                             ".nrrd/.mha cases (use it per case, or on a folder of DICOM studies)")
        return run_dataset(input_root, output_root, options, dataset or DatasetOptions())
    if dataset is not None and dataset != DatasetOptions():
        raise ValueError(f"{input_root}: --engine, --shard, --retry-failed and --force apply to dataset mode only "
                         "(a folder of case_XX/ folders)")
    case = find_folder_case(input_root)
    output_path = output_root / OUTPUT_FOLDER / f"{case.case_id}.mha"
    check_output_name(output_path)
    check_single_image_folder(output_path.parent, output_path.name)
    remove_stale_partials(output_path.parent)  # the platform's output folder: no other writer
    run_case_outputs(case, output_path, build_predictor(options), options, dicom, output_root,
                     first_case_deadline(options))
    return EXIT_OK


def run_case_outputs(case: CaseInputs, output_path: Path, model, options: Settings,  # noqa: ANN001
                     dicom: DicomRequest, output_root: Path, deadline: float | None = None,
                     ct_headers: list | None = None) -> None:
    """:func:`run_case`, then the DICOM outputs ``--output-type`` asks for (``dicom_io.outputs``): the .mha is
    moved to ``output_path`` only after they are written, and only if ``mha`` was asked for."""
    if dicom.output_types == frozenset({"mha"}):
        run_case(case, output_path, model, options, deadline)
        return
    import SimpleITK as sitk

    from contract.imageio import read_scan
    from dicom_io.outputs import case_dicom_folder, write_dicom_outputs
    from dicom_io.provenance import provenance_for

    staged = output_path.with_name(f".staged-{output_path.name}")
    dicom_folder = case_dicom_folder(output_root, case.case_id)
    created = [d for d in (output_path.parent, output_path.parent.parent, dicom_folder.parent) if not d.exists()]
    try:
        run_case(case, staged, model, options, deadline)
        labels = sitk.ReadImage(str(staged))
        write_dicom_outputs(labels, read_scan(case.ct_path, "CT"), ct_headers, dicom_folder, dicom.output_types,
                            provenance_for(options.model_dir), case.case_id)
        if "mha" in dicom.output_types:
            os.replace(staged, output_path)
    except BaseException:
        staged.unlink(missing_ok=True)
        for folder in sorted(created, key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing of this case is left behind
        raise
    staged.unlink(missing_ok=True)


def _is_dicom_input(input_root: Path) -> bool:
    if input_root.suffix.lower() != ".zip" and (not input_root.is_dir() or (input_root / "images").is_dir()
                                                or is_dataset_root(input_root)):
        return False
    from dicom_io.discovery import is_dicom_input

    return is_dicom_input(input_root)


def run_dicom(input_root: Path, output_root: Path, options: Settings, dicom: DicomRequest) -> int:
    """DICOM input (``dicom_io``): one study (folder or .zip), or a folder of studies (like dataset mode)."""
    from dicom_io.cases import dataset_studies

    models: list = []

    def model():  # noqa: ANN202 - loaded once, after the first study's series passed their checks
        if not models:
            models.append(build_predictor(options))
        return models[0]

    studies = dataset_studies(input_root)
    if studies is None:
        run_dicom_study(input_root, output_root / OUTPUT_FOLDER, output_root, model, options, dicom,
                        first_case_deadline(options))
        return EXIT_OK
    log.info("DICOM dataset mode: %d studies under %s", len(studies), input_root)
    failed = []
    for study in studies:
        try:
            run_dicom_study(study, output_root, output_root, model, options, dicom, None)
        except (InputError, OutputError) as err:
            log.error("study %s failed: %s", study.name, err)
            failed.append((study, err))
    for study, err in failed:
        print(f"error: case {study.name}: {err}", file=sys.stderr)
    return EXIT_INPUT if failed else EXIT_OK


def run_dicom_study(study_path: Path, mha_folder: Path, output_root: Path, model: Callable, options: Settings,
                    dicom: DicomRequest, deadline: float | None) -> None:
    """Choose and check the study's CT / MR series, read them, and run the case with DICOM references;
    ``model()`` gives the loaded model (so a bad study is refused before the model is loaded)."""
    import tempfile

    from dicom_io.cases import case_id_of, materialise
    from dicom_io.discovery import choose_series, opened_input, scan_series

    with opened_input(study_path) as root, tempfile.TemporaryDirectory(prefix="hanseg-case-") as tmp:
        study = choose_series(scan_series(root, shown_as=study_path if root != study_path else None), study_path,
                              dicom.ct_series, dicom.mr_series, case_id=case_id_of(study_path))
        case = materialise(study, Path(tmp))
        run_case_outputs(case, mha_folder / f"{case.case_id}.mha", model(), options, dicom, output_root, deadline,
                         ct_headers=study.ct.headers)


def run_dataset(input_root: Path, output_root: Path, options: Settings, dataset: DatasetOptions) -> int:
    """Every case folder under ``input_root`` (:mod:`cohort`): the manifest in ``output_root`` lets a rerun skip
    finished cases; every failure is recorded and the run goes on; the summary groups the failures."""
    from cohort.job import CohortJob, RunnerSpec, model_identity, software_version
    from cohort.run import run_cohort

    case_options = replace(options, progress=False)  # the cohort shows one bar over the cases
    if dataset.engine.kind == "ray":  # one thread per CPU of the actor unless --threads says otherwise
        case_options = replace(case_options, threads=options.threads or dataset.engine.cpus_per_worker)
    facts = {
        "software": software_version(),
        "model": model_identity(options.model_dir, list(options.folds) if options.folds else None),
        "settings": {"device": options.device, "use_mirroring": options.use_mirroring, "tile_step": options.tile_step,
                     "fast": options.fast, "time_budget": options.time_budget, "reorient": options.reorient},
    }
    runner = RunnerSpec("cohort.case_files:build_case_runner", asdict(case_options))
    job = CohortJob(input_root, output_root, runner, facts, options=dataset, progress=options.progress)
    summary = run_cohort(job)
    for line in summary.lines():
        print(line, file=sys.stderr)
    return summary.exit_code()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_signal_handlers()
    for name in ("HANSEG_INPUT_DIR", "HANSEG_OUTPUT_DIR", "HANSEG_MODEL_DIR"):
        if name in os.environ and not os.environ[name].strip():
            print(f"error: {name} is set but empty (unset it for the default, or name a folder)", file=sys.stderr)
            return EXIT_INPUT
    try:
        options = settings_from_args(args)
        dataset = dataset_options_from_args(args)
        apply_threads(options.threads)
        return run(options.input_root, options.output_root, options, dataset, args.dicom)
    except (InputError, OutputError, ModelFolderError) as err:
        print(error_line(err, name_model_folder=True), file=sys.stderr)
        return exit_code(err)
    except ValueError as err:  # a usage error (SettingsError names the flag or variable; --device cuda without CUDA)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except (Interrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}; no partial output left", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())

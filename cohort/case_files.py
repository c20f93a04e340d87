"""One dataset or folder case from files to files: read and check the CT (and MR), :func:`hanseg.segment` with a
model loaded once, write the label map atomically, the QA output and the run record when asked for.

process.py (folder and dataset mode) and every cohort worker (this process or a Ray actor, through
:func:`build_case_runner`) run a case with these functions.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.errors import OutputError
from contract.imageio import read_image, read_scan, write_image_atomic
from contract.inputs import CaseInputs
from hanseg.settings import Settings

log = logging.getLogger("process")


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads once for the whole run: ``threads``, else the usable cores that no other process
    is busy on at start-up (:func:`model.cpu_threads.default_threads`)."""
    import torch

    from model.cpu_threads import default_threads

    if threads:
        n = threads
        log.info("CPU threads: %d (as asked)", n)
    else:
        choice = default_threads()
        n = choice.threads
        log.info("CPU threads: %s", choice.describe())
    torch.set_num_threads(n)
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
    done (None: the time budget from now). Afterwards, done or failed, the case's freed memory goes back to the
    system (:func:`model.cpu_heap.release_freed_memory`)."""
    from model.cpu_heap import release_freed_memory

    try:
        _run_case(case, output_path, model, options, deadline)
    finally:
        release_freed_memory()


def _run_case(case: CaseInputs, output_path: Path, model, options: Settings,  # noqa: ANN001
              deadline: float | None) -> None:
    from hanseg.api import segment
    from hanseg.record import write_record

    start = time.perf_counter()
    log.info("case %s: CT %s, MR %s", case.case_id, case.ct_path, case.mr_path or "none")
    prepare_output(output_path)
    ct, mr = read_case(case, wants_mr=model.folder.mr_channel is not None)
    mr_source = str(case.mr_path) if case.mr_path else "T1 MR"
    result = segment(ct, mr, model, deadline=deadline, case_id=case.case_id, mr_source=mr_source,
                     keep_model_grid=options.qa_dir is not None, ct_source=str(case.ct_path))
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


def prepare_output(output_path: Path) -> None:
    """Before inference (issue 13): the output name fits the file system; a previous result of the same name and
    this output's stale ``.partial`` files of an interrupted run (SIGKILL) are removed, so a failed run leaves no
    stale result (other cases' temporary files may belong to concurrent workers: left alone)."""
    from contract.output_state import check_output_name, remove_stale_partials

    check_output_name(output_path)
    remove_stale_partials(output_path.parent, output_path.name)
    if output_path.is_file() or output_path.is_symlink():
        log.info("removing the previous result %s", output_path)
        try:
            output_path.unlink()
        except OSError as err:
            raise OutputError(output_path, f"cannot remove the previous result ({err.strerror or err})") from None
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


def build_case_runner(options: dict[str, Any]) -> Callable[[CaseInputs, Path], None]:
    """The per-case function of dataset mode (:class:`cohort.job.RunnerSpec` factory, called once per worker, in
    this process or a Ray actor): applies the threads, loads the model once and returns
    ``segment(case, output_path)``. ``options``: the fields of :class:`Settings`."""
    settings = Settings(**options)
    apply_threads(settings.threads)
    return functools.partial(run_case, model=build_predictor(settings), options=settings)

"""A cohort run: find the cases, keep this shard's, plan from the manifest, run them on an engine, summarise.

    job = CohortJob(input_root, output_root, RunnerSpec("process:build_case_runner", options), facts)
    summary = run_cohort(job)          # raises ModelFolderError if the model cannot be loaded at all
    sys.exit(summary.exit_code())
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cohort.job import CohortJob
from cohort.local_engine import LocalEngine
from cohort.manifest import ManifestWriter, latest_records, manifest_path
from cohort.outcome import CaseError, CaseOutcome, failed_outcome
from cohort.plan import input_fingerprint, plan_cases
from cohort.shard import select_shard
from cohort.summary import CohortSummary
from contract.errors import InputError
from contract.inputs import CaseInputs, find_dataset_cases

log = logging.getLogger(__name__)


def make_engine(job: CohortJob, on_dispatch: Callable[[CaseInputs, Any], None] | None = None) -> Any:  # noqa: ANN401
    """The engine ``job.options.engine.kind`` names (``local`` or ``ray``)."""
    if job.options.engine.kind == "local":
        return LocalEngine(job.runner)
    if job.options.engine.kind == "ray":
        from cohort.ray_engine import RayEngine

        return RayEngine(job.runner, job.options.engine, on_dispatch=on_dispatch)
    raise ValueError(f"--engine {job.options.engine.kind!r}: expected local or ray")


def run_cohort(job: CohortJob, engine: Any = None) -> CohortSummary:  # noqa: ANN401
    """Run ``job`` (on ``engine``, default :func:`make_engine`) and return what happened; every case outcome is in
    the manifest before this returns."""
    cases, problems = find_dataset_cases(job.input_root)
    cases = select_shard(cases, job.options.shard, lambda case: case.case_id)
    problems = select_shard(problems, job.options.shard, lambda problem: problem[0].name)
    shard_note = f" (shard {job.options.shard})" if job.options.shard else ""
    plan = plan_cases(cases, latest_records(job.output_root), job.input_root, job.output_root, job.config_id,
                      retry_failed=job.options.retry_failed, force=job.options.force)
    log.info("dataset mode%s: %d cases under %s: %d to run, %d finished earlier, %d failed earlier (not retried), "
             "%d unusable folders", shard_note, len(cases) + len(problems), job.input_root, len(plan.to_run),
             len(plan.finished), len(plan.failed_before), len(problems))
    engine = engine or make_engine(job)
    summary = CohortSummary(total=len(cases) + len(problems), finished_before=len(plan.finished),
                            failed_before=plan.failed_before)
    run_facts = {"run_id": uuid.uuid4().hex[:12], "config": job.config_id, "engine": engine.name,
                 "shard": str(job.options.shard) if job.options.shard else None, **job.facts}
    inputs = {case.case_id: _fingerprint_or_none(case, job.input_root) for case in plan.to_run}
    start = time.perf_counter()
    with ManifestWriter(manifest_path(job.output_root, job.options.shard)) as manifest, \
            tqdm(total=len(plan.to_run) + len(problems), desc="cases", unit="case", disable=not job.progress) as bar:

        def record(outcome: CaseOutcome) -> bool:
            manifest.append(to_record(outcome, inputs.get(outcome.case_id), run_facts))
            summary.outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(failed=sum(not o.ok for o in summary.outcomes), refresh=False)
            if outcome.error is not None and outcome.error.kind == "model":
                summary.stopped = True
                return False
            return True

        for folder, err in problems:
            record(folder_problem(folder, err))
        try:
            engine.run(plan.to_run, job.output_root, record)
        finally:
            summary.seconds = time.perf_counter() - start
    written = summary.written_now + summary.finished_before
    log.info("dataset mode%s: %d of %d cases written to %s", shard_note, written, summary.total, job.output_root)
    return summary


def _fingerprint_or_none(case: CaseInputs, input_root: Path) -> dict[str, Any] | None:
    try:
        return input_fingerprint(case, input_root)
    except OSError:  # the case itself reports the unreadable file
        return None


def folder_problem(folder: Path, err: InputError) -> CaseOutcome:
    """The failed outcome of a case folder that cannot be used (two CTs, no CT among its images)."""
    return failed_outcome(folder.name, CaseError(kind="input", type=type(err).__name__, message=str(err),
                                                 problem=err.problem))


def to_record(outcome: CaseOutcome, inputs: dict[str, Any] | None, run_facts: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of one outcome."""
    record = outcome.to_dict()
    record["case"] = record.pop("case_id")
    record["inputs"] = inputs
    record["run"] = run_facts
    return record

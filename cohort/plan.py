"""Which cases a (re)run must do, from the manifest: skip what is finished and still current, redo the rest."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cohort.manifest import file_sha256
from contract.inputs import CaseInputs

log = logging.getLogger(__name__)


@dataclass
class CasePlan:
    """``to_run`` in input order; ``finished``: ids skipped because their output is verified current;
    ``failed_before``: id -> latest record of failed cases that are not retried (no ``--retry-failed``)."""

    to_run: list[CaseInputs] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed_before: dict[str, dict[str, Any]] = field(default_factory=dict)


def input_fingerprint(case: CaseInputs, input_root: Path) -> dict[str, Any]:
    """Path (relative to the input root), size and modification time of the case's CT and MR: a changed input
    file means the case is redone."""
    def describe(path: Path | None) -> dict[str, Any] | None:
        if path is None:
            return None
        stat = path.stat()
        try:
            name = path.relative_to(input_root).as_posix()
        except ValueError:
            name = path.name
        return {"path": name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    return {"ct": describe(case.ct_path), "mr": describe(case.mr_path)}


def _why_not_current(record: Mapping[str, Any], inputs: dict[str, Any], config_id: str,
                     output_root: Path) -> str | None:
    """None if ``record`` proves the case finished with the current inputs and settings, else the reason."""
    if record.get("inputs") != inputs:
        return "its input files changed since it was run"
    run = record.get("run")
    if not isinstance(run, Mapping) or run.get("config") != config_id:
        return "the model or the output settings changed since it was run"
    if record.get("status") != "done":
        return None
    output = output_root / str(record.get("output"))
    if not output.is_file():
        return f"its output {output.name} is missing"
    if file_sha256(output) != record.get("sha256"):
        return f"its output {output.name} does not match the manifest's hash"
    return None


def plan_cases(cases: Sequence[CaseInputs], records: Mapping[str, Mapping[str, Any]], input_root: Path,
               output_root: Path, config_id: str, retry_failed: bool = False, force: bool = False) -> CasePlan:
    """Sort ``cases`` into run / skip-as-finished / failed-before, logging why each known case runs again."""
    plan = CasePlan()
    for case in cases:
        record = records.get(case.case_id)
        if force or record is None:
            plan.to_run.append(case)
            continue
        try:
            reason = _why_not_current(record, input_fingerprint(case, input_root), config_id, output_root)
        except OSError as err:  # an input vanished or cannot be read: the case itself will report it
            reason = f"its files cannot be checked ({err})"
        if reason is not None:
            log.info("case %s runs again: %s", case.case_id, reason)
            plan.to_run.append(case)
        elif record.get("status") == "done":
            plan.finished.append(case.case_id)
        elif retry_failed:
            plan.to_run.append(case)
        else:
            plan.failed_before[case.case_id] = dict(record)
    return plan

"""One case, run so that nothing it raises can stop the cohort: what happened, as a picklable outcome.

:func:`run_case_safely` is what every engine calls for a case (in the command's own process, or in a Ray actor):
it clears what an earlier killed attempt left, runs the case function (which writes the label map atomically),
hashes the written file, and turns ANY exception into a recorded failure with its kind:

- ``input``: :class:`InputError` (fix the case's files);
- ``output``: :class:`OutputError` (disk full, permissions);
- ``model``: :class:`ModelFolderError` (the model folder cannot serve any case: the run stops);
- ``unexpected``: any other exception (a bug: the traceback is logged and kept in the record);
- ``worker_died``: set by an engine whose worker process died on the case every time it was tried.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cohort.manifest import file_sha256
from contract.errors import InputError, ModelFolderError, OutputError
from contract.inputs import CaseInputs

log = logging.getLogger(__name__)

CaseRunner = Callable[[CaseInputs, Path], None]
"""Segments one case and writes its label map atomically to the given path (loaded model inside)."""

TRACEBACK_LINES = 40
KNOWN_ERRORS = ((InputError, "input"), (OutputError, "output"), (ModelFolderError, "model"))


@dataclass(frozen=True)
class CaseError:
    """Why a case failed. ``problem`` is the message without the file path, used to group failures."""

    kind: str
    type: str
    message: str
    problem: str
    traceback: str | None = None


@dataclass(frozen=True)
class CaseOutcome:
    """The result of one attempt at one case (times in seconds, timestamps UTC ISO 8601)."""

    case_id: str
    status: str  # "done" | "failed"
    output: str | None  # file name relative to the output folder
    sha256: str | None
    bytes: int | None
    started_at: str
    finished_at: str
    seconds: float
    worker: str
    error: CaseError | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def worker_name() -> str:
    """``host:pid`` of the process running the case."""
    return f"{socket.gethostname()}:{os.getpid()}"


def partial_files(output_path: Path) -> list[Path]:
    """Temporary files that :func:`contract.imageio.write_image_atomic` leaves for ``output_path`` when its process
    is killed between creating and renaming them (``.<name>.<random>.partial<suffix>``)."""
    if not output_path.parent.is_dir():
        return []
    return sorted(output_path.parent.glob(f".{output_path.name}.*.partial*"))


def remove_partial_files(output_path: Path) -> None:
    """Delete what a killed attempt at this case left behind (only this case's own temporary files)."""
    for path in partial_files(output_path):
        log.warning("removing %s, left by an interrupted attempt", path)
        path.unlink(missing_ok=True)


def describe_error(err: BaseException) -> CaseError:
    """The recorded form of an exception raised by a case."""
    for error_type, kind in KNOWN_ERRORS:
        if isinstance(err, error_type):
            return CaseError(kind=kind, type=type(err).__name__, message=str(err), problem=err.problem)
    first_line = (str(err).strip().splitlines() or [""])[0][:300]
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return CaseError(kind="unexpected", type=type(err).__name__, message=f"{type(err).__name__}: {first_line}",
                     problem=f"{type(err).__name__}: {first_line}",
                     traceback="".join(lines[-TRACEBACK_LINES:]))


def failed_outcome(case_id: str, error: CaseError, started_at: str | None = None, seconds: float = 0.0,
                   worker: str | None = None, attempts: int = 1) -> CaseOutcome:
    """A failed outcome that no case function produced (a folder that is not a usable case, a dead worker)."""
    now = utc_now()
    return CaseOutcome(case_id=case_id, status="failed", output=None, sha256=None, bytes=None,
                       started_at=started_at or now, finished_at=now, seconds=seconds,
                       worker=worker or worker_name(), error=error, attempts=attempts)


def run_case_safely(runner: CaseRunner, case: CaseInputs, output_root: Path) -> CaseOutcome:
    """Run one case; never raises an ``Exception`` (``KeyboardInterrupt`` and ``SystemExit`` still stop the run)."""
    output_path = output_root / f"{case.case_id}.mha"
    started_at, start = utc_now(), time.perf_counter()
    try:
        remove_partial_files(output_path)
        runner(case, output_path)
        digest, size = file_sha256(output_path), output_path.stat().st_size
    except Exception as err:  # noqa: BLE001 - every failure of one case is recorded and the cohort goes on
        error = describe_error(err)
        if error.kind == "unexpected":
            log.error("case %s: unexpected error (a bug; traceback follows)", case.case_id, exc_info=err)
        else:
            log.error("case %s failed: %s", case.case_id, err)
        return failed_outcome(case.case_id, error, started_at, time.perf_counter() - start)
    return CaseOutcome(case_id=case.case_id, status="done", output=output_path.name, sha256=digest, bytes=size,
                       started_at=started_at, finished_at=utc_now(), seconds=time.perf_counter() - start,
                       worker=worker_name())

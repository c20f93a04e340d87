"""The cohort manifest: one JSON line per finished case attempt, in the output folder.

``OUTPUT/manifest.jsonl`` (``manifest.shard-I-of-N.jsonl`` for ``--shard I/N``, so that shard runs sharing an output
folder never write the same file). Each line is one self-contained record (:func:`cohort.outcome.to_record`):
case, status (``done`` / ``failed``), output file name and its SHA-256, timings, the error if any, and the run's
key facts (software version, model name and weights hash, folds, settings, engine). The latest record of a case
(by ``finished_at``, over every manifest file in the folder) is its state.

Atomic per case: a record is appended with ONE ``write`` on an ``O_APPEND`` descriptor and ``fsync``-ed before the
next case is reported, so a crash loses at most the line being written; a torn last line (the process killed
mid-write) is skipped with a warning when the manifest is read, and the next append starts on a new line. One writer
per file: the command itself (the Ray driver, not the actors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cohort.shard import Shard
from contract.errors import OutputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_GLOB = "manifest*.jsonl"
HASH_CHUNK_BYTES = 1 << 20


def manifest_path(output_root: Path, shard: Shard | None) -> Path:
    """The manifest file this run writes."""
    if shard is None:
        return output_root / MANIFEST_NAME
    return output_root / f"manifest.shard-{shard.index}-of-{shard.count}.jsonl"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one manifest file, in file order; unparsable lines (a torn last line) are skipped."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s:%d: not a complete JSON record (interrupted write?): ignored", path, number)
                continue
            if isinstance(record, dict) and isinstance(record.get("case"), str):
                yield record
            else:
                log.warning("%s:%d: not a case record: ignored", path, number)


KEPT_FIELDS = ("case", "status", "output", "sha256", "inputs", "finished_at", "started_at", "attempts", "worker")


def _essentials(record: dict[str, Any]) -> dict[str, Any]:
    """What a rerun needs of a record (a cohort of 100,000 cases keeps 100,000 of them in memory): the run facts
    reduced to their config id, the error without its traceback."""
    kept = {key: record.get(key) for key in KEPT_FIELDS}
    run = record.get("run")
    kept["run"] = {"config": run.get("config"), "run_id": run.get("run_id")} if isinstance(run, dict) else None
    error = record.get("error")
    kept["error"] = {k: v for k, v in error.items() if k != "traceback"} if isinstance(error, dict) else None
    return kept


def latest_records(output_root: Path) -> dict[str, dict[str, Any]]:
    """Case id -> the essentials of its latest record, over every manifest file in ``output_root`` (empty if
    there is none)."""
    latest: dict[str, dict[str, Any]] = {}
    if not output_root.is_dir():
        return latest
    for path in sorted(output_root.glob(MANIFEST_GLOB)):
        for record in read_records(path):
            previous = latest.get(record["case"])
            if previous is None or str(record.get("finished_at", "")) >= str(previous.get("finished_at", "")):
                latest[record["case"]] = _essentials(record)
    return latest


class ManifestWriter:
    """Appends records to one manifest file, one atomic line per case."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(path, f"cannot open the manifest for writing ({err.strerror or err})") from None
        self._needs_newline = self._ends_torn()

    def _ends_torn(self) -> bool:
        """True if the file's last byte is not a newline (a record cut short by a crash)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            return fh.read(1) != b"\n"

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and flush it to disk."""
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
        data = (("\n" if self._needs_newline else "") + line).encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as err:
            raise OutputError(self.path, f"cannot write the manifest ({getattr(err, 'strerror', None) or err})") \
                from None
        self._needs_newline = False

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

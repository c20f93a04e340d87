"""What a cohort run is: the per-case function to build in each worker, the run's key facts, and its options."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cohort.manifest import file_sha256
from cohort.outcome import CaseRunner
from cohort.shard import Shard
from contract.errors import ModelFolderError

PACKAGE_NAME = "hanseg-oar"


@dataclass(frozen=True)
class RunnerSpec:
    """How to build the per-case function in any process (the command's own, or a Ray actor on another node):
    ``factory`` names a ``module:function`` of this code base, called once per worker with ``options`` (a plain,
    picklable mapping); it loads the model and returns a :data:`cohort.outcome.CaseRunner`."""

    factory: str
    options: Mapping[str, Any]

    def build(self) -> CaseRunner:
        module_name, _, function_name = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), function_name)(dict(self.options))


@dataclass(frozen=True)
class EngineSettings:
    """``--engine`` and its options. ``workers`` None: one per GPU, else one per ``cpus_per_worker`` CPUs."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    max_attempts: int = 3


@dataclass(frozen=True)
class DatasetOptions:
    """The dataset-mode flags: engine, ``--shard``, ``--retry-failed``, ``--force``."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    shard: Shard | None = None
    retry_failed: bool = False
    force: bool = False


@dataclass(frozen=True)
class CohortJob:
    """One cohort run over ``input_root`` (HaN-Seg dataset layout) into ``output_root``.

    ``facts`` are the run's key facts (JSON-able: software, model identity, settings that change the output),
    recorded with every case; a finished case is only skipped on a rerun whose facts hash the same.
    """

    input_root: Path
    output_root: Path
    runner: RunnerSpec
    facts: Mapping[str, Any]
    options: DatasetOptions = field(default_factory=DatasetOptions)
    progress: bool = True

    @property
    def config_id(self) -> str:
        """SHA-256 (first 16 hex digits) of the facts: equal ids mean the same model and output settings."""
        return hashlib.sha256(json.dumps(self.facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def software_version() -> str:
    """The installed package's version, or ``unknown (not installed)`` when running from a source tree."""
    try:
        return metadata.version(PACKAGE_NAME)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def model_identity(model_dir: Path, folds: list[str] | None) -> dict[str, Any]:
    """Name, folds and a SHA-256 over ``plans.json``, ``dataset.json`` and the used folds' final checkpoints.

    Raises:
        ModelFolderError: a file is missing (the full check happens when the model is loaded).
    """
    from model.model_folder import CHECKPOINT_NAME, find_folds

    if not model_dir.is_dir():
        raise ModelFolderError(model_dir, "model folder does not exist")
    used = list(folds) if folds else find_folds(model_dir)
    files = [model_dir / "plans.json", model_dir / "dataset.json"]
    files += [model_dir / f"fold_{fold}" / CHECKPOINT_NAME for fold in used]
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise ModelFolderError(path, "file does not exist")
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0" + file_sha256(path).encode())
    return {"name": model_dir.name, "folds": used, "sha256": digest.hexdigest()}

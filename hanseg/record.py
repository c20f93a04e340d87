"""The run record of one case: what made this label map, for audit and to reproduce it.

Contents (JSON): software version and commit, model identity (name, trainer, configuration, folds, SHA-256 of the
weights), device, the inference settings, what the time budget gave up, the MR decision with the registration
metrics and the rigid CT->MR transform, per-OAR volumes (ml) and timings per stage (s). The transforms are also
written with ``sitk.WriteTransform`` (:func:`write_transforms`), so they can be applied in any ITK tool.

The record is written next to the QA output, or on request into a record folder; never into the platform's output
folder (``images/head_neck_oar``), which must hold exactly the label map.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import SimpleITK as sitk

from contract.atomic import write_atomic
from hanseg.settings import APP_DIR

if TYPE_CHECKING:
    from hanseg.api import Model
    from model.predictor import PredictionReport
    from preprocessing.channels import MrDecision

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".record.json"
TRANSFORM_SUFFIX = ".tfm"
SCHEMA = "hanseg-run-record/1"


def software_version() -> str:
    from hanseg import __version__

    return __version__


def software_commit() -> str | None:
    """The git commit of the code that ran (None outside a git checkout, e.g. in the image)."""
    try:
        out = subprocess.run(["git", "-C", str(APP_DIR), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


_COMMIT: list[str | None] = []


def _cached_commit() -> str | None:
    if not _COMMIT:
        _COMMIT.append(software_commit())
    return _COMMIT[0]


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN/inf: such a metric is stored as null."""
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}


def transform_record(transform: sitk.Transform | None) -> dict[str, Any] | None:
    """A transform as JSON: its ITK class name, parameters and fixed parameters (units: radians, mm)."""
    if transform is None:
        return None
    return {"kind": transform.GetName(), "parameters": list(transform.GetParameters()),
            "fixed_parameters": list(transform.GetFixedParameters()),
            "direction": "CT physical point -> MR physical point (LPS, mm)"}


def build_record(case_id: str, model: Model, mr: MrDecision, report: PredictionReport,
                 timings: dict[str, float], volumes_ml: dict[str, float]) -> dict[str, Any]:
    """The run record of one segmented case (a JSON-ready dict)."""
    return {
        "schema": SCHEMA,
        "case": case_id,
        "software": {"name": "hanseg-oar", "version": software_version(), "commit": _cached_commit(),
                     "python": platform.python_version()},
        "model": model.identity.as_dict(),
        "device": model.device,
        "settings": model.settings.inference_dict(),
        "ran": {"folds": report.folds, "mirror_axes": report.mirror_axes, "tile_step": report.tile_step},
        "time_budget_gave_up": report.given_up,
        "mr": {"decision": mr.status, "reason": mr.reason, "registration_metrics": _finite(mr.metrics),
               "registration_seconds": round(mr.seconds, 3), "ct_to_mr": transform_record(mr.ct_to_mr)},
        "volumes_ml": volumes_ml,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def write_transforms(transforms: Sequence[sitk.Transform], path: Path) -> Path:
    """Write ``transforms`` (applied in order, e.g. rigid then deformable CT->MR) as one ITK transform file
    (a composite when there are several), atomically. Returns ``path``."""
    if not transforms:
        raise ValueError("no transform to write")
    if len(transforms) == 1:
        transform = transforms[0]
    else:
        transform = sitk.CompositeTransform(3)
        # ITK composites apply the LAST added transform first: add in reverse so transforms[0] is applied first.
        for t in reversed(transforms):
            transform.AddTransform(t)
    write_atomic(path, lambda tmp: sitk.WriteTransform(transform, str(tmp)), what="transform")
    return path


def write_record(record: dict[str, Any], folder: Path, case_id: str,
                 transforms: Sequence[sitk.Transform] = ()) -> list[Path]:
    """Write ``<case_id>.record.json`` (and ``<case_id>.ct_to_mr.tfm`` if there are transforms) into
    ``folder``. Returns the written paths."""
    written = []
    if transforms:
        tfm = folder / f"{case_id}.ct_to_mr{TRANSFORM_SUFFIX}"
        write_transforms(transforms, tfm)
        record = {**record, "mr": {**record["mr"], "transform_file": tfm.name}}
        written.append(tfm)
    path = folder / f"{case_id}{RECORD_SUFFIX}"
    text = json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what="run record")
    written.append(path)
    log.info("run record: %s", ", ".join(str(p) for p in written))
    return written


def read_record(path: Path) -> dict[str, Any]:
    """Read a run record written by :func:`write_record`."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a run record ({SCHEMA})")
    return record

"""Which labels each training case annotates: the record the partial-label trainer reads.

Partially labelled data (OpenKBP cases with some of the 7 OARs, HaN-Seg cases without all 30 masks) must not teach
the network that an OAR a case lacks is background. The converters write, next to ``dataset.json``::

    label_availability.json  {"format": 1,
                              "labels": {"background": 0, "Bone_Mandible": 1, ...},   # dataset.json labels
                              "cases": {"pt_1": ["Bone_Mandible", "Parotid", ...], ...}}

``cases`` lists, per training case, the dataset label names (background excluded) whose voxels are annotated;
every other label's voxels are unknown in that case (they carry the background value in the label map).
The trainer (``training.trainers.nnUNetTrainerCPU_partial``) turns it into a per-case mask over the label values;
the format is plain JSON so that the installed trainer reads it without importing this project.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FILE_NAME = "label_availability.json"
FORMAT = 1


def write_availability(dataset_dir: Path, labels: Mapping[str, int], cases: Mapping[str, Sequence[str]]) -> Path:
    """Write ``label_availability.json`` into ``dataset_dir``; return its path.

    Raises:
        ValueError: if a case names a label that is not in ``labels`` (or names the background).
    """
    for case, names in cases.items():
        bad = [n for n in names if n not in labels or labels[n] == 0]
        if bad:
            raise ValueError(f"{case}: annotated labels {bad} are not foreground labels of the dataset")
    record = {"format": FORMAT, "labels": dict(labels), "cases": {c: list(n) for c, n in sorted(cases.items())}}
    path = dataset_dir / FILE_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_availability(path: Path) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Read a ``label_availability.json``; return ``(labels, cases)``.

    Raises:
        ValueError: naming the file, on an unknown format or a malformed entry.
    """
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a label availability record of format {FORMAT}")
    labels, cases = record.get("labels"), record.get("cases")
    if not isinstance(labels, dict) or not isinstance(cases, dict):
        raise ValueError(f"{path}: 'labels' and 'cases' must be objects")
    for case, names in cases.items():
        if not isinstance(names, list) or any(n not in labels for n in names):
            raise ValueError(f"{path}: case {case!r} lists labels that are not in 'labels'")
    return labels, cases


def availability_mask(labels: Mapping[str, int], annotated: Sequence[str]) -> np.ndarray:
    """Boolean mask over label values (length K+1): True for the background and each annotated label."""
    mask = np.zeros(max(labels.values()) + 1, dtype=bool)
    mask[0] = True
    for name in annotated:
        mask[labels[name]] = True
    return mask

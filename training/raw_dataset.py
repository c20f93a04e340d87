"""Writing an nnU-Net v2 raw dataset: two channels per case, one label map, dataset.json and a conversion report.

Layout (``nnUNet_raw/DatasetXXX_Name/``)::

    imagesTr/<case>_0000.nii.gz   CT (HU, as read)
    imagesTr/<case>_0001.nii.gz   T1 on the CT grid (float32; zeros where no MR / registration rejected)
    labelsTr/<case>.nii.gz        uint8 label map with the DATASET's consecutive values (see dataset_labels)
    imagesTs/, labelsTs/          held-out cases, same format (not used by nnU-Net training)
    dataset.json                  channel_names {"0": "CT", "1": "T1"} (or the seed recipe's three), channel_recipes
                                  and mr_registration (how inference must rebuild each channel: preprocessing.channels),
                                  labels, numTraining, file_ending,
                                  orientation (the code every case is stored in, read back by model.model_folder)
    conversion_report.json        per case: OARs present/missing, overlap voxels, how the T1 channel was made

All images of a case share the CT's grid (size, spacing, origin, direction), permuted/flipped to one orientation
(``preprocessing.orientation.DEFAULT_ORIENTATION``, the identity direction) so that every training case shows the
network the same axis order; inference permutes its inputs the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from preprocessing.orientation import DEFAULT_ORIENTATION, reorient

log = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "CT", "1": "T1"}


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_Name``."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def write_case_channels(out_dir: Path, case_id: str, channels: list[sitk.Image], label: sitk.Image | None,
                        test: bool = False) -> None:
    """Write one case's channel images (``<case>_000C``, channel order, each in its own pixel type; built by
    :func:`preprocessing.channels.channel_images`) and its label map into ``imagesTr``/``labelsTr`` (or ``*Ts``).

    Raises:
        ValueError: if a channel or the label map is not on the first channel's grid.
    """
    reference = channels[0]
    for what, img in [(f"channel {i}", c) for i, c in enumerate(channels[1:], 1)] + [("label", label)]:
        if img is None:
            continue
        if img.GetSize() != reference.GetSize():
            raise ValueError(f"{case_id}: {what} size {img.GetSize()} != CT size {reference.GetSize()}")
        img.CopyInformation(reference)  # identical grid by construction; removes float round-off in the header
    channels = [reorient(c, DEFAULT_ORIENTATION) for c in channels]
    label = None if label is None else reorient(label, DEFAULT_ORIENTATION)
    images = out_dir / ("imagesTs" if test else "imagesTr")
    labels = out_dir / ("labelsTs" if test else "labelsTr")
    images.mkdir(parents=True, exist_ok=True)
    for i, channel in enumerate(channels):
        sitk.WriteImage(channel, str(images / f"{case_id}_{i:04d}{FILE_ENDING}"), useCompression=True)
    if label is not None:
        labels.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(labels / f"{case_id}{FILE_ENDING}"), useCompression=True)


def write_dataset_json(out_dir: Path, labels: dict[str, int], num_training: int, description: str,
                       extra: dict[str, Any] | None = None,
                       channel_keys: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write nnU-Net's dataset.json and return it. ``channel_keys``: ``channel_names``, ``channel_recipes`` and
    ``mr_registration`` (:meth:`preprocessing.channels.ChannelPlan.dataset_json_keys`; default the two-channel CT +
    T1 layout, rigid)."""
    from preprocessing.channels import LEGACY_PLAN

    dataset = {
        **(channel_keys or LEGACY_PLAN.dataset_json_keys()),
        "labels": dict(labels),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
        "orientation": DEFAULT_ORIENTATION,
        "description": description,
    }
    if extra:
        dataset.update(extra)
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return dataset


def write_report(out_dir: Path, cases: Iterable[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Write ``conversion_report.json``: the summary plus one record per case."""
    report = {"summary": summary, "cases": list(cases)}
    (out_dir / "conversion_report.json").write_text(json.dumps(report, indent=2) + "\n")

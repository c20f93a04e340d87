"""The model's input channels for one case, as images on the CT grid: the CT and, if the model takes one, the MR
registered rigidly onto it (moved here from ``process.py`` so that the in-memory API and the command line share it).

Images are SimpleITK (x, y, z); the arrays of :func:`channel_arrays` are numpy (z, y, x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from contract.errors import InputError, ModelFolderError
from contract.imageio import check_extent, repair_intensities

log = logging.getLogger(__name__)

MR_DROPOUT_FILL = 0.0
"""Raw value of the MR channel when there is no usable MR: all zeros, which z-score normalisation keeps at 0,
exactly what the trainer's modality dropout feeds the network."""

MR_USED = "used"
MR_ABSENT = "absent"
MR_NOT_IN_MODEL = "not used: the model has no MR channel"
MR_DROPPED = "dropped"


@dataclass
class MrDecision:
    """What happened to the MR of one case (stored in the run record).

    Attributes:
        status: ``used``, ``absent``, ``not used: ...`` or ``dropped``.
        reason: why it was dropped ("" otherwise).
        metrics: the registration's quality metrics (empty if it did not run).
        ct_to_mr: the rigid transform from CT to MR physical points (None if the registration did not run).
        seconds: wall seconds of the registration.
    """

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    ct_to_mr: sitk.Transform | None = None
    seconds: float = 0.0

    @property
    def used(self) -> bool:
        return self.status == MR_USED


def prepare_channels(ct: sitk.Image, mr: sitk.Image | None, mr_channel: int | None, n_channels: int,
                     mr_source: str = "T1 MR") -> tuple[list[sitk.Image | None], MrDecision]:
    """The model's input channels as images on the CT grid: the CT, and the registered MR if the model takes one.
    A missing MR, or one whose registration fails its check, is None: the modality-dropout fill
    (:func:`channel_arrays`). ``mr_source`` names the MR in messages (its file, or "T1 MR" in memory)."""
    channels: list[sitk.Image | None] = [ct]
    if mr_channel is None:
        if mr is not None:
            log.info("model has no MR channel: %s is not used", mr_source)
        return channels, MrDecision(MR_NOT_IN_MODEL)
    if n_channels != 2 or mr_channel != 1:
        raise ModelFolderError("dataset.json", f"unsupported channel layout: {n_channels} channels, MR at {mr_channel}")
    if mr is None:
        log.warning("no T1 MR: predicting from the CT alone")
        channels.append(None)
        return channels, MrDecision(MR_ABSENT)
    registered, decision = registered_mr(mr, ct, mr_source)
    channels.append(registered)
    return channels, decision


def channel_arrays(channels: list[sitk.Image | None]) -> list[np.ndarray]:
    """numpy (z, y, x) arrays of the channels WITHOUT copying: read-only views into the images, which the caller
    must keep alive while the arrays are used (HaN-Seg CTs: 0.4-0.8 GB per copy saved). None becomes the
    modality-dropout fill (MR_DROPOUT_FILL), a lazily allocated zero array of the CT's shape."""
    arrays = []
    for image in channels:
        if image is not None:
            arrays.append(sitk.GetArrayViewFromImage(image))
        else:  # np.zeros maps untouched pages to the kernel's zero page: no resident memory until written
            shape = arrays[0].shape
            arrays.append(np.zeros(shape, np.float32) if MR_DROPOUT_FILL == 0 else
                          np.full(shape, MR_DROPOUT_FILL, dtype=np.float32))
    return arrays


def registered_mr(mr: sitk.Image, ct: sitk.Image, mr_source: str = "T1 MR") -> tuple[sitk.Image | None, MrDecision]:
    """The MR resampled onto the CT grid (float32 image), or None with a warning if it cannot be used.

    An MR without usable intensities, or whose registration fails its quality check, is dropped: the case is
    predicted from the CT alone, as the model was trained to do under modality dropout. (An MR file that cannot be
    read as a 3-D scalar image is an input error, raised by the reader before this.)
    """
    from preprocessing.registration import register_mr_to_ct, resample_mr_to_ct

    try:
        check_extent(mr, mr_source, "T1 MR")
        mr = repair_intensities(mr, mr_source, "T1 MR")
    except InputError as err:
        log.warning("%s: predicting from the CT alone", err)
        return None, MrDecision(MR_DROPPED, reason=err.problem)
    result = register_mr_to_ct(ct, mr)
    decision = MrDecision(MR_USED if result.accepted else MR_DROPPED, reason="" if result.accepted else result.reason,
                          metrics=dict(result.metrics), ct_to_mr=result.ct_to_mr, seconds=result.seconds)
    if not result.accepted:
        log.warning("%s: MR-to-CT registration failed its quality check (%s): predicting from the CT alone",
                    mr_source, result.reason)
        return None, decision
    log.info("MR registered to CT in %.1f s (%s)", result.seconds, _format_metrics(result.metrics))
    return resample_mr_to_ct(mr, ct, result.ct_to_mr), decision


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())

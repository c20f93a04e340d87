"""The T1 input channel on the CT grid, produced exactly as inference produces it.

Real MR (HaN-Seg): ``preprocessing.channels.mr_on_ct_grid`` (rigid registration, the B-spline stage where the model
declares ``rigid+bspline``, resampling) -- the SAME builder the inference pipeline runs. If the registration is
rejected, the channel is all zeros, which is what the network sees
at inference when the MR is unusable and what modality dropout feeds it during training.

No MR (OpenKBP): a T1-like image is SYNTHESISED from the CT by ``preprocessing.synthetic_t1.make_t1_like`` under a
random rigid transform and field of view, then registered back onto the CT like a real MR. It is not a real MR; every
dataset built this way says so in its dataset.json and conversion report.

A third mode, ``zeros``, writes an all-zero T1 channel (a placeholder, e.g. while registration code is missing).

Images are SimpleITK (x, y, z indexing, mm); the returned channel is float32 on the CT grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

T1_MODES = ("registered", "synthetic", "zeros")


@dataclass
class T1Result:
    """The T1 channel for one case and how it was made (for the conversion report)."""

    image: sitk.Image
    mode: str
    """``registered`` (real MR), ``synthetic`` (T1-like image generated from the CT) or ``zeros``."""
    accepted: bool | None
    """Registration accepted (None when no registration ran)."""
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    synthetic_params: dict[str, Any] = field(default_factory=dict)

    @property
    def filled_with_zeros(self) -> bool:
        return self.mode == "zeros" or self.accepted is False

    def record(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "mode": self.mode,
            "registration_accepted": self.accepted,
            "reason": self.reason,
            "t1_channel_zeros": self.filled_with_zeros,
            "metrics": _jsonable(self.metrics),
            "synthetic_params": _jsonable(self.synthetic_params),
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def zeros_like_ct(ct: sitk.Image) -> sitk.Image:
    """All-zero float32 image on the CT grid."""
    img = sitk.Image(ct.GetSize(), sitk.sitkFloat32)
    img.CopyInformation(ct)
    return img


def registered_t1(ct: sitk.Image, mr: sitk.Image, threads: int | None = None,
                  registration: str = "rigid") -> T1Result:
    """Register a real MR onto the CT and resample it onto the CT grid with the inference code
    (:func:`preprocessing.channels.mr_on_ct_grid`; ``registration``: ``rigid`` or ``rigid+bspline``).

    Returns zeros (and ``accepted=False``) if the registration is rejected or raises.
    """
    from preprocessing.channels import mr_on_ct_grid  # the one channel builder, shared with inference

    try:
        result = mr_on_ct_grid(ct, mr, registration, threads=threads)
    except Exception as err:  # noqa: BLE001 - any failure means "no usable MR", as at inference
        log.warning("registration raised %s: T1 channel filled with zeros", err)
        return T1Result(zeros_like_ct(ct), "registered", False, reason=f"exception: {err}")
    if result.image is None:
        log.warning("registration rejected (%s): T1 channel filled with zeros", result.reason)
        return T1Result(zeros_like_ct(ct), "registered", False, reason=result.reason, metrics=result.metrics)
    return T1Result(result.image, "registered", True, reason="", metrics=result.metrics)


def synthetic_mr(ct: sitk.Image, seed: int, max_rotation_deg: float = 10.0, max_translation_mm: float = 20.0,
                 max_origin_offset_mm: float = 150.0) -> tuple[sitk.Image, dict[str, Any]]:
    """A T1-like image synthesised from the CT under a random rigid transform and field of view, in its own
    (MR scanner) geometry, and the parameters used.

    Everything random derives from ``seed``: Euler angles uniform in +-``max_rotation_deg`` (degrees, about x, y, z),
    translation uniform in +-``max_translation_mm`` (mm, x, y, z), an unrelated-scanner-frame origin offset uniform
    in +-``max_origin_offset_mm``, the MR voxel size (in-plane 0.9-2.0 mm, slices 1.5-4 mm) and field of view
    (in-plane 200-260 mm, 160-240 mm cranio-caudal from above the vertex: usually less than the CT covers).
    """
    from preprocessing import synthetic_t1  # imported late: written by another engineer

    rng = np.random.default_rng(seed)
    rotation = tuple(float(v) for v in rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    translation = tuple(float(v) for v in rng.uniform(-max_translation_mm, max_translation_mm, 3))
    offset = tuple(float(v) for v in rng.uniform(-max_origin_offset_mm, max_origin_offset_mm, 3))
    inplane = float(rng.uniform(0.9, 2.0))
    spacing = (inplane, inplane, float(rng.uniform(1.5, 4.0)))
    fov_xy = float(rng.uniform(200.0, 260.0))
    fov = (fov_xy, fov_xy, float(rng.uniform(160.0, 240.0)))
    params = {"rotation_deg": rotation, "translation_mm": translation, "origin_offset_mm": offset,
              "spacing_mm": spacing, "fov_mm": fov, "seed": seed,
              "note": "T1 synthesised from the CT by preprocessing.synthetic_t1 (no real MR exists for this case)"}
    synthetic = synthetic_t1.make_t1_like(ct, rotation_deg=rotation, translation_mm=translation,
                                          origin_offset_mm=offset, spacing_mm=spacing, fov_mm=fov, seed=seed)
    return synthetic.image, params


def synthetic_t1(ct: sitk.Image, seed: int, threads: int | None = None, registration: str = "rigid",
                 **ranges: float) -> T1Result:
    """:func:`synthetic_mr` registered back onto the CT grid (``ranges``: its ``max_*`` keyword arguments)."""
    mr, params = synthetic_mr(ct, seed, **ranges)
    t1 = registered_t1(ct, mr, threads=threads, registration=registration)
    t1.mode = "synthetic"
    t1.synthetic_params = params
    return t1


def make_t1_channel(ct: sitk.Image, mode: str, mr: sitk.Image | None = None, seed: int = 0,
                    threads: int | None = None, registration: str = "rigid") -> T1Result:
    """Dispatch on ``mode`` (one of :data:`T1_MODES`). ``registered`` without an MR gives zeros.
    ``registration`` is the model's ``mr_registration`` (``rigid`` or ``rigid+bspline``)."""
    if mode not in T1_MODES:
        raise ValueError(f"unknown T1 mode {mode!r}; expected one of {T1_MODES}")
    if mode == "zeros":
        return T1Result(zeros_like_ct(ct), "zeros", None, reason="placeholder: T1 channel written as zeros")
    if mode == "synthetic":
        return synthetic_t1(ct, seed=seed, threads=threads, registration=registration)
    if mr is None:
        return T1Result(zeros_like_ct(ct), "registered", False, reason="no MR file for this case")
    return registered_t1(ct, mr, threads=threads, registration=registration)

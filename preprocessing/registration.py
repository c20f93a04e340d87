"""Rigid T1 MR -> CT registration (SimpleITK) with a quality check that can reject a failed registration.

What it does and why (measurements in ``../shared/docs/REGISTRATION.md``):

* The MR is the FIXED image and the CT the moving one; the result is inverted. The CT runs from the vertex to the
  shoulders and the MR covers the head only: with the CT fixed, samples fall outside the MR and the optimiser fails.
* "Head anchor" initialisation: the body is thresholded in both images (3 mm grid, closed, holes filled), the top
  of the head found in each, and the body centroids over the same height below the vertex are matched (a
  translation), then re-matched twice using only the CT body inside the MR field of view. GEOMETRY / MOMENTS starts
  are ~100 mm off because of the shoulders; the anchor lands within a few mm on the synthetic protocol (measured
  0.5-6 mm, 8 patients) and does not depend on the origins, so any offset between scanner frames is handled.
* Orientation check: the same anchor is computed for the MR turned by each of the 23 non-trivial axis-aligned
  rotations; if one fits the CT body outline clearly better than the MR as stored, the MR header's orientation is
  wrong (upside down, coronal stored as axial, prone labelled supine) and the MR is rejected before optimising.
* Intensities are clipped before mutual information: CT to [-300, 500] HU, MR to [p0.5, p99.5].
* Rotation start: Mattes MI on the coarsest level for a 5 x 5 x 5 grid of rotations (+/- 12 degrees about each axis)
  picks the start; gradient descent alone did not recover 10-17 degree rotations.
* Mattes MI with 32 bins, 2 % random samples with a FIXED seed, regular-step gradient descent whose learning rate is
  estimated once per level so that the first step moves points by at most 1 mm, the step halving at each reversal
  down to 0.01; three levels (shrink 4, 2, 1; smoothing 2, 1, 0 mm). The optimisation runs on one thread by default
  so that results are byte-reproducible. Measured on the synthetic protocol (OpenKBP pt_17): mean TRE 0.09-0.16 mm
  on the 128^3 CT and 0.03-0.05 mm on the 1 x 1 x 2 mm benchmark CT, where plain gradient descent with the learning
  rate re-estimated EACH iteration (REGISTRATION.md's "tuned" recipe) stopped 0.53-0.74 mm off on the 128^3 CT
  (every step is a full 1 mm, so it cannot settle).
* The CT is cropped to the MR field of view (+ 40 mm) and its gradient is computed at the samples only: the
  registration's per-level smoothing and gradient images of a 47 M-voxel CT otherwise dominate the run time.
* A quality check (:class:`QualityThresholds`) rejects registrations that are implausible: wrong orientation, too
  little of the MR head inside the CT, body outlines that do not agree, a poor final metric, an implausible move or
  rotation. ``python -m benchmarks.registration_benchmark --qc`` prints the numbers behind the thresholds.

Conventions: SimpleITK images, points, spacings and transforms are (x, y, z) in mm in the LPS patient frame
(+z superior); numpy arrays from ``sitk.GetArrayFromImage`` are indexed (z, y, x).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from preprocessing.components import largest_component
from preprocessing.geometry import apply_matrix as _apply_matrix
from preprocessing.geometry import index_to_physical as _index_to_physical
from preprocessing.geometry import physical_to_continuous_index as _physical_to_continuous_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationSettings:
    """Optimiser and pre-processing settings (defaults are the measured ones; units in the names)."""

    ct_clip_hu: tuple[float, float] = (-300.0, 500.0)
    mr_clip_percentiles: tuple[float, float] = (0.5, 99.5)
    histogram_bins: int = 32
    sampling_fraction: float = 0.02
    sampling_seed: int = 20240601
    iterations: int = 100
    """Maximum iterations per level."""
    finest_level_iterations: int = 50
    """Maximum iterations at the finest (full-resolution) level."""
    max_step_mm: float = 1.0
    rotation_search_deg: float = 12.0
    """Before optimising, the best start is picked among rotations on a grid of +/- this about each axis (Mattes MI
    on the coarsest level). Without it, 10-17 degree rotations were not recovered (TRE 11-15 mm on 6 of 9 cases,
    wrongly ACCEPTED by the quality check); with +/-12 degrees in 2 steps (125 evaluations, ~0.1 s) all 9 cases
    ended at TRE <= 0.35 mm. 0 disables."""
    rotation_search_steps: int = 2
    """Grid points on each side of 0 for each axis: (2 * steps + 1)^3 evaluations."""
    """First step of each level: the learning rate is estimated once per level so that it moves points <= this."""
    min_step: float = 0.01
    """A level stops when the step length (halved at each reversal of direction; parameters are scaled so that one
    unit moves points by about 1 mm) falls below this."""
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    gradient_filter: bool = False
    """Precompute the CT gradient image at each level (ITK default) instead of central differences at the samples;
    with 2 % sampling the on-the-fly gradient is faster (measured 9 s vs 13-19 s on the benchmark) and as accurate."""
    crop_margin_mm: float = 40.0
    """The CT is cropped to the MR field of view (placed by the initial transform) plus this margin."""
    mask_spacing_mm: float = 3.0
    """Grid spacing (mm) of the body masks used for the head anchor and the quality check."""
    ct_body_hu: float = -400.0
    mr_body_otsu_fraction: float = 0.5
    """MR body threshold = this fraction of the Otsu threshold of the clipped MR (dark tissue stays in)."""
    mask_closing_mm: float = 6.0
    """Radius (mm) of the closing that bridges dark bone and air between scalp and brain in the body masks."""
    anchor_min_area_mm2: float = 400.0
    """The top of the head is the highest axial level whose body cross-section reaches this area."""
    anchor_max_height_mm: float = 200.0
    """At most this height below the top of the head is used to match the centroids."""


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the quality check; a registration failing any of them is rejected.

    Measured with ``python -m benchmarks.registration_benchmark --qc`` and an orientation sweep (OpenKBP 128^3 CTs,
    synthetic T1; "same" = MR made from the same CT, 7-8 patients incl. 344 mm offsets and RAS storage):

    ==========================  ==================  ===========================  ============================
    number                      same subject        deliberately bad             other subject (pass or fail)
    ==========================  ==================  ===========================  ============================
    orientation margin          -0.27 .. -0.08      +0.07 .. +0.41 (upside down,  synthetic -0.11 .. -0.03;
                                                    coronal-as-axial, prone as    real T1 -0.02 .. +0.05
                                                    supine); neck MR +0.12/+0.15
    body Dice (after reg.)      0.977 .. 0.989      neck/shoulder MR 0.66         0.92 .. 0.96
    fraction of MR head in CT   1.00                                              0.81 .. 1.00
    final Mattes MI             -1.05 .. -0.83      neck/shoulder MR -0.06/-0.04  -0.61 .. -0.49 (real T1 too)
    move of the head (mm)       22 .. 368           2015 (MR shifted 2 m)         15 .. 236
    ==========================  ==================  ===========================  ============================

    A left-right mirrored header cannot be detected (heads are nearly symmetric): margin -0.15 .. -0.09, Dice 0.97.
    Nor can a ~1 cm misregistration: before the rotation search, 10-17 degree cases ended 11-15 mm off with Dice
    0.94-0.95 and MI -0.63 .. -0.52, i.e. like another subject, and were accepted. The check catches gross failures.
    For an MR covering the brain only (real T1s here: 104-165 mm) the orientation margin is near 0 (a 180-degree
    turn fits almost as well), so it carries little information there.
    Real same-patient pairs will score below the synthetic ones (different contrast, posture, distortion), so the
    limits sit well on the bad side of the same-subject range.
    """

    max_orientation_margin: float = 0.05
    """Reject when the MR turned by an axis-aligned rotation (upside down, coronal stored as axial, ...) fits the CT
    body outline better than the MR as stored by more than this (Dice after the head anchor, before optimising)."""
    min_fov_overlap: float = 0.5
    """Fraction of the MR body (head) that lies inside the CT volume after registration."""
    min_body_dice: float = 0.85
    """Dice of the MR and CT body masks (3 mm grid), compared inside the MR field of view where the CT is defined."""
    max_metric: float = -0.2
    """Final Mattes mutual information (negative; lower is better) must be at most this."""
    max_displacement_mm: float = 1000.0
    """Largest plausible move of the head between the two scanner frames (CONTRACT.md: up to ~600 mm seen). The
    registration itself recovers any offset (the anchor ignores origins); this is a plausibility limit."""
    max_rotation_deg: float = 30.0
    """Largest plausible rotation between the two frames (the optimiser starts from no rotation)."""


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_mr_to_ct`.

    Attributes:
        ct_to_mr: rigid transform mapping CT physical points (mm) to MR physical points (mm); pass it to
            :func:`resample_mr_to_ct`. Always set (identity or the initial guess when registration failed early).
        accepted: True if the registration passed the quality check and the MR may be used.
        reason: why it was rejected ('' if accepted).
        metrics: numbers behind the decision: ``mi`` (final Mattes MI), ``body_dice``, ``fov_overlap``,
            ``displacement_mm``, ``rotation_deg``, ``anchor_shift_mm`` (how far the optimiser moved the head from the
            initial guess), ``iterations`` and timings.
        seconds: wall time of the whole call (s).
    """

    ct_to_mr: sitk.Transform
    accepted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


DEFAULT_SETTINGS = RegistrationSettings()
DEFAULT_THRESHOLDS = QualityThresholds()


class _Rejected(Exception):
    """Internal: the MR (or CT) cannot be registered; the message is the human-readable reason."""


def register_mr_to_ct(
    ct: sitk.Image,
    mr: sitk.Image,
    *,
    threads: int | None = None,
    deterministic: bool = True,
    settings: RegistrationSettings = DEFAULT_SETTINGS,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> RegistrationResult:
    """Rigidly register a T1 MR to a CT of the same patient and check the result.

    Args:
        ct: CT in HU, any pixel type, grid and direction.
        mr: T1 MR, any scalar pixel type, own grid, spacing, direction and origin (may be far from the CT's).
        threads: number of threads for the SimpleITK filters (None: SimpleITK's global default).
        deterministic: run the optimisation itself on one thread so that results are byte-reproducible (ITK's
            Mattes MI accumulates the derivatives of several threads in a timing-dependent order; the difference
            is ~1e-10 mm; measured cost on the shared 2-core machine: none, 6.6 vs 6.7 s). False: use ``threads``.
        settings: optimiser settings (the defaults are the measured ones).
        thresholds: quality-check limits.

    Returns:
        A :class:`RegistrationResult`. A bad MR (empty, constant, not 3-D, of another body part, not overlapping)
        gives ``accepted=False`` and a reason; this function does not raise for bad images.
    """
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    transform: sitk.Transform = sitk.Euler3DTransform()
    try:
        with _thread_count(threads) as n_threads:
            transform, metrics = _register(ct, mr, settings, thresholds, n_threads, deterministic)
        reason = _quality_reason(metrics, thresholds)
    except _Rejected as err:
        reason = str(err)
    except RuntimeError as err:  # ITK exceptions (e.g. all samples outside the moving image) are RuntimeError
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = f"registration failed: {lines[-1][:200] if lines else type(err).__name__}"
    seconds = time.perf_counter() - start
    metrics["seconds"] = seconds
    if reason:
        log.warning("MR registration rejected: %s (%s)", reason, _fmt(metrics))
    else:
        log.info("MR registration accepted in %.1f s (%s)", seconds, _fmt(metrics))
    return RegistrationResult(ct_to_mr=transform, accepted=not reason, reason=reason, metrics=metrics, seconds=seconds)


def resample_mr_to_ct(mr: sitk.Image, ct: sitk.Image, ct_to_mr: sitk.Transform) -> sitk.Image:
    """Bring the MR onto the CT grid.

    Args:
        mr: the MR (any scalar pixel type).
        ct: the CT whose grid (size, spacing, origin, direction) the output takes.
        ct_to_mr: transform from CT physical points to MR physical points (mm), e.g. ``RegistrationResult.ct_to_mr``.

    Returns:
        float32 image on the CT's exact grid, linear interpolation, 0 outside the MR field of view.
    """
    return sitk.Resample(sitk.Cast(mr, sitk.sitkFloat32), ct, ct_to_mr, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


# --------------------------------------------------------------------------------------------------------------
# Implementation


def _register(
    ct: sitk.Image,
    mr: sitk.Image,
    s: RegistrationSettings,
    t: QualityThresholds,
    n_threads: int,
    deterministic: bool,
) -> tuple[sitk.Transform, dict[str, float]]:
    """Anchor, orientation check, optimisation and the quality numbers. The decision is :func:`_quality_reason`'s;
    when the orientation check already fails the optimisation is skipped (the anchor is returned)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _check_input(ct, "CT")
    _check_input(mr, "MR")
    ct_body = _BodyMask.from_ct(ct, s)
    mr_f = _clip_mr(sitk.Cast(mr, sitk.sitkFloat32), s.mr_clip_percentiles)

    mr_body = _BodyMask.from_mr(mr_f, s)
    anchors = [_anchor(ct_body, mr_body, rot, s) for rot in _CUBE_ROTATIONS]
    if anchors[0] is None:
        raise _Rejected("the MR shows too little body below its top to be a head")
    init = anchors[0].transform()  # maps MR points -> CT points
    scores = np.array([a.dice if a is not None else 0.0 for a in anchors])
    best = int(np.argmax(scores[1:])) + 1
    metrics: dict[str, float] = {
        "orientation_dice": float(scores[0]),
        "orientation_margin": float(scores[best] - scores[0]),
    }
    timings["t_init_s"] = time.perf_counter() - t0
    if metrics["orientation_margin"] > t.max_orientation_margin:
        log.debug("orientation: stored %.3f, turned %s %.3f", scores[0], _CUBE_ROTATIONS[best].tolist(), scores[best])
        metrics.update(timings)
        return _invert_euler(init), metrics

    t1 = time.perf_counter()
    moving = sitk.Clamp(
        sitk.Cast(_crop_to_mr(ct, mr_f, init, s.crop_margin_mm), sitk.sitkFloat32), sitk.sitkFloat32, *s.ct_clip_hu
    )
    reg = sitk.ImageRegistrationMethod()
    # ITK's Mattes MI adds the joint-PDF derivatives of all threads into one buffer under a lock, so with more than
    # one thread the summation order (hence the last bits of the result) changes from run to run.
    reg.SetNumberOfThreads(1 if deterministic else n_threads)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(s.sampling_fraction, s.sampling_seed)
    reg.SetInterpolator(sitk.sitkLinear)
    if not s.gradient_filter:
        reg.MetricUseMovingImageGradientFilterOff()
        reg.MetricUseFixedImageGradientFilterOff()
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=s.min_step,
        numberOfIterations=s.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
        estimateLearningRate=reg.Once,
        maximumStepSizeInPhysicalUnits=s.max_step_mm,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(s.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(s.smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if s.rotation_search_deg > 0:
        with _thread_count(1 if deterministic else n_threads):
            init = _rotation_search(mr_f, moving, init, s)
    reg.SetInitialTransform(init, inPlace=False)
    iterations = [0]
    last_level = len(s.shrink_factors) - 1

    def on_iteration() -> None:
        iterations[0] += 1
        # Deterministic budget: a good registration converges at the finest level in < 20 iterations (measured);
        # failing ones wander until numberOfIterations, each full-resolution iteration being the expensive kind.
        if reg.GetCurrentLevel() == last_level and reg.GetOptimizerIteration() + 1 >= s.finest_level_iterations:
            reg.StopRegistration()

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    with _thread_count(1 if deterministic else n_threads):  # the metric takes the global default, not reg's
        result = reg.Execute(mr_f, moving)
    mr_to_ct = sitk.Euler3DTransform()
    mr_to_ct.SetFixedParameters(result.GetFixedParameters())
    mr_to_ct.SetParameters(result.GetParameters())
    timings["t_optimise_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    ct_to_mr = _invert_euler(mr_to_ct)
    metrics.update(_quality_metrics(ct_body, mr_body, mr_to_ct, ct_to_mr, init))
    metrics["mi"] = float(reg.GetMetricValue())
    metrics["iterations"] = float(iterations[0])
    metrics["stop_level_iterations"] = float(reg.GetOptimizerIteration())
    timings["t_check_s"] = time.perf_counter() - t2
    metrics.update(timings)
    log.debug("optimizer stop: %s", reg.GetOptimizerStopConditionDescription())
    return ct_to_mr, metrics


def _check_input(image: sitk.Image, role: str) -> None:
    if image.GetDimension() != 3:
        raise _Rejected(f"{role} is {image.GetDimension()}-D, expected 3-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise _Rejected(f"{role} has {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1")
    if min(image.GetSize()) < 2:
        raise _Rejected(f"{role} is too small ({image.GetSize()} voxels)")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise _Rejected(f"{role} has an invalid spacing {tuple(spacing)}")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.isfinite(direction).all() or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise _Rejected(f"{role} has a degenerate direction matrix")


def _clip_mr(mr: sitk.Image, percentiles: tuple[float, float]) -> sitk.Image:
    """float32 MR clipped to its ``percentiles`` (of the finite voxels); NaN/inf voxels become the lower limit."""
    arr = sitk.GetArrayViewFromImage(mr)
    sample = arr[::2, ::2, ::2] if arr.size > 4_000_000 else arr
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        raise _Rejected("MR has no finite voxel")
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if not hi > lo:
        raise _Rejected("MR is (almost) constant")
    if not np.isfinite(arr).all():
        clean = sitk.GetImageFromArray(np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo))
        clean.CopyInformation(mr)
        mr = clean
    return sitk.Clamp(mr, sitk.sitkFloat32, lo, hi)


@dataclass
class _BodyMask:
    """A filled body mask on a coarse grid, with its voxel centres in physical coordinates."""

    mask: sitk.Image  # uint8, coarse grid
    points: np.ndarray  # (N, 3) physical (x, y, z) of body voxels
    voxel_mm3: float
    top_z: float = 0.0

    @classmethod
    def from_ct(cls, ct: sitk.Image, s: RegistrationSettings) -> _BodyMask:
        coarse = _coarse(ct, s.mask_spacing_mm)  # block averages in the CT pixel type
        binary = sitk.GetArrayViewFromImage(coarse) > s.ct_body_hu
        return cls._make(coarse, binary, "CT", s)

    @classmethod
    def from_mr(cls, mr: sitk.Image, s: RegistrationSettings) -> _BodyMask:
        coarse = _coarse(mr, s.mask_spacing_mm)
        arr = sitk.GetArrayViewFromImage(coarse)
        threshold = s.mr_body_otsu_fraction * _otsu(arr)
        return cls._make(coarse, arr > threshold, "MR", s)

    @classmethod
    def _make(cls, coarse: sitk.Image, binary: np.ndarray, role: str, s: RegistrationSettings) -> _BodyMask:
        radius = [max(1, int(round(s.mask_closing_mm / sp))) for sp in coarse.GetSpacing()[::-1]]
        # Pad by edge replication so that a body cut by the field of view is not eroded at the border.
        padded = np.pad(binary, [(r, r) for r in radius], mode="edge")
        closed = ndimage.binary_closing(padded, structure=_ellipsoid(radius))
        binary = closed[tuple(slice(r, r + n) for r, n in zip(radius, binary.shape))]
        binary = largest_component(binary)
        if binary.sum() == 0:
            raise _Rejected(f"no body found in the {role}")
        binary = _fill_axial_holes(binary, coarse)
        mask = sitk.GetImageFromArray(binary.astype(np.uint8))
        mask.CopyInformation(coarse)
        kji = np.argwhere(binary)
        points = _index_to_physical(coarse, kji[:, ::-1].astype(float))
        body = cls(mask=mask, points=points, voxel_mm3=float(np.prod(coarse.GetSpacing())))
        body.top_z = body._top(s.anchor_min_area_mm2)
        return body

    def _top(self, min_area_mm2: float) -> float:
        top = _top_of(self.points[:, 2], self.voxel_mm3, min_area_mm2)
        if top is None:
            raise _Rejected("body too small to find the top of the head")
        return top

    def bottom_z(self) -> float:
        return float(self.points[:, 2].min())


def _top_of(z: np.ndarray, voxel_mm3: float, min_area_mm2: float, bin_mm: float = 2.0) -> float | None:
    """Highest height (mm) whose axial body cross-section (from points at heights ``z``) reaches ``min_area_mm2``."""
    edges = np.arange(z.min() - bin_mm, z.max() + 2 * bin_mm, bin_mm)
    counts, _ = np.histogram(z, edges)
    big = np.nonzero(counts * voxel_mm3 / bin_mm >= min_area_mm2)[0]
    return float(edges[big[-1] + 1]) if len(big) else None


@dataclass
class _Anchor:
    """MR -> CT placement ``x -> rot (x - center) + center + translation`` and its body-outline Dice."""

    rot: np.ndarray
    center: np.ndarray
    translation: np.ndarray
    height_mm: float
    dice: float

    def transform(self) -> sitk.Euler3DTransform:
        tx = sitk.Euler3DTransform()
        tx.SetCenter(tuple(float(v) for v in self.center))
        tx.SetMatrix(tuple(float(v) for v in self.rot.ravel()))
        tx.SetTranslation(tuple(float(v) for v in self.translation))
        return tx


def _anchor(
    ct: _BodyMask, mr: _BodyMask, rot: np.ndarray, s: RegistrationSettings, max_points: int = 30000
) -> _Anchor | None:
    """Head anchor for the MR turned by ``rot`` (about its body centroid): match the body centroids over the same
    height below the top of the head in each; then twice more, using only the CT body inside the MR field of view
    (so that shoulders, arms or a head rest the MR does not show do not pull the CT centroid). Returns None if the
    turned MR has no usable top. Regular subsamples of at most ``max_points`` body voxels are used."""
    mr_step = max(1, len(mr.points) // max_points)
    ct_step = max(1, len(ct.points) // max_points)
    mr_pts, mr_vox = mr.points[::mr_step], mr.voxel_mm3 * mr_step
    ct_pts, ct_vox = ct.points[::ct_step], ct.voxel_mm3 * ct_step
    c = mr_pts.mean(axis=0)
    q = _apply_matrix(rot, mr_pts - c) + c
    top = _top_of(q[:, 2], mr_vox, s.anchor_min_area_mm2)
    if top is None:
        return None
    height = min(s.anchor_max_height_mm, top - q[:, 2].min(), ct.top_z - ct.bottom_z())
    if height < 20.0:
        return None
    mr_centroid = q[q[:, 2] >= top - height].mean(axis=0)
    ct_slab = ct_pts[:, 2] >= ct.top_z - height
    t = ct_pts[ct_slab].mean(axis=0) - mr_centroid
    mr_size = np.asarray(mr.mask.GetSize())
    in_fov = np.ones(len(ct_pts), dtype=bool)
    for _ in range(3):
        back = _apply_matrix(rot.T, ct_pts - t - c) + c  # CT points in the (unturned) MR frame
        jdx = np.rint(_physical_to_continuous_index(mr.mask, back)).astype(int)
        in_fov = np.all((jdx >= 0) & (jdx < mr_size), axis=1)
        # the top of the head of the CT (unchanged), the body below it only where the MR can see it
        sel = ct_slab & in_fov
        if sel.sum() < 0.2 * ct_slab.sum():
            break
        t = ct_pts[sel].mean(axis=0) - mr_centroid
    # Dice of the body outlines: |MR body in CT body| vs |MR body| + |CT body inside the MR field of view|
    idx = np.rint(_physical_to_continuous_index(ct.mask, q + t)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(ct.mask.GetSize())), axis=1)
    hits = int(np.count_nonzero(sitk.GetArrayViewFromImage(ct.mask)[idx[ok, 2], idx[ok, 1], idx[ok, 0]]))
    dice = 2.0 * mr_vox * hits / max(mr_vox * len(q) + ct_vox * int(in_fov.sum()), 1e-9)
    return _Anchor(rot=rot, center=c, translation=t, height_mm=float(height), dice=float(dice))


def _cube_rotations() -> list[np.ndarray]:
    """The 24 rotations that map the coordinate axes onto (signed) coordinate axes; the identity first."""
    out = [np.eye(3)]
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0 and not np.allclose(m, np.eye(3)):
                out.append(m)
    return out


_CUBE_ROTATIONS = _cube_rotations()


def _rotation_search(
    fixed: sitk.Image, moving: sitk.Image, init: sitk.Euler3DTransform, s: RegistrationSettings
) -> sitk.Euler3DTransform:
    """Best start among rotations on a grid (+/- ``rotation_search_deg`` about each axis, about the anchor centre),
    by Mattes MI on the coarsest level (shrink and smoothing of the first level)."""
    f = _shrink_smooth(fixed, s.shrink_factors[0], s.smoothing_sigmas_mm[0])
    m = _shrink_smooth(moving, s.shrink_factors[0], s.smoothing_sigmas_mm[0])
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(min(1.0, 5 * s.sampling_fraction), s.sampling_seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.MetricUseMovingImageGradientFilterOff()
    reg.MetricUseFixedImageGradientFilterOff()
    n = s.rotation_search_steps
    step = math.radians(s.rotation_search_deg) / n
    reg.SetOptimizerAsExhaustive([n, n, n, 0, 0, 0], stepLength=step)
    reg.SetOptimizerScales([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    reg.SetInitialTransform(sitk.Euler3DTransform(init), inPlace=False)
    out = reg.Execute(f, m)
    best = sitk.Euler3DTransform()
    best.SetFixedParameters(out.GetFixedParameters())
    best.SetParameters(out.GetParameters())
    log.debug("rotation search: %s", best.GetParameters())
    return best


def _shrink_smooth(image: sitk.Image, factor: int, sigma_mm: float) -> sitk.Image:
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma_mm) if sigma_mm > 0 else image
    return sitk.Shrink(smoothed, [factor] * 3) if factor > 1 else smoothed


def _crop_to_mr(ct: sitk.Image, mr: sitk.Image, mr_to_ct: sitk.Transform, margin_mm: float) -> sitk.Image:
    """The part of the CT covering the MR field of view (placed by ``mr_to_ct``) plus ``margin_mm``."""
    size = np.asarray(mr.GetSize(), dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) * (size - 1)
    corners_ct = np.array([mr_to_ct.TransformPoint(tuple(p)) for p in _index_to_physical(mr, corners)])
    idx = _physical_to_continuous_index(ct, corners_ct)
    margin_vox = margin_mm / np.asarray(ct.GetSpacing(), dtype=float)
    lo = np.floor(idx.min(axis=0) - margin_vox).astype(int)
    hi = np.ceil(idx.max(axis=0) + margin_vox).astype(int) + 1
    ct_size = np.asarray(ct.GetSize(), dtype=int)
    lo = np.clip(lo, 0, ct_size)
    hi = np.clip(hi, 0, ct_size)
    if np.any(hi - lo < 4):
        raise _Rejected("the initial MR position does not overlap the CT")
    if np.all(lo == 0) and np.all(hi == ct_size):
        return ct
    return sitk.RegionOfInterest(ct, [int(v) for v in hi - lo], [int(v) for v in lo])


def _quality_metrics(
    ct: _BodyMask,
    mr: _BodyMask,
    mr_to_ct: sitk.Euler3DTransform,
    ct_to_mr: sitk.Euler3DTransform,
    init: sitk.Euler3DTransform,
) -> dict[str, float]:
    """Overlap numbers on the coarse MR body-mask grid (see :class:`QualityThresholds`)."""
    ct_on_mr = sitk.Resample(ct.mask, mr.mask, mr_to_ct, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ones = sitk.Image(ct.mask.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(ct.mask)
    inside = sitk.Resample(ones, mr.mask, mr_to_ct, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a = sitk.GetArrayViewFromImage(mr.mask).astype(bool)
    b = sitk.GetArrayViewFromImage(ct_on_mr).astype(bool)
    valid = sitk.GetArrayViewFromImage(inside).astype(bool)
    n_mr = int(a.sum())
    fov_overlap = float((a & valid).sum()) / max(n_mr, 1)
    a_v, b_v = a & valid, b & valid
    denom = int(a_v.sum() + b_v.sum())
    dice = 2.0 * float((a_v & b_v).sum()) / denom if denom else 0.0

    anchor_ct = np.asarray(init.TransformPoint(init.GetCenter()))
    moved = np.asarray(ct_to_mr.TransformPoint(tuple(float(v) for v in anchor_ct)))
    displacement = float(np.linalg.norm(moved - anchor_ct))
    anchor_shift = float(np.linalg.norm(moved - np.asarray(init.GetCenter())))
    matrix = np.asarray(mr_to_ct.GetMatrix()).reshape(3, 3)
    rotation = math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    return {
        "body_dice": dice,
        "fov_overlap": fov_overlap,
        "displacement_mm": displacement,
        "anchor_shift_mm": anchor_shift,
        "rotation_deg": rotation,
    }


def _quality_reason(m: dict[str, float], t: QualityThresholds) -> str:
    """'' if every quality number present in ``m`` is within ``t``, else the reasons joined by '; '."""
    nan = float("nan")
    checks = [
        (m.get("orientation_margin", nan) > t.max_orientation_margin,
         f"the MR as stored does not fit the CT body: turned by a multiple of 90 degrees it fits better "
         f"(Dice {m.get('orientation_dice', nan) + m.get('orientation_margin', nan):.2f} vs "
         f"{m.get('orientation_dice', nan):.2f}); wrong orientation in the MR header, or not a head matching this CT"),
        (m.get("fov_overlap", nan) < t.min_fov_overlap,
         f"only {100 * m.get('fov_overlap', nan):.0f} % of the MR head lies inside the CT "
         f"(minimum {100 * t.min_fov_overlap:.0f} %)"),
        (m.get("body_dice", nan) < t.min_body_dice,
         f"MR and CT body outlines disagree (Dice {m.get('body_dice', nan):.2f} < {t.min_body_dice:.2f})"),
        (m.get("mi", nan) > t.max_metric,
         f"poor final mutual information ({m.get('mi', nan):.3f} > {t.max_metric:.3f})"),
        (m.get("displacement_mm", nan) > t.max_displacement_mm,
         f"implausible move between scanner frames ({m.get('displacement_mm', nan):.0f} mm > "
         f"{t.max_displacement_mm:.0f} mm)"),
        (m.get("rotation_deg", nan) > t.max_rotation_deg,
         f"implausible rotation ({m.get('rotation_deg', nan):.0f} deg > {t.max_rotation_deg:.0f} deg)"),
    ]
    return "; ".join(message for failed, message in checks if failed)


def _invert_euler(tx: sitk.Euler3DTransform) -> sitk.Euler3DTransform:
    """Exact inverse of ``y = A (x - c) + c + t``: centre ``c + t``, matrix ``A^T``, translation ``-t``."""
    a = np.asarray(tx.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=float)
    t = np.asarray(tx.GetTranslation(), dtype=float)
    inv = sitk.Euler3DTransform()
    inv.SetCenter(tuple(float(v) for v in c + t))
    inv.SetMatrix(tuple(float(v) for v in a.T.ravel()))
    inv.SetTranslation(tuple(float(v) for v in -t))
    return inv


def _coarse(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Block-average ``image`` by integer factors to roughly ``spacing_mm`` (no factor below 1)."""
    factors = [max(1, int(round(spacing_mm / sp))) for sp in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image


def _otsu(arr: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(arr, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def _ellipsoid(radius: list[int]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum((g / r) ** 2 for g, r in zip(grids, radius)) <= 1.0


def _fill_axial_holes(binary: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Fill holes slice by slice along the array axis closest to physical z (axial slices)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    index_axis_of_z = int(np.argmax(np.abs(direction[2, :])))  # SimpleITK index axis (x=0, y=1, z=2)
    array_axis = 2 - index_axis_of_z
    out = np.moveaxis(binary.copy(), array_axis, 0)
    for i in range(out.shape[0]):
        out[i] = ndimage.binary_fill_holes(out[i])
    return np.moveaxis(out, 0, array_axis)


@contextmanager
def _thread_count(threads: int | None) -> Iterator[int]:
    """Set SimpleITK's global default thread count for the duration (restored afterwards)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    n = previous if threads is None else max(1, int(threads))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        yield n
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())

"""Deformable (B-spline) MR -> CT stage after the rigid one, with its own quality check and a rigid fall-back.

Why: rigid alignment is good at the skull and degrades toward the neck (neck flexion, jaw position); the best
post-challenge HaN-Seg entry added a non-rigid stage (``../shared/docs/REGISTRATION.md``, failure mode 4).

How (SimpleITK only; no optimiser is written here):

* CT FIXED, MR MOVING, so that the result maps CT physical points to MR physical points directly (a B-spline has
  no closed-form inverse). The field-of-view trap of a CT-fixed registration (REGISTRATION.md, failure mode 1) is
  avoided by a fixed-image MASK: CT body voxels (dilated, so the skin edge counts) whose rigid image lies inside
  the MR grid at least ``fov_margin_mm`` from its border.
* The registration grid: the CT resampled to ``grid_spacing_mm`` (2 mm) over the masked region only, clipped to
  [-300, 500] HU; the MR clipped to its [p0.5, p99.5]. Mattes MI (32 bins) on ``samples`` random voxels of the
  mask (fixed seed): a fixed COUNT, not a fraction, so the time does not grow with the CT's size.
* Transform: ``x_mr = rigid(x_ct + d(x_ct))``, ``d`` a cubic B-spline on a control grid of
  ``control_spacing_mm`` (30 mm), on an image pyramid (shrink 2, 1). L-BFGS-B keeps every coefficient within
  +/- ``max_coefficient_mm``, which bounds the displacement.
* Regularisation: SimpleITK's registration framework has no bending-energy penalty term (elastix has; the seed
  recipe and SynthRAD's H&N parameters pair it with a ~15 mm grid). Without it a 15 mm grid drifts where the images
  have no structure (mean TRE 1.57 mm against 1.20 mm for rigid alone on the synthetic neck-warp case of
  ``test/test_deformable.py``; 0.27 -> 1.43 mm where the anatomy did not move); 20 mm gave 1.38 mm, 25 mm 1.03 mm
  (with 3x the samples), **30 mm 1.09 mm** (the neck 2.76 -> 1.14 mm). itk-elastix (which has the penalty) was
  measured and rejected: 1.6 GB installed and 26 s to import. So the regularisation here is the coarse 30 mm grid,
  the image pyramid, the coefficient bound and a capped iteration count; the quality check then measures what a
  penalty would have prevented (folding, large displacements, large bending energy) and falls back to the rigid
  result.
* Quality check (:class:`DeformableThresholds`): inside the mask the Jacobian determinant of ``x -> x + d(x)``
  stays above ``min_jacobian`` (> 0: no folding), the displacement stays below ``max_displacement_mm``, the
  bending energy (mean squared second derivatives of ``d``) below ``max_bending_energy``, and the final Mattes MI
  on a fixed regular sample is not worse than the rigid one's. A failed check logs the reason, and the rigid
  transform is used (:func:`refine_deformable` then returns ``accepted=False``).

Conventions: SimpleITK images, points and transforms are (x, y, z) in mm in the LPS patient frame; numpy arrays
from ``sitk.GetArrayFromImage`` are (z, y, x).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeformableSettings:
    """B-spline stage settings (units in the names)."""

    control_spacing_mm: float = 30.0
    """Control-point spacing of the B-spline grid (mm); see the module docstring for why 30 and not 15."""
    grid_spacing_mm: float = 2.0
    """Voxel size of the registration grid the CT is resampled to (mm)."""
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 0.0)
    ct_clip_hu: tuple[float, float] = (-300.0, 500.0)
    mr_clip_percentiles: tuple[float, float] = (0.5, 99.5)
    histogram_bins: int = 32
    samples: int = 15_000
    """Random mask voxels the metric is computed on (all of them if the mask is smaller)."""
    sampling_seed: int = 20240602
    iterations: int = 20
    """L-BFGS-B iterations per level. Measured on the HaN-Seg-sized CT (benchmarks.registration_benchmark
    --deformable 2, 2 idle cores): 30 took 28-31 s with a TRE of 0.58/0.55 mm, 20 take 22-24 s at 0.49/0.50 mm
    (the test case: 0.98 mm vs 1.05 mm), so the extra iterations bought drift, not accuracy."""
    max_coefficient_mm: float = 12.0
    """Bound on every B-spline coefficient (mm): bounds the displacement during the optimisation."""
    body_hu: float = -400.0
    body_dilation_mm: float = 6.0
    fov_margin_mm: float = 6.0
    """Fixed-mask voxels must map at least this far inside the MR grid under the rigid transform."""
    check_spacing_mm: float = 4.0
    """Grid spacing (mm) the quality check evaluates the field on (Jacobian, displacement, bending energy): the
    30 mm cubic B-spline is smooth on this scale, and a 2 mm grid cost several seconds on a HaN-Seg-sized CT."""
    metric_sampling: float = 0.1
    """Fraction of the mask's voxels, on a regular grid, for the rigid-vs-deformable MI comparison (0.1: ~10^5
    samples on a HaN-Seg-sized CT, 1.7 s for both transforms instead of 4.2 s at 0.25)."""
    threads: int | None = None
    """SimpleITK threads during this stage (None: the global default)."""


@dataclass(frozen=True)
class DeformableThresholds:
    """Limits of the deformable stage's quality check (evaluated inside the fixed mask on the registration grid)."""

    min_jacobian: float = 0.2
    """The Jacobian determinant of ``x -> x + d(x)`` must stay above this everywhere (0 = folding)."""
    max_displacement_mm: float = 20.0
    max_bending_energy: float = 0.05
    """Mean over the mask of the sum of squared second derivatives of ``d`` (1/mm)."""
    max_metric_increase: float = 0.0
    """Final MI (negative, lower is better) may exceed the rigid MI by at most this."""


@dataclass(frozen=True)
class DeformableResult:
    """Outcome of :func:`refine_deformable`.

    Attributes:
        ct_to_mr: the transform to resample the MR with: ``CompositeTransform([rigid, bspline])`` (maps CT points
            to MR points, B-spline first) when accepted, else the rigid transform unchanged.
        bspline: the B-spline displacement part in CT physical space (None if the stage failed before optimising).
        accepted: the quality check passed.
        reason: why it was rejected ('' if accepted).
        metrics: ``mi_rigid``, ``mi_deformable``, ``jacobian_min``, ``jacobian_max``, ``displacement_max_mm``,
            ``displacement_mean_mm``, ``bending_energy``, ``iterations``, ``seconds`` (wall), ``cpu_seconds``.
    """

    ct_to_mr: sitk.Transform
    bspline: sitk.BSplineTransform | None
    accepted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


DEFAULT_DEFORMABLE = DeformableSettings()
DEFAULT_DEFORMABLE_THRESHOLDS = DeformableThresholds()


class _Failed(Exception):
    """Internal: the stage cannot run; the message is the reason."""


def refine_deformable(
    ct: sitk.Image,
    mr: sitk.Image,
    rigid_ct_to_mr: sitk.Transform,
    settings: DeformableSettings = DEFAULT_DEFORMABLE,
    thresholds: DeformableThresholds = DEFAULT_DEFORMABLE_THRESHOLDS,
) -> DeformableResult:
    """Refine an accepted rigid MR -> CT registration with a B-spline stage; fall back to ``rigid_ct_to_mr``.

    Args:
        ct: CT in HU (any pixel type and grid).
        mr: the T1 MR (own grid and frame).
        rigid_ct_to_mr: rigid transform CT physical -> MR physical (mm), from the rigid stage.

    Returns:
        A :class:`DeformableResult`; never raises for images the rigid stage accepted.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics: dict[str, float] = {}
    bspline: sitk.BSplineTransform | None = None
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if settings.threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(settings.threads)))
    try:
        fixed, mask = _fixed_image_and_mask(ct, mr, rigid_ct_to_mr, settings)
        moving = _clip_percentiles(sitk.Cast(mr, sitk.sitkFloat32), settings.mr_clip_percentiles)
        bspline, metrics = _optimise(fixed, mask, moving, rigid_ct_to_mr, settings)
        metrics.update(_field_metrics(bspline, _coarse_mask(mask, settings.check_spacing_mm)))
        metrics["mi_rigid"] = _metric(fixed, mask, moving, rigid_ct_to_mr, settings)
        metrics["mi_deformable"] = _metric(fixed, mask, moving, _compose(rigid_ct_to_mr, bspline), settings)
        reason = _reason(metrics, thresholds)
    except _Failed as err:
        reason = str(err)
    except RuntimeError as err:  # ITK exceptions
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = f"B-spline registration failed: {lines[-1][:200] if lines else type(err).__name__}"
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    metrics["seconds"] = time.perf_counter() - start
    metrics["cpu_seconds"] = time.process_time() - cpu_start  # all threads of this process; wall depends on load
    text = ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())
    if reason:
        log.warning("deformable MR stage rejected (%s): falling back to the rigid registration (%s)", reason, text)
        return DeformableResult(rigid_ct_to_mr, bspline, False, reason, metrics)
    log.info("deformable MR stage accepted in %.1f s (%s)", metrics["seconds"], text)
    return DeformableResult(_compose(rigid_ct_to_mr, bspline), bspline, True, "", metrics)


def _compose(rigid: sitk.Transform, bspline: sitk.Transform) -> sitk.CompositeTransform:
    """``x -> rigid(bspline(x))`` (SimpleITK applies the LAST transform of the list first)."""
    return sitk.CompositeTransform([rigid, bspline])


def _clip_percentiles(image: sitk.Image, percentiles: tuple[float, float]) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(image)
    step = max(1, arr.size // 2_000_000)
    lo, hi = np.percentile(arr.ravel()[::step], percentiles)
    if not hi > lo:
        raise _Failed("the MR has no intensity range")
    return sitk.Clamp(image, sitk.sitkFloat32, float(lo), float(hi))


def _fixed_image_and_mask(
    ct: sitk.Image, mr: sitk.Image, rigid: sitk.Transform, s: DeformableSettings
) -> tuple[sitk.Image, sitk.Image]:
    """The clipped CT on the registration grid (axis-aligned with the CT, ``grid_spacing_mm``) covering the fixed
    mask, and the mask (uint8): dilated CT body whose rigid image lies inside the MR grid (minus a margin)."""
    factors = [max(1, int(round(s.grid_spacing_mm / sp))) for sp in ct.GetSpacing()]
    coarse = sitk.BinShrink(ct, factors) if any(f > 1 for f in factors) else ct
    coarse = sitk.Cast(coarse, sitk.sitkFloat32)
    # Where the rigid transform puts each coarse CT voxel in the MR grid: inside the (shrunken) MR box?
    margin = [max(0, int(round(s.fov_margin_mm / sp))) for sp in mr.GetSpacing()]
    inner = sitk.Image(mr.GetSize(), sitk.sitkUInt8)
    inner.CopyInformation(mr)
    size = mr.GetSize()
    lo = [min(m, n // 2) for m, n in zip(margin, size)]
    region = [max(1, n - 2 * m) for m, n in zip(lo, size)]
    inner = sitk.Paste(inner, sitk.Image(region, sitk.sitkUInt8) + 1, region, [0, 0, 0], lo)
    in_fov = sitk.Resample(inner, coarse, rigid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    body = sitk.BinaryThreshold(coarse, s.body_hu, 1e9, 1, 0)
    radius = [max(1, int(round(s.body_dilation_mm / sp))) for sp in coarse.GetSpacing()]
    body = sitk.BinaryDilate(body, radius)
    mask = sitk.And(body, in_fov)
    arr = sitk.GetArrayViewFromImage(mask)
    if int(arr.sum()) < 1000:
        raise _Failed(f"only {int(arr.sum())} CT body voxels inside the MR field of view")
    kji = np.argwhere(arr)
    lo_idx, hi_idx = kji.min(axis=0)[::-1], kji.max(axis=0)[::-1] + 1
    box_size = [int(v) for v in hi_idx - lo_idx]
    fixed = sitk.RegionOfInterest(coarse, box_size, [int(v) for v in lo_idx])
    mask = sitk.RegionOfInterest(mask, box_size, [int(v) for v in lo_idx])
    fixed = sitk.Clamp(fixed, sitk.sitkFloat32, *s.ct_clip_hu)
    return fixed, mask


def _mesh_size(image: sitk.Image, spacing_mm: float) -> list[int]:
    extent = [(n - 1) * sp for n, sp in zip(image.GetSize(), image.GetSpacing())]
    return [max(1, int(round(e / spacing_mm))) for e in extent]


def _optimise(
    fixed: sitk.Image, mask: sitk.Image, moving: sitk.Image, rigid: sitk.Transform, s: DeformableSettings
) -> tuple[sitk.BSplineTransform, dict[str, float]]:
    bspline = sitk.BSplineTransformInitializer(fixed, _mesh_size(fixed, s.control_spacing_mm), order=3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    mask_voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    reg.SetMetricSamplingPercentage(min(1.0, s.samples / max(1, mask_voxels)), s.sampling_seed)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=s.iterations,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=2 * s.iterations,
        costFunctionConvergenceFactor=1e7,
        lowerBound=-s.max_coefficient_mm,
        upperBound=s.max_coefficient_mm,
        trace=False,
    )
    reg.MetricUseMovingImageGradientFilterOff()
    reg.MetricUseFixedImageGradientFilterOff()
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.SetShrinkFactorsPerLevel(list(s.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(s.smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    iterations = [0]
    t0 = time.perf_counter()

    def on_iteration() -> None:
        iterations[0] += 1
        log.debug("B-spline level %d iteration %d: MI %.4f (%.1f s)", reg.GetCurrentLevel(),
                  reg.GetOptimizerIteration(), reg.GetMetricValue(), time.perf_counter() - t0)

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    reg.Execute(fixed, moving)
    metrics = {"iterations": float(iterations[0]), "mi_optimiser": float(reg.GetMetricValue()),
               "control_points": float(np.prod(bspline.GetCoefficientImages()[0].GetSize()))}
    return bspline, metrics


def _metric(fixed: sitk.Image, mask: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
            s: DeformableSettings) -> float:
    """Mattes MI of ``moving`` under ``transform`` on a regular ``metric_sampling`` share of the masked voxels."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.REGULAR)  # the same regular samples for both transforms
    reg.SetMetricSamplingPercentage(s.metric_sampling, s.sampling_seed)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(transform)
    return float(reg.MetricEvaluate(fixed, moving))


def _coarse_mask(mask: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``mask`` (nearest neighbour) on an axis-aligned grid of about ``spacing_mm`` over the same box."""
    factors = [max(1, int(round(spacing_mm / sp))) for sp in mask.GetSpacing()]
    if all(f == 1 for f in factors):
        return mask
    size = [max(1, n // f) for n, f in zip(mask.GetSize(), factors)]
    spacing = [sp * f for sp, f in zip(mask.GetSpacing(), factors)]
    # the coarse grid's first voxel centre sits at the centre of the first block of fine voxels
    origin = mask.TransformContinuousIndexToPhysicalPoint([(f - 1) / 2 for f in factors])
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin)
    grid.SetDirection(mask.GetDirection())
    return sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _field_metrics(bspline: sitk.BSplineTransform, mask: sitk.Image) -> dict[str, float]:
    """Jacobian determinant, displacement and bending energy of ``x -> x + d(x)`` inside ``mask``."""
    dfield = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, mask.GetSize(), mask.GetOrigin(),
                                               mask.GetSpacing(), mask.GetDirection())
    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    disp = sitk.GetArrayFromImage(dfield)  # (z, y, x, 3): components x, y, z
    spacing = mask.GetSpacing()[::-1]  # numpy axis order
    # grad[c][a]: d(disp_c)/d(mm along numpy axis a); numpy axis a is index axis 2 - a, i.e. direction column 2 - a.
    # With G[c, i] = d(disp_c)/d(mm along index axis i), the map p -> p + d(p) has Jacobian I + G D^T.
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    grad = [np.gradient(disp[..., c], *spacing) for c in range(3)]
    g = np.empty((*disp.shape[:3], 3, 3))
    for c in range(3):
        for i in range(3):
            g[..., c, i] = grad[c][2 - i]
    det = np.linalg.det(np.eye(3) + g @ direction.T)
    jac = det[inside]
    norm = np.linalg.norm(disp, axis=-1)[inside]
    bending = np.zeros(disp.shape[:3])
    for c in range(3):
        for a in range(3):
            second = np.gradient(grad[c][a], *spacing)
            for b in range(3):
                bending += second[b] ** 2
    return {
        "jacobian_min": float(jac.min()),
        "jacobian_max": float(jac.max()),
        "displacement_max_mm": float(norm.max()),
        "displacement_mean_mm": float(norm.mean()),
        "bending_energy": float(bending[inside].mean()),
    }


def _reason(m: dict[str, float], t: DeformableThresholds) -> str:
    checks = [
        (m["jacobian_min"] <= t.min_jacobian,
         f"the deformation folds or compresses too much (Jacobian min {m['jacobian_min']:.2f} <= {t.min_jacobian})"),
        (m["displacement_max_mm"] > t.max_displacement_mm,
         f"displacement {m['displacement_max_mm']:.1f} mm > {t.max_displacement_mm:.0f} mm"),
        (m["bending_energy"] > t.max_bending_energy,
         f"bending energy {m['bending_energy']:.3g} > {t.max_bending_energy:.3g}"),
        (m["mi_deformable"] > m["mi_rigid"] + t.max_metric_increase,
         f"similarity worse than rigid (MI {m['mi_deformable']:.3f} > {m['mi_rigid']:.3f})"),
    ]
    return "; ".join(message for failed, message in checks if failed)


FOV_RESAMPLE_MARGIN_MM = 25.0
"""Margin around the MR field of view (placed by the rigid transform) inside which the deformably registered MR is
resampled: more than the largest displacement the stage can produce (B-spline weights sum to 1, so |d| <=
sqrt(3) x the 12 mm coefficient bound = 20.8 mm), so the result equals a resampling of the whole CT grid."""


def resample_deformable(mr: sitk.Image, ct: sitk.Image, ct_to_mr: sitk.Transform, rigid_ct_to_mr: sitk.Transform,
                        margin_mm: float = FOV_RESAMPLE_MARGIN_MM) -> sitk.Image:
    """``sitk.Resample(mr, ct, ct_to_mr)`` (linear, float32, 0 outside), evaluated only on the CT voxels within
    ``margin_mm`` of the MR field of view: a B-spline transform costs ~50 times a rigid one per voxel, and on a
    HaN-Seg CT the MR covers about a fifth of the grid. Voxels outside stay 0, as a whole-grid resampling gives."""
    size = np.asarray(mr.GetSize(), dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) * (size - 1)
    mr_to_ct = rigid_ct_to_mr.GetInverse()
    in_ct = [mr_to_ct.TransformPoint(mr.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]))
             for c in corners]
    idx = np.array([ct.TransformPhysicalPointToContinuousIndex(p) for p in in_ct])
    margin = margin_mm / np.asarray(ct.GetSpacing(), dtype=float)
    ct_size = np.asarray(ct.GetSize(), dtype=int)
    lo = np.clip(np.floor(idx.min(axis=0) - margin).astype(int), 0, ct_size)
    hi = np.clip(np.ceil(idx.max(axis=0) + margin).astype(int) + 1, 0, ct_size)
    moving = sitk.Cast(mr, sitk.sitkFloat32)
    if np.any(hi - lo < 1):
        return sitk.Resample(moving, ct, ct_to_mr, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    region = ct[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]
    part = sitk.Resample(moving, region, ct_to_mr, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = sitk.Image(ct.GetSize(), sitk.sitkFloat32)
    out.CopyInformation(ct)
    return sitk.Paste(out, part, part.GetSize(), [0, 0, 0], [int(v) for v in lo])

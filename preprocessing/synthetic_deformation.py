"""A known smooth non-rigid motion of the neck for the synthetic-modality protocol (deformable-stage tests).

The rigid protocol (:mod:`preprocessing.synthetic_t1`) places a T1-like image of the CT in another scanner frame.
Here the CT is first warped by a smooth B-spline ``W`` whose displacement is zero at the skull and reaches
``amplitude_mm`` in the neck (as neck flexion / jaw position differ between a CT and an MR session):

    CT_def(x) = CT(W(x))            (pull-back resampling of the CT by W)
    MR(y)     = CT_def(R^-1(y))     (make_t1_like of CT_def under the rigid R)

so a CT point ``p`` is seen at MR point ``R(W^-1(p))``: the TRUE CT -> MR transform is ``R o W^-1``, with ``W^-1``
a dense displacement field computed by ``sitk.InvertDisplacementField``.

Conventions: SimpleITK (x, y, z) in mm, LPS, +z superior; numpy arrays (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from preprocessing.geometry import index_to_physical
from preprocessing.synthetic_t1 import BODY_THRESHOLD_HU, SyntheticMR, make_t1_like


@dataclass(frozen=True)
class DeformedSyntheticMR:
    """A synthetic MR of a non-rigidly moved CT, and the truth.

    Attributes:
        synthetic: the rigid-protocol result made from the deformed CT (its ``ct_to_mr`` is ``R`` alone).
        ct_to_mr: the true CT -> MR transform ``R o W^-1`` (a composite of the rigid and a displacement field).
        warp: ``W`` (CT physical -> CT physical), the pull-back B-spline used to deform the CT.
        max_displacement_mm: largest displacement of ``W`` over CT body voxels (mm).
    """

    synthetic: SyntheticMR
    ct_to_mr: sitk.Transform
    warp: sitk.BSplineTransform
    max_displacement_mm: float

    @property
    def image(self) -> sitk.Image:
        return self.synthetic.image


def neck_warp(ct: sitk.Image, amplitude_mm: float = 7.0, seed: int = 0, neck_below_vertex_mm: float = 110.0,
              control_spacing_mm: float = 45.0) -> tuple[sitk.BSplineTransform, float]:
    """A smooth B-spline ``W`` on the CT domain: zero above ``neck_below_vertex_mm`` below the vertex, random smooth
    displacements below, scaled so that the largest displacement over CT body voxels is ``amplitude_mm``.

    Returns ``(W, max displacement over the body in mm)``."""
    rng = np.random.default_rng(seed)
    extent = [(n - 1) * s for n, s in zip(ct.GetSize(), ct.GetSpacing())]
    mesh = [max(2, int(round(e / control_spacing_mm))) for e in extent]
    warp = sitk.BSplineTransformInitializer(ct, mesh, order=3)
    coefficient_images = warp.GetCoefficientImages()
    grid = coefficient_images[0]
    kji = np.indices(grid.GetSize()[::-1]).reshape(3, -1).T
    points = np.array([grid.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in kji])
    vertex = _vertex_z(ct)
    depth = vertex - points[:, 2]  # mm below the vertex (+z superior)
    weight = np.clip((depth - neck_below_vertex_mm) / 40.0, 0.0, 1.0).reshape(grid.GetSize()[::-1])
    coefficients = [rng.uniform(-1.0, 1.0, weight.shape) * weight for _ in range(3)]
    coefficients[2] *= 0.4  # mostly in-plane (flexion, jaw), a little cranio-caudal

    def displacement_max(scale: float) -> float:
        tx = _with_coefficients(warp, [c * scale for c in coefficients], coefficient_images)
        return _max_body_displacement(ct, tx)

    unit = displacement_max(1.0)
    if unit <= 0:
        raise ValueError("the CT has no body voxel in the neck region to deform")
    scale = amplitude_mm / unit
    warp = _with_coefficients(warp, [c * scale for c in coefficients], coefficient_images)
    return warp, displacement_max(scale)


def deformed_t1_like(ct: sitk.Image, amplitude_mm: float = 7.0, warp_seed: int = 0,
                     inverse_spacing_mm: float = 4.0, **rigid: Sequence[float] | float | int) -> DeformedSyntheticMR:
    """:func:`preprocessing.synthetic_t1.make_t1_like` of the CT warped by :func:`neck_warp`; ``rigid`` holds
    make_t1_like's keyword arguments (rotation_deg, translation_mm, spacing_mm, seed, ...)."""
    warp, max_disp = neck_warp(ct, amplitude_mm, seed=warp_seed)
    deformed = sitk.Resample(ct, ct, warp, sitk.sitkLinear, -1000.0, ct.GetPixelID())
    synthetic = make_t1_like(deformed, **rigid)  # type: ignore[arg-type]
    inverse = _inverse_field(ct, warp, inverse_spacing_mm)
    truth = sitk.CompositeTransform([synthetic.ct_to_mr, inverse])
    return DeformedSyntheticMR(synthetic=synthetic, ct_to_mr=truth, warp=warp, max_displacement_mm=max_disp)


def _inverse_field(ct: sitk.Image, warp: sitk.Transform, spacing_mm: float) -> sitk.DisplacementFieldTransform:
    extent = np.array([(n - 1) * s for n, s in zip(ct.GetSize(), ct.GetSpacing())])
    size = [int(v) for v in np.ceil(extent / spacing_mm) + 1]
    field = sitk.TransformToDisplacementField(warp, sitk.sitkVectorFloat64, size, ct.GetOrigin(),
                                              [spacing_mm] * 3, ct.GetDirection())
    inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=20, maxErrorToleranceThreshold=0.01,
                                           meanErrorToleranceThreshold=0.0001, enforceBoundaryCondition=False)
    return sitk.DisplacementFieldTransform(inverse)


def _with_coefficients(template: sitk.BSplineTransform, arrays: list[np.ndarray],
                       like: Sequence[sitk.Image]) -> sitk.BSplineTransform:
    images = []
    for arr, ref in zip(arrays, like):
        img = sitk.GetImageFromArray(arr.astype(np.float64))
        img.CopyInformation(ref)
        images.append(img)
    return sitk.BSplineTransform(images, template.GetOrder())


def _vertex_z(ct: sitk.Image) -> float:
    """Physical height (mm, +z superior) of the top of the body (99.9th percentile of body voxel heights)."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(ct) > BODY_THRESHOLD_HU)
    if len(kji) == 0:
        raise ValueError(f"CT has no voxel above {BODY_THRESHOLD_HU} HU")
    kji = kji[:: max(1, len(kji) // 200_000)]
    return float(np.percentile(index_to_physical(ct, kji[:, ::-1].astype(float))[:, 2], 99.9))


def _max_body_displacement(ct: sitk.Image, warp: sitk.Transform, spacing_mm: float = 4.0) -> float:
    factors = [max(1, int(round(spacing_mm / s))) for s in ct.GetSpacing()]
    small = sitk.Shrink(ct, factors)
    field = sitk.TransformToDisplacementField(warp, sitk.sitkVectorFloat64, small.GetSize(), small.GetOrigin(),
                                              small.GetSpacing(), small.GetDirection())
    disp = np.linalg.norm(sitk.GetArrayViewFromImage(field), axis=-1)
    body = sitk.GetArrayViewFromImage(small) > BODY_THRESHOLD_HU
    return float(disp[body].max()) if body.any() else 0.0

"""A T1-weighted-MR-like image made from a CT, with a known rigid transform: the synthetic-modality protocol.

Used by tests, benchmarks and training-data experiments to measure MR->CT registration without a real MR/CT pair
(see ``../shared/docs/REGISTRATION.md``). The recipe:

1. A rigid transform ``ct_to_mr`` (rotation about the head centre, then translation, plus an optional large
   offset as between unrelated scanner frames) places the patient in the MR scanner's physical frame.
2. The MR grid (its own spacing, default 0.9 x 0.9 x 1.5 mm, identity direction unless told otherwise) covers only
   the head: ``fov_mm`` wide, from a little above the vertex downwards. The CT usually runs on to the shoulders.
3. The CT is linearly resampled onto the MR grid (air outside the CT), then a piecewise-linear HU -> T1 map is
   applied (air and bone dark, fat bright, muscle/brain mid, fluid darker), a Gaussian blur (~1 mm), a smooth
   multiplicative bias field (+/- 20 %) and Rician-like noise.

Everything random comes from one ``numpy.random.Generator`` seeded by ``seed``, so results are reproducible.

Conventions: SimpleITK images and physical points are (x, y, z) in mm in the LPS patient frame; numpy arrays from
``sitk.GetArrayFromImage`` are (z, y, x). Physical +z is superior.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from preprocessing.geometry import index_to_physical as _index_to_physical
from preprocessing.geometry import physical_to_continuous_index as _physical_to_continuous_index

log = logging.getLogger(__name__)

Vec3 = tuple[float, float, float]

DEFAULT_SPACING_MM: Vec3 = (0.9, 0.9, 1.5)
"""MR voxel size (x, y, z) in mm: HaN-Seg-like T1 in-plane resolution with thin slices."""

DEFAULT_FOV_MM: Vec3 = (230.0, 230.0, 210.0)
"""MR field of view (x, y, z) in mm: 256 x 256 x 140 voxels at the default spacing, the head only."""

TOP_MARGIN_MM = 10.0
"""Air kept above the vertex in the MR field of view (mm)."""

BODY_THRESHOLD_HU = -400.0
"""CT voxels above this are body (used to find the head)."""

HEAD_SLAB_MM = 150.0
"""Height below the vertex (mm) over which the head's in-plane centre is measured."""

# HU -> T1 (arbitrary units, soft-tissue ~ 500). Air and cortical bone dark, fat bright, muscle/brain mid,
# water-like fluid (CSF, 0..15 HU) darker than muscle. Between the points: linear; outside: constant.
T1_MAP_HU: tuple[float, ...] = (-1000.0, -400.0, -200.0, -120.0, -60.0, -20.0, 10.0, 40.0, 80.0, 200.0, 450.0, 1000.0)
T1_MAP_VALUE: tuple[float, ...] = (0.0, 30.0, 600.0, 1000.0, 950.0, 450.0, 250.0, 520.0, 560.0, 420.0, 120.0, 60.0)

NOISE_REFERENCE = 1000.0
"""Noise standard deviation is ``noise_fraction * NOISE_REFERENCE`` (the fat intensity)."""


@dataclass(frozen=True)
class SyntheticMR:
    """A synthetic T1-like MR and the ground truth that made it.

    Attributes:
        image: float32 MR on its own grid (x, y, z spacing in mm), in the MR scanner's physical frame.
        ct_to_mr: the true rigid transform mapping CT physical points (mm) to MR physical points (mm), i.e. the
            transform to pass to ``sitk.Resample(mr, ct, ct_to_mr)`` to bring the MR onto the CT grid.
        rotation_deg: Euler angles (about x, y, z; ITK ``Euler3DTransform`` convention) used, in degrees.
        translation_mm: translation used (x, y, z, mm), including ``origin_offset_mm``.
        head_center_ct: centre of rotation: the head centre in CT physical coordinates (x, y, z, mm).
        seed: the seed of the random generator.
    """

    image: sitk.Image
    ct_to_mr: sitk.Euler3DTransform
    rotation_deg: Vec3
    translation_mm: Vec3
    head_center_ct: Vec3
    seed: int


def random_rigid(
    rng: np.random.Generator, max_rotation_deg: float = 5.0, max_translation_mm: float = 30.0
) -> tuple[Vec3, Vec3]:
    """Draw a random rigid motion: each angle uniform in +/-``max_rotation_deg`` (degrees, about x, y, z), and a
    translation of uniformly random direction and length uniform in [0.5, 1] * ``max_translation_mm`` (x, y, z, mm).

    Returns:
        ``(rotation_deg, translation_mm)`` ready for :func:`make_t1_like`.
    """
    rotation = rng.uniform(-max_rotation_deg, max_rotation_deg, size=3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-12
    translation = direction * rng.uniform(0.5, 1.0) * max_translation_mm
    return _vec3(rotation), _vec3(translation)


def hu_to_t1(hu: np.ndarray) -> np.ndarray:
    """Map CT numbers (HU) to T1-like intensities (float32, 0..1000) with the piecewise-linear table above."""
    return np.interp(hu, T1_MAP_HU, T1_MAP_VALUE).astype(np.float32)


def make_t1_like(
    ct: sitk.Image,
    *,
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    origin_offset_mm: Sequence[float] = (0.0, 0.0, 0.0),
    spacing_mm: Sequence[float] = DEFAULT_SPACING_MM,
    fov_mm: Sequence[float] = DEFAULT_FOV_MM,
    direction: Sequence[float] | None = None,
    blur_mm: float = 1.0,
    bias_amplitude: float = 0.2,
    noise_fraction: float = 0.02,
    seed: int = 0,
) -> SyntheticMR:
    """Make a T1-like MR of the head from ``ct`` after a known rigid transform.

    Args:
        ct: CT in HU (any pixel type), any grid and direction.
        rotation_deg: Euler angles about x, y, z (degrees), applied about the head centre.
        translation_mm: translation (x, y, z, mm) applied after the rotation.
        origin_offset_mm: an extra translation (x, y, z, mm) modelling an unrelated scanner frame (e.g. 300 mm).
            Only its sum with ``translation_mm`` matters; kept separate for readable test cases.
        spacing_mm: MR voxel size (x, y, z, mm).
        fov_mm: MR field of view (x, y, z, mm), centred in-plane on the head, from ``TOP_MARGIN_MM`` above the
            vertex downwards.
        direction: the MR's direction matrix (9 values, row-major, orthonormal), identity if None. The grid is
            laid out so that it still covers the head.
        blur_mm: Gaussian blur sigma (mm); 0 disables.
        bias_amplitude: maximum relative deviation of the smooth multiplicative bias field (0.2 = +/-20 %).
        noise_fraction: Rician noise sigma relative to the fat intensity (1000).
        seed: seed of the numpy random generator (bias field and noise).

    Returns:
        A :class:`SyntheticMR` with a float32 image and the true ``ct_to_mr`` transform.

    Raises:
        ValueError: if the CT has no body voxel (nothing above ``BODY_THRESHOLD_HU``) or arguments are malformed.
    """
    rng = np.random.default_rng(seed)
    rot = _vec3(rotation_deg)
    trans = _vec3(np.asarray(translation_mm, dtype=float) + np.asarray(origin_offset_mm, dtype=float))
    spacing = np.asarray(_vec3(spacing_mm))
    fov = np.asarray(_vec3(fov_mm))
    if np.any(spacing <= 0) or np.any(fov <= 0):
        raise ValueError(f"spacing_mm {tuple(spacing)} and fov_mm {tuple(fov)} must be positive")
    mr_dir = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.allclose(mr_dir @ mr_dir.T, np.eye(3), atol=1e-6):
        raise ValueError(f"direction {tuple(mr_dir.ravel())} is not orthonormal")

    top_z, head_xy = _head_geometry(ct)
    # Physical box to cover in the CT frame (x, y, z): the head, from TOP_MARGIN_MM above the vertex down.
    box_center_ct = np.array([head_xy[0], head_xy[1], top_z + TOP_MARGIN_MM - fov[2] / 2.0])
    rotation_center = np.array([head_xy[0], head_xy[1], top_z - 0.5 * HEAD_SLAB_MM])

    ct_to_mr = sitk.Euler3DTransform()
    ct_to_mr.SetCenter(_vec3(rotation_center))
    ct_to_mr.SetRotation(*(math.radians(a) for a in rot))
    ct_to_mr.SetTranslation(trans)

    # MR grid: size from FOV/spacing; the box is defined along the MR scanner axes (x, y, z of the MR frame) and
    # centred on the image of the CT box centre; the direction only changes how voxels are stored.
    size = np.maximum(np.round(fov / spacing).astype(int), 2)
    center_mr = np.asarray(ct_to_mr.TransformPoint(_vec3(box_center_ct)))
    # Index axis i runs along mr_dir[:, i]; give it the spacing/size of the physical axis it is closest to.
    axis_of_index = np.argmax(np.abs(mr_dir), axis=0)
    size_idx = size[axis_of_index]
    spacing_idx = spacing[axis_of_index]
    origin = center_mr - mr_dir @ ((size_idx - 1) / 2.0 * spacing_idx)

    reference = sitk.Image([int(s) for s in size_idx], sitk.sitkFloat32)
    reference.SetSpacing(_vec3(spacing_idx))
    reference.SetOrigin(_vec3(origin))
    reference.SetDirection(tuple(float(v) for v in mr_dir.ravel()))

    hu_on_mr = sitk.Resample(
        sitk.Cast(ct, sitk.sitkFloat32), reference, ct_to_mr.GetInverse(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32
    )
    t1 = sitk.GetImageFromArray(hu_to_t1(sitk.GetArrayViewFromImage(hu_on_mr)))
    t1.CopyInformation(reference)
    if blur_mm > 0:
        t1 = sitk.SmoothingRecursiveGaussian(t1, float(blur_mm))
    arr = sitk.GetArrayFromImage(t1)  # (z, y, x)
    if bias_amplitude > 0:
        arr *= _bias_field(arr.shape, rng, bias_amplitude)
    if noise_fraction > 0:
        sigma = np.float32(noise_fraction * NOISE_REFERENCE)
        real = arr + sigma * rng.standard_normal(arr.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(arr.shape, dtype=np.float32)
        arr = np.sqrt(real * real + imag * imag)
    image = sitk.GetImageFromArray(arr.astype(np.float32, copy=False))
    image.CopyInformation(reference)
    log.debug("synthetic T1 size %s spacing %s origin %s", image.GetSize(), image.GetSpacing(), image.GetOrigin())
    return SyntheticMR(
        image=image,
        ct_to_mr=ct_to_mr,
        rotation_deg=rot,
        translation_mm=trans,
        head_center_ct=_vec3(rotation_center),
        seed=seed,
    )


def relabel_direction(image: sitk.Image, direction: Sequence[float]) -> sitk.Image:
    """A copy of ``image`` with the same voxels but another direction matrix: a MISLABELLED orientation.

    The origin is chosen so that the centre of the image box stays where it was; the anatomy is therefore
    mirrored or rotated in physical space (e.g. ``(1, 0, 0, 0, 1, 0, 0, 0, -1)`` turns the head upside down).
    """
    out = sitk.Image(image)
    new_dir = np.asarray(direction, dtype=float).reshape(3, 3)
    half = (np.asarray(image.GetSize(), dtype=float) - 1.0) / 2.0 * np.asarray(image.GetSpacing(), dtype=float)
    old_dir = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    center = np.asarray(image.GetOrigin(), dtype=float) + old_dir @ half
    out.SetDirection(tuple(float(v) for v in new_dir.ravel()))
    out.SetOrigin(_vec3(center - new_dir @ half))
    return out


def body_points_in_mr_fov(
    ct: sitk.Image, mr: sitk.Image, ct_to_mr: sitk.Transform, max_points: int = 20000, seed: int = 0
) -> np.ndarray:
    """CT body voxel centres (HU > ``BODY_THRESHOLD_HU``) whose image under ``ct_to_mr`` lies inside the MR grid.

    Args:
        ct: the CT (HU).
        mr: the MR whose field of view limits the points.
        ct_to_mr: the (true) transform CT physical -> MR physical.
        max_points: at most this many points, drawn uniformly with ``seed`` if there are more.

    Returns:
        ``(N, 3)`` float64 array of CT physical points (x, y, z, mm).
    """
    arr = sitk.GetArrayViewFromImage(ct)
    kji = np.argwhere(arr > BODY_THRESHOLD_HU)
    if len(kji) > 4 * max_points:  # thin out before the (Python-loop) transform below
        kji = kji[np.random.default_rng(seed).choice(len(kji), 4 * max_points, replace=False)]
    points = _index_to_physical(ct, kji[:, ::-1].astype(float))
    mapped = transform_points(ct_to_mr, points)
    cont = _physical_to_continuous_index(mr, mapped)
    size = np.asarray(mr.GetSize(), dtype=float)
    inside = np.all((cont >= 0.0) & (cont <= size - 1.0), axis=1)
    points = points[inside]
    if len(points) > max_points:
        points = points[np.random.default_rng(seed + 1).choice(len(points), max_points, replace=False)]
    return points


def target_registration_error(
    points_ct: np.ndarray, true_ct_to_mr: sitk.Transform, estimated_ct_to_mr: sitk.Transform
) -> np.ndarray:
    """Distance (mm) between the true and the estimated image of each CT point ``(N, 3)`` (x, y, z, mm)."""
    true = transform_points(true_ct_to_mr, points_ct)
    est = transform_points(estimated_ct_to_mr, points_ct)
    return np.linalg.norm(true - est, axis=1)


def transform_points(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Apply a SimpleITK transform to ``(N, 3)`` physical points (x, y, z, mm); returns ``(N, 3)`` float64."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    return np.array([transform.TransformPoint(tuple(p)) for p in points], dtype=float).reshape(-1, 3)


def _head_geometry(ct: sitk.Image) -> tuple[float, tuple[float, float]]:
    """Vertex height (physical z, mm) and the in-plane body centroid (x, y, mm) of the top ``HEAD_SLAB_MM``."""
    factors = [max(1, int(round(3.0 / s))) for s in ct.GetSpacing()]  # ~3 mm grid is plenty
    small = sitk.Shrink(ct, factors) if any(f > 1 for f in factors) else ct
    arr = sitk.GetArrayViewFromImage(small)
    kji = np.argwhere(arr > BODY_THRESHOLD_HU)
    if len(kji) == 0:
        raise ValueError(f"CT has no voxel above {BODY_THRESHOLD_HU} HU: cannot find the head")
    points = _index_to_physical(small, kji[:, ::-1].astype(float))
    top = float(np.percentile(points[:, 2], 99.9))
    slab = points[points[:, 2] >= top - HEAD_SLAB_MM]
    return top, (float(slab[:, 0].mean()), float(slab[:, 1].mean()))


def _bias_field(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field ``1 + amplitude * f``, f a random quadratic polynomial with max |f| = 1.

    Evaluated on a coarse grid then linearly upsampled (cheap); ``shape`` is (z, y, x)."""
    coarse = [min(n, 24) for n in shape]
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in coarse], indexing="ij")
    z, y, x = axes
    terms = [x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, x * z, y * z]
    coeffs = rng.uniform(-1.0, 1.0, size=len(terms))
    field = sum(c * t for c, t in zip(coeffs, terms))
    field = field / (np.abs(field).max() + 1e-12)
    small = sitk.GetImageFromArray((1.0 + amplitude * field).astype(np.float32))
    # The coarse grid spans the same index range as the full grid (unit spacing, origin 0).
    full = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkFloat32)
    small.SetSpacing(tuple(float(n - 1) / max(c - 1, 1) for c, n in zip(coarse[::-1], shape[::-1])))
    out = sitk.Resample(small, full, sitk.Transform(), sitk.sitkLinear, 1.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _vec3(values: Sequence[float] | np.ndarray) -> Vec3:
    flat = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    if len(flat) != 3 or not all(math.isfinite(v) for v in flat):
        raise ValueError(f"expected 3 finite numbers, got {values!r}")
    return (flat[0], flat[1], flat[2])

"""Metric tests: answers known analytically on anisotropic grids, and cross-checks against independent code.

Arrays are (z, y, x); spacings here are (z, y, x) mm as evaluation.metrics expects.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from evaluation.metrics import (
    compute_oar_metrics,
    dice,
    directed_surface_distances,
    surface,
    union_crop,
)

SPACING_ZYX = (2.5, 1.1, 0.7)  # anisotropic, the coarse axis first as in CT
N = 10  # cube side in voxels


def cube(shape=(24, 30, 34), start=(5, 8, 9), n=N, shift=(0, 0, 0)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    z, y, x = (s + d for s, d in zip(start, shift))
    mask[z: z + n, y: y + n, x: x + n] = True
    return mask


def shift_vector(axis: int, k: int) -> tuple[int, int, int]:
    v = [0, 0, 0]
    v[axis] = k
    return tuple(v)  # type: ignore[return-value]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cube_dice_hd95_and_surface_dice(axis: int, k: int) -> None:
    gt = cube()
    pred = cube(shift=shift_vector(axis, k))
    m = compute_oar_metrics(pred, gt, SPACING_ZYX, tolerance_mm=0.5)
    # Overlap of two n-cubes shifted by k voxels along one axis: (n - k) / n.
    assert m.dsc == pytest.approx((N - k) / N, abs=1e-12)
    # Every directed surface distance is at most k * spacing, and the whole leading face (n^2 of the
    # n^3 - (n-2)^3 surface voxels, > 5 %) is at exactly k * spacing: HD95 = k * spacing.
    assert m.hd95_mm == pytest.approx(k * SPACING_ZYX[axis], abs=1e-9)
    # Tolerance below every spacing: only distance-0 voxels count. Those are the side-face rings of the n - k
    # overlapping layers plus the ring of the layer inside the other cube: 4 (n - 1) (n - k) in each direction.
    expected = 4 * (N - 1) * (N - k) / (N**3 - (N - 2) ** 3)
    assert m.surface_dice == pytest.approx(expected, abs=1e-12)
    # Tolerance at the largest distance: every surface voxel counts.
    assert compute_oar_metrics(pred, gt, SPACING_ZYX, tolerance_mm=k * SPACING_ZYX[axis]).surface_dice == 1.0
    assert m.gt_voxels == m.pred_voxels == N**3


@pytest.mark.parametrize(("axis", "k", "inside_2mm"), [(2, 2, True), (2, 3, False), (1, 1, True), (0, 1, False)])
def test_shifted_plate_hd95_and_surface_dice_at_2mm(axis: int, k: int, inside_2mm: bool) -> None:
    """A one-voxel-thick plate moved by k voxels across its thickness: every distance is exactly k * spacing."""
    shape = (20, 24, 26)
    gt = np.zeros(shape, dtype=bool)
    region = [slice(4, 14), slice(5, 17), slice(6, 20)]
    region[axis] = slice(8, 9)
    gt[tuple(region)] = True
    pred = np.roll(gt, k, axis=axis)
    m = compute_oar_metrics(pred, gt, SPACING_ZYX, tolerance_mm=2.0)
    distance = k * SPACING_ZYX[axis]
    assert m.dsc == 0.0
    assert m.hd95_mm == pytest.approx(distance, abs=1e-9)
    assert m.surface_dice == (1.0 if inside_2mm else 0.0)
    assert (distance <= 2.0) == inside_2mm


def sphere(shape, centre_mm, radius_mm, spacing=SPACING_ZYX) -> np.ndarray:
    grid = np.indices(shape, dtype=float) * np.asarray(spacing, dtype=float)[:, None, None, None]
    return ((grid - np.asarray(centre_mm, dtype=float)[:, None, None, None]) ** 2).sum(axis=0) <= radius_mm**2


def test_shifted_spheres_dice_matches_lens_volume() -> None:
    spacing = (1.2, 0.8, 0.6)
    shape = (40, 56, 80)
    radius, d = 15.0, 6.0  # shift along x by 6 mm = 10 voxels
    centre = (24.0, 22.0, 22.0)
    gt = sphere(shape, centre, radius, spacing)
    pred = sphere(shape, (centre[0], centre[1], centre[2] + d), radius, spacing)
    lens = math.pi * (4 * radius + d) * (2 * radius - d) ** 2 / 12.0
    expected = lens / (4.0 / 3.0 * math.pi * radius**3)
    m = compute_oar_metrics(pred, gt, spacing)
    assert m.dsc == pytest.approx(expected, rel=0.02)


def test_concentric_spheres_hd95_is_radius_difference() -> None:
    spacing = (1.2, 0.8, 0.6)
    shape = (40, 56, 80)
    centre = (24.0, 22.0, 24.0)
    gt = sphere(shape, centre, 12.0, spacing)
    pred = sphere(shape, centre, 16.0, spacing)
    m = compute_oar_metrics(pred, gt, spacing)
    assert m.hd95_mm == pytest.approx(4.0, abs=max(spacing))
    assert m.dsc == pytest.approx(2 * 12.0**3 / (12.0**3 + 16.0**3), rel=0.03)
    # Surfaces 4 mm apart: nothing within 2 mm except discretisation strays; everything within 5.5 mm.
    assert m.surface_dice < 0.1
    assert compute_oar_metrics(pred, gt, spacing, tolerance_mm=5.5).surface_dice == 1.0


def test_identical_masks() -> None:
    gt = cube()
    m = compute_oar_metrics(gt, gt, SPACING_ZYX)
    assert (m.dsc, m.hd95_mm, m.surface_dice) == (1.0, 0.0, 1.0)


def test_empty_prediction_gives_zero_dice_and_infinite_hd95() -> None:
    gt = cube()
    m = compute_oar_metrics(np.zeros_like(gt), gt, SPACING_ZYX)
    assert m.dsc == 0.0
    assert m.hd95_mm == math.inf
    assert m.surface_dice == 0.0
    assert m.pred_voxels == 0 and m.gt_voxels == N**3


def test_empty_ground_truth_is_refused() -> None:
    with pytest.raises(ValueError, match="ground-truth mask is empty"):
        compute_oar_metrics(cube(), np.zeros((24, 30, 34), bool), SPACING_ZYX)


@pytest.mark.parametrize(
    ("shape_b", "spacing"), [((24, 30, 35), SPACING_ZYX), ((24, 30, 34), (1.0, 0.0, 1.0)), ((24, 30, 34), (1.0, 1.0))]
)
def test_bad_shapes_or_spacing_are_refused(shape_b, spacing) -> None:
    with pytest.raises(ValueError):
        compute_oar_metrics(cube(), cube(shape=shape_b), spacing)


def random_blob(seed: int, shape=(22, 40, 44), touch_border: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1.5, 3.0, 3.5))
    mask = field > np.quantile(field, 0.85)
    if touch_border:
        mask[0, 10:20, 10:20] = True
    return ndimage.binary_opening(mask)


def blob_pairs():
    return [
        (random_blob(1), random_blob(1) | random_blob(2)),
        (random_blob(3, touch_border=True), random_blob(4)),
        (np.roll(random_blob(5), 2, axis=2), random_blob(5)),
    ]


@pytest.mark.parametrize("pair", range(3))
def test_cross_check_with_grand_challenge_metrics(pair: int) -> None:
    """grand-challenge-metrics (the renamed evalutils 0.6.0, the platform's library) on the same masks.

    Its percentile HD takes the element at index int((n - 1) * 0.95) of each sorted directed distance set;
    this implementation interpolates linearly (numpy/MONAI). With "lower" they must agree exactly; the
    reported HD95 lies between the "lower" and "higher" values.
    """
    gcm = pytest.importorskip("grand_challenge_metrics.stats")
    pred, gt = blob_pairs()[pair]
    spacing = SPACING_ZYX
    ours = compute_oar_metrics(pred, gt, spacing)
    sp, sg = surface(pred), surface(gt)
    d_pg = directed_surface_distances(sp, sg, spacing)
    d_gp = directed_surface_distances(sg, sp, spacing)
    lower = max(np.percentile(d_pg, 95, method="lower"), np.percentile(d_gp, 95, method="lower"))
    higher = max(np.percentile(d_pg, 95, method="higher"), np.percentile(d_gp, 95, method="higher"))
    theirs = gcm.percentile_hausdorff_distance(pred, gt, percentile=0.95, voxelspacing=spacing, connectivity=1)
    assert float(theirs) == pytest.approx(lower, abs=1e-9)
    assert lower - 1e-9 <= ours.hd95_mm <= higher + 1e-9
    assert float(gcm.hausdorff_distance(pred, gt, voxelspacing=spacing)) == pytest.approx(
        max(d_pg.max(), d_gp.max()), abs=1e-9
    )
    cm = gcm.calculate_confusion_matrix(gt.astype(int), pred.astype(int), [0, 1])
    assert float(gcm.dice_from_confusion_matrix(cm)[1]) == pytest.approx(ours.dsc, abs=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("pair", range(3))
def test_cross_check_with_monai(pair: int) -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, gt = blob_pairs()[pair]
    spacing = SPACING_ZYX
    ours = compute_oar_metrics(pred, gt, spacing, tolerance_mm=2.0)

    def t(a: np.ndarray):
        return torch.from_numpy(a.astype(np.float32))[None, None]

    hd = monai_metrics.compute_hausdorff_distance(t(pred), t(gt), include_background=True, percentile=95,
                                                  spacing=list(spacing))
    nsd = monai_metrics.compute_surface_dice(t(pred), t(gt), class_thresholds=[2.0], include_background=True,
                                             spacing=list(spacing))
    dsc = monai_metrics.compute_dice(t(pred), t(gt), include_background=True)
    assert float(hd) == pytest.approx(ours.hd95_mm, abs=1e-4)
    assert float(nsd) == pytest.approx(ours.surface_dice, abs=1e-6)
    assert float(dsc) == pytest.approx(ours.dsc, abs=1e-6)


def test_crop_gives_the_same_result_as_the_full_array() -> None:
    pred, gt = random_blob(7, touch_border=True), random_blob(8)
    full = compute_oar_metrics(pred, gt, SPACING_ZYX)
    crop = union_crop([ndimage.find_objects(pred.astype(np.uint8))[0], ndimage.find_objects(gt.astype(np.uint8))[0]],
                      gt.shape)
    assert compute_oar_metrics(pred[crop], gt[crop], SPACING_ZYX) == full


def test_dice_helper() -> None:
    a = cube()
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, cube(shift=(0, 0, 5))) == pytest.approx(0.5)

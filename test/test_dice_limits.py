"""training.dice_limits: the outline / z-extent split of a prediction's error and the one-voxel-shift Dice."""

from __future__ import annotations

import numpy as np
import pytest

from training.dice_limits import ExtentSplit, shifted_dice, split_by_extent, summarise


def _tube(shape: tuple[int, int, int], z0: int, z1: int, y: slice, x: slice) -> np.ndarray:
    """A box mask on slices z0..z1-1 (numpy z, y, x)."""
    m = np.zeros(shape, bool)
    m[z0:z1, y, x] = True
    return m


def test_a_perfect_outline_on_fewer_slices_loses_only_extent():
    ref = _tube((20, 10, 10), 2, 12, slice(3, 6), slice(3, 6))
    pred = _tube((20, 10, 10), 4, 12, slice(3, 6), slice(3, 6))  # stops 2 slices early, same outline elsewhere
    s = split_by_extent(pred, ref, slice_mm=2.5)
    assert s.dice_shared_slices == 1.0
    assert s.dice == pytest.approx(2 * 8 / (10 + 8))
    assert s.missing_mm == 5.0 and s.extra_mm == 0.0
    assert s.extent_error_fraction == 1.0


def test_a_wrong_outline_on_the_right_slices_loses_no_extent():
    ref = _tube((20, 10, 10), 2, 12, slice(3, 6), slice(3, 6))
    pred = _tube((20, 10, 10), 2, 12, slice(3, 6), slice(4, 7))  # shifted by one voxel in x on every slice
    s = split_by_extent(pred, ref, slice_mm=2.5)
    assert s.extent_error_fraction == 0.0 and s.missing_mm == 0.0 and s.extra_mm == 0.0
    assert s.dice == s.dice_shared_slices == pytest.approx(2 / 3)


def test_extra_slices_count_as_extent_error():
    ref = _tube((20, 10, 10), 5, 10, slice(0, 2), slice(0, 2))
    pred = _tube((20, 10, 10), 5, 13, slice(0, 2), slice(0, 2))
    pred[5, 0, 0] = False  # one outline error on a shared slice
    s = split_by_extent(pred, ref, slice_mm=3.0)
    assert s.extra_mm == 9.0
    assert s.extent_error_fraction == pytest.approx(12 / 13)  # 3 slices x 4 voxels against 1 voxel


def test_an_empty_prediction_scores_zero_everywhere():
    ref = _tube((8, 8, 8), 1, 4, slice(1, 3), slice(1, 3))
    s = split_by_extent(np.zeros_like(ref), ref, slice_mm=1.0)
    assert s.dice == 0.0 and s.dice_shared_slices == 0.0 and s.missing_mm == 3.0 and s.extent_error_fraction == 1.0


def test_bad_inputs_are_refused():
    ref = _tube((8, 8, 8), 1, 4, slice(1, 3), slice(1, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        split_by_extent(ref[:-1], ref, 1.0)
    with pytest.raises(ValueError, match="empty"):
        split_by_extent(ref, np.zeros_like(ref), 1.0)
    with pytest.raises(ValueError, match="empty"):
        shifted_dice(np.zeros_like(ref), 0)


def test_shifted_dice_of_a_box():
    box = _tube((10, 10, 10), 2, 6, slice(2, 5), slice(2, 4))  # 4 slices x 3 rows x 2 columns
    assert shifted_dice(box, 0) == pytest.approx(2 * 3 / 8)  # 3 of 4 slices overlap
    assert shifted_dice(box, 2) == pytest.approx(0.5)  # 1 of 2 columns
    assert shifted_dice(box, 1, voxels=3) == 0.0
    edge = _tube((10, 10, 10), 8, 10, slice(0, 2), slice(0, 2))  # what moves off the grid is lost, no wrap-around
    assert shifted_dice(edge, 0) == pytest.approx(2 * 4 / (8 + 4))


def test_summarise_means_every_field():
    a = ExtentSplit(0.5, 0.6, 10.0, 0.0, 0.2)
    b = ExtentSplit(0.7, 0.8, 0.0, 5.0, 0.4)
    s = summarise([a, b])
    assert s == pytest.approx({"cases": 2, "dice": 0.6, "dice_shared_slices": 0.7, "missing_mm": 5.0,
                               "extra_mm": 2.5, "extent_error_fraction": 0.3})
    assert summarise([]) == {"cases": 0}

"""Tile placement, Gaussian weights and padding of the sliding window."""

import numpy as np
import pytest
import torch

from model.sliding_window import (
    compute_steps,
    gaussian_importance_map,
    mirror_combinations,
    pad_to_patch,
    sliding_window_logits,
    tile_slicers,
)


def test_steps_first_at_zero_last_flush_and_at_most_half_a_patch_apart():
    assert compute_steps([110], [64], 0.5) == [[0, 23, 46]]
    assert compute_steps([64, 65], [64, 64], 0.5) == [[0], [0, 1]]
    for size in range(64, 300, 7):
        steps = compute_steps([size], [64], 0.5)[0]
        assert steps[0] == 0 and steps[-1] == size - 64
        assert max(np.diff(steps), default=0) <= 32


def test_steps_reject_a_bad_step():
    with pytest.raises(ValueError):
        compute_steps([100], [64], 0)


def test_gaussian_peaks_at_the_centre_and_has_no_zeros():
    g = gaussian_importance_map((9, 16, 16)).float()
    assert g.dtype == torch.float32 and g.min() > 0
    assert torch.isclose(g.max(), torch.tensor(10.0), atol=0.01)
    assert g[4, 8, 8] == g.max()


def test_padding_is_symmetric_and_reversible():
    data = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, unpad = pad_to_patch(data, (4, 8, 6))
    assert padded.shape == (2, 4, 8, 7)
    assert torch.equal(padded[unpad], data)
    assert padded[:, -1].abs().sum() == 0  # an odd pad puts the extra slice above, as nnU-Net does
    assert padded[:, :, :1].abs().sum() == 0 and padded[:, :, -1:].abs().sum() == 0  # 3 rows: 1 below, 2 above


def test_2d_patch_tiles_every_slice():
    slicers = tile_slicers((3, 40, 40), (32, 32), 0.5)
    assert len(slicers) == 3 * 2 * 2
    assert {s[1] for s in slicers} == {0, 1, 2}


def test_mirror_combinations_cover_every_non_empty_subset():
    assert len(mirror_combinations((0, 1, 2))) == 7
    assert mirror_combinations((1,)) == [(3,)]


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x * 1.0


def test_sliding_window_reproduces_a_pointwise_network_exactly():
    """With a voxel-wise network, Gaussian-weighted overlap averaging must give back the input (to fp16).

    Image corners, covered only by a tile corner whose fp16 Gaussian weight is subnormal, are imprecise by
    design (nnU-Net's fp16 accumulation); the interior must be exact to fp16 precision."""
    torch.manual_seed(0)
    data = torch.randn(2, 20, 37, 41)
    out = sliding_window_logits(_Identity(), data, (16, 16, 16), 2, mirror_axes=(0, 1, 2), step_fraction=0.5)
    assert out.shape == data.shape
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert torch.allclose(out[inner].float(), data[inner], atol=1e-2, rtol=1e-2)
    assert (out.float() - data).abs().mean() < 5e-3

"""Shared fixtures: real data from ../shared, small model folders, case folders written with SimpleITK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OPENKBP = SHARED / "data" / "openkbp_hn_ct" / "cases"
HEAD_MR = SHARED / "data" / "head_mr_t1"


def openkbp_ct_path(case: str = "pt_4") -> Path:
    """Path of a real OpenKBP CT (128^3, int16 HU); skips the test if ../shared is not there."""
    path = OPENKBP / case / "ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def real_ct() -> sitk.Image:
    """A real head-and-neck planning CT (OpenKBP pt_4, 128x128x128, ~3.9x3.9x2.5 mm)."""
    return sitk.ReadImage(str(openkbp_ct_path("pt_4")))


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-fold CT+T1 random-weight model on a coarse grid (6x8x8 mm), quick enough for end-to-end runs."""
    from devkit.make_test_model import make_test_model

    return make_test_model(tmp_path_factory.mktemp("model") / "model", folds=2, spacing_zyx=(6.0, 8.0, 8.0))


def write_image(array: np.ndarray, path: Path, like: sitk.Image | None = None,
                spacing: tuple[float, ...] | None = None) -> Path:
    """Write a numpy (z, y, x) array as an image file, copying geometry from ``like`` if given."""
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    if spacing is not None:
        image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Predictors use one CPU thread (a training job may share the machine); the setting is restored after.
    (Predictors never change torch's threads themselves: the command line sets them once.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_ct_and_t1(shape_zyx: tuple[int, int, int], seed: int = 0) -> list[np.ndarray]:
    """A random CT in HU and a T1 in [0, 1), numpy (z, y, x), on the same grid (model input channels)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-1000, 1000, shape_zyx).astype(np.float32), rng.random(shape_zyx, np.float32)]

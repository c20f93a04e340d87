"""Shared fixtures: real data (../shared, else the cases bundled in test/data), small model folders, case folders
written with SimpleITK; and the guard that fails a run in which real-data tests skipped although ../shared is
there (they must run wherever the data is)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from devkit.data import SHARED_SKIP_REASON, head_mr_dir, openkbp_case, openkbp_cases_dir, shared_present

REPO = Path(__file__).resolve().parents[1]
OPENKBP = openkbp_cases_dir()
"""OpenKBP ``cases`` folder: ../shared's (34 cases) if present, else test/data's (pt_4, pt_17, pt_201)."""
HEAD_MR = head_mr_dir()


def openkbp_ct_path(case: str = "pt_4") -> Path:
    """Path of a real OpenKBP CT (128^3, int16 HU), shared or bundled; skips the test if neither has it."""
    folder = openkbp_case(case)
    if folder is None:
        pytest.skip(f"{SHARED_SKIP_REASON}: OpenKBP case {case} is not bundled in test/data")
    return folder / "ct.nii.gz"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the README's ``-n auto --dist loadfile``) files are scheduled in collection order, and
    the workers share the cores: each gets its share of them for torch/OpenMP (inherited by the subprocesses it
    starts), so that two workers on two cores do not each spin two OpenMP threads (measured 2.7x slower than one
    thread beside a busy process: benchmarks/README.md)."""
    if hasattr(config.option, "loadscopereorder"):
        # the controller schedules files in OUR collection order (slow files first, see
        # pytest_collection_modifyitems), not xdist's default of the files with the most tests first
        config.option.loadscopereorder = False
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not os.environ.get("PYTEST_XDIST_WORKER") or workers < 2:
        return
    from model.cpu_threads import usable_cores

    share = str(max(1, usable_cores() // workers))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with slow tests run first (order inside a file kept): under ``--dist loadfile`` the long files then
    start on different workers at once and the quick ones fill the gaps, instead of two long files queueing on
    one worker at the end (CI of 2026-12-01: the two training smoke runs, ~13 min, ran last on one worker)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)


_SHARED_SKIPS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember the tests that skipped for want of shared data."""
    if report.skipped and SHARED_SKIP_REASON in str(report.longrepr):
        _SHARED_SKIPS.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ../shared present, a real-data test that skipped is a failure of the run (a broken data path)."""
    if _SHARED_SKIPS and shared_present():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED: {len(_SHARED_SKIPS)} real-data tests skipped although the shared data is "
                                f"present: {', '.join(_SHARED_SKIPS[:5])}", red=True)


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


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, one_thread: None):
    """``cli(*args, env=...)``: process.main in this process (test.run_inprocess), returning exit code + stderr."""
    from test.run_inprocess import run_main

    return lambda *args, env=None: run_main(capsys, caplog, *args, env=env)

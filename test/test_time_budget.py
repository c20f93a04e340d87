"""The time budget (model/budget.py): the plan it picks, and a predictor run that must degrade and still finish.

Timing-independent: costs are given, the clock is replaced where the controller reads it. Whether real runs finish
inside real budgets is measured by ``python -m benchmarks.time_budget`` (benchmarks/README.md).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from model import budget
from model.budget import BudgetController, Plan, degradation_ladder, describe_loss, plan_for_budget


def test_ladder_drops_mirror_axes_then_folds_then_widens_the_step():
    ladder = degradation_ladder(3, (2, 0, 1), 0.5)
    assert ladder[0] == Plan(3, (0, 1, 2), 0.5)
    assert [p.mirror_axes for p in ladder[:4]] == [(0, 1, 2), (1, 2), (2,), ()]
    assert [p.n_folds for p in ladder[3:6]] == [3, 2, 1]
    assert ladder[-2:] == [Plan(1, (), 0.75), Plan(1, (), 1.0)]
    assert all(p.tile_step == 0.5 for p in ladder[:-2])


def test_plan_counts_every_forward_pass():
    tiles = {0.5: 27, 0.75: 8, 1.0: 8}.__getitem__
    assert Plan(2, (0, 1, 2), 0.5).passes(tiles) == 2 * 27 * 8
    assert Plan(1, (), 1.0).passes(tiles) == 8


@pytest.mark.parametrize(
    ("seconds_left", "expected"),
    [
        (1000.0, Plan(2, (0, 1), 0.5)),  # everything fits
        (30.0, Plan(2, (1,), 0.5)),  # 2 folds x 10 tiles x 2 passes x 0.5 s = 20 s <= 0.85 x (30 - 4 - 1.5)
        (15.0, Plan(1, (), 0.5)),  # 5 s
        (1.0, Plan(1, (), 1.0)),  # nothing fits: the cheapest plan, never no result
    ],
)
def test_plan_for_budget_takes_the_best_plan_that_fits(seconds_left, expected):
    tiles = {0.5: 10, 0.75: 6, 1.0: 4}.__getitem__
    plan, cost = plan_for_budget(seconds_left, 0.5, tiles, Plan(2, (0, 1), 0.5), export_seconds=4.0)
    assert plan == expected
    assert cost == pytest.approx(plan.passes(tiles) * 0.5)


def test_describe_loss_names_what_was_given_up():
    lost = describe_loss(Plan(2, (0, 1), 0.5), Plan(1, (1,), 0.75))
    assert lost == ["folds 2 -> 1", "mirroring over axes (0,) (4 -> 2 passes per tile)", "tile step 0.5 -> 0.75"]
    assert describe_loss(Plan(2, (0, 1), 0.5), Plan(2, (0, 1), 0.5)) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_controller_stops_mirroring_when_running_late_and_refuses_a_fold_that_does_not_fit(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget.time, "monotonic", clock)
    controller = BudgetController(deadline=130.0, export_seconds=2.0, mirror_axes=(0, 1), seconds_per_pass=0.5)
    controller.start_fold(10)
    # 10 tiles x 4 passes x 0.5 s = 20 s needed, 30 - 2 - 1.5 = 26.5 s of room: mirroring kept
    assert controller.mirror_axes_for_tile() == (0, 1)
    controller.tile_done(2.0, 4)
    clock.now = 120.0  # 9 tiles x 4 x 0.5 s = 18 s needed, 6.5 s of room: mirroring stops, and stays off
    assert controller.mirror_axes_for_tile() == ()
    assert controller.mirror_axes_for_tile() == ()
    assert any("mirroring stopped" in g for g in controller.given_up)
    assert controller.fold_fits(2) and not controller.fold_fits(40)


def test_process_start_is_in_the_past_but_not_long_ago():
    import time

    start = budget.process_start_monotonic()
    assert start is not None
    assert start <= time.monotonic() < start + 3600  # this test process started less than an hour ago


def test_a_budget_too_small_for_anything_still_gives_a_full_result(small_model, caplog):
    """Nothing fits in 0.01 s: one fold, no mirroring, widest step, a warning, and a complete label map."""
    from model.device import select_device
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    model = load_model_folder(small_model)
    rng = np.random.default_rng(0)
    channels = [rng.integers(-1000, 1000, (12, 40, 36)).astype(np.float32), rng.random((12, 40, 36), np.float32)]
    predictor = Predictor(model, select_device("cpu"), PredictorOptions(progress=False, time_budget=0.01))
    case = predictor.preprocess(channels, (8.0, 8.0, 6.0))
    plan, controller = predictor.plan(case)
    assert plan == Plan(1, (), 1.0) and controller is not None
    with caplog.at_level(logging.WARNING, logger="model.predictor"):
        labels = predictor.predict(channels, (8.0, 8.0, 6.0))
    assert labels.shape == (12, 40, 36) and labels.dtype == np.uint8
    assert "time budget: gave up folds 2 -> 1" in caplog.text

    unbudgeted = Predictor(model, select_device("cpu"), PredictorOptions(progress=False))
    full, none = unbudgeted.plan(case)
    assert full == Plan(2, model.mirror_axes, 0.5) and none is None

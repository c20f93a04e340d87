"""model/budget.py: the degradation ladder, the plan it picks, the controller that steers a running sliding window,
and a predictor that must still give a full result when nothing fits.

Deterministic: per-pass costs and tile counts are made up, and wherever the budget code reads a clock
(``model.budget.time``, and ``model.sliding_window.time`` / ``model.predictor.time`` where a whole run is steered)
the module's ``time`` is replaced by a :class:`FakeClock`. No test depends on how fast this machine is.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from model import budget
from model.budget import (
    BudgetController,
    Plan,
    degradation_ladder,
    describe_loss,
    mirror_passes,
    plan_for_budget,
    process_start_monotonic,
    time_forward,
)
from model.sliding_window import sliding_window_logits, tile_slicers
from test.conftest import random_ct_and_t1

IMPORTED_AT = time.monotonic()
"""When this test module was imported: after the test process started, so an upper bound for its start."""


class FakeClock:
    """A settable stand-in for ``time.monotonic`` / ``time.perf_counter``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_time(clock: FakeClock) -> SimpleNamespace:
    """A replacement for a module's ``time`` whose clocks are ``clock`` (only that module sees it)."""
    return SimpleNamespace(monotonic=clock, perf_counter=clock)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock where model.budget reads the time."""
    fake = FakeClock()
    monkeypatch.setattr(budget, "time", fake_time(fake))
    return fake


def tiles_table(table: dict[float, int]) -> Callable[[float], int]:
    """A made-up tile count per step fraction."""
    return table.__getitem__


def seconds_left_for(available: float, export_seconds: float) -> float:
    """The ``seconds_left`` at which :func:`plan_for_budget` has ``available`` seconds for the sliding window."""
    return available / budget.SAFETY + export_seconds + budget.FIXED_RESERVE_S


# --- the degradation ladder -------------------------------------------------------------------------------------


def test_ladder_drops_mirror_axes_lowest_first_then_folds_then_widens_the_step() -> None:
    assert degradation_ladder(3, (2, 0, 1), 0.5) == [
        Plan(3, (0, 1, 2), 0.5),
        Plan(3, (1, 2), 0.5),
        Plan(3, (2,), 0.5),
        Plan(3, (), 0.5),
        Plan(2, (), 0.5),
        Plan(1, (), 0.5),
        Plan(1, (), 0.75),
        Plan(1, (), 1.0),
    ]


@pytest.mark.parametrize(
    ("n_folds", "mirror_axes", "tile_step"),
    [(5, (0, 1, 2), 0.5), (2, (1, 0), 0.5), (1, (1,), 0.5), (3, (), 0.5), (2, (0, 1, 2), 0.75), (1, (), 1.0)],
)
def test_ladder_starts_with_the_full_plan_and_ends_with_the_cheapest(
    n_folds: int, mirror_axes: tuple[int, ...], tile_step: float
) -> None:
    ladder = degradation_ladder(n_folds, mirror_axes, tile_step)
    assert ladder[0] == Plan(n_folds, tuple(sorted(mirror_axes)), tile_step)
    assert ladder[-1] == Plan(1, (), 1.0)
    assert len(set(ladder)) == len(ladder)
    # one step down at a time: every rung gives up exactly one thing against the one before
    for better, worse in zip(ladder, ladder[1:]):
        changes = [
            worse.n_folds == better.n_folds - 1,
            len(worse.mirror_axes) == len(better.mirror_axes) - 1,
            worse.tile_step > better.tile_step,
        ]
        assert sum(changes) == 1, (better, worse)
    expected_length = 1 + len(mirror_axes) + (n_folds - 1) + sum(s > tile_step for s in (0.75, 1.0))
    assert len(ladder) == expected_length


@pytest.mark.parametrize(("tile_step", "wider"), [(0.5, [0.75, 1.0]), (0.6, [0.75, 1.0]), (0.8, [1.0]), (1.0, [])])
def test_the_step_only_ever_widens(tile_step: float, wider: list[float]) -> None:
    ladder = degradation_ladder(2, (0,), tile_step)
    steps = [p.tile_step for p in ladder]
    assert steps == [tile_step] * (len(ladder) - len(wider)) + wider


def test_every_rung_of_a_real_tiling_costs_no_more_than_the_one_before() -> None:
    """With the real tile placement of a HaN-Seg-like grid, walking down the ladder never adds forward passes."""
    shape, patch = (96, 160, 160), (64, 96, 96)

    def tiles(step: float) -> int:
        return len(tile_slicers(shape, patch, step))

    costs = [p.passes(tiles) for p in degradation_ladder(5, (0, 1, 2), 0.5)]
    assert costs[0] == 5 * tiles(0.5) * 8
    assert all(later <= earlier for earlier, later in zip(costs, costs[1:])), costs
    assert costs[-1] == tiles(1.0) < costs[0]


# --- Plan.passes and describe_loss ------------------------------------------------------------------------------


@pytest.mark.parametrize(("axes", "passes"), [((), 1), ((2,), 2), ((0, 2), 4), ((0, 1, 2), 8)])
def test_mirroring_doubles_the_passes_per_axis(axes: tuple[int, ...], passes: int) -> None:
    assert mirror_passes(axes) == passes


def test_plan_passes_are_folds_times_tiles_at_its_step_times_mirror_passes() -> None:
    asked: list[float] = []

    def tiles(step: float) -> int:
        asked.append(step)
        return {0.5: 27, 0.75: 12, 1.0: 8}[step]

    assert Plan(3, (0, 1, 2), 0.5).passes(tiles) == 3 * 27 * 8
    assert Plan(2, (1,), 0.75).passes(tiles) == 2 * 12 * 2
    assert Plan(1, (), 1.0).passes(tiles) == 8
    assert asked == [0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("chosen", "lost"),
    [
        (Plan(3, (0, 1, 2), 0.5), []),
        (Plan(2, (0, 1, 2), 0.5), ["folds 3 -> 2"]),
        (Plan(3, (2,), 0.5), ["mirroring over axes (0, 1) (8 -> 2 passes per tile)"]),
        (Plan(3, (1, 2), 0.5), ["mirroring over axes (0,) (8 -> 4 passes per tile)"]),
        (Plan(3, (0, 1, 2), 1.0), ["tile step 0.5 -> 1"]),
        (
            Plan(1, (), 0.75),
            ["folds 3 -> 1", "mirroring over axes (0, 1, 2) (8 -> 1 passes per tile)", "tile step 0.5 -> 0.75"],
        ),
    ],
)
def test_describe_loss_names_everything_given_up_in_order(chosen: Plan, lost: list[str]) -> None:
    assert describe_loss(Plan(3, (0, 1, 2), 0.5), chosen) == lost


# --- plan_for_budget ---------------------------------------------------------------------------------------------

FULL = Plan(2, (0, 1), 0.5)
TILES = tiles_table({0.5: 10, 0.75: 6, 1.0: 4})
PER_PASS = 0.5
# costs down the ladder of FULL, in seconds: (2, (0, 1)) 40, (2, (1,)) 20, (2, ()) 10, (1, ()) 5,
# (1, (), 0.75) 3, (1, (), 1.0) 2


@pytest.mark.parametrize(
    ("available", "expected", "cost"),
    [
        (1000.0, Plan(2, (0, 1), 0.5), 40.0),
        (40.5, Plan(2, (0, 1), 0.5), 40.0),
        (39.0, Plan(2, (1,), 0.5), 20.0),
        (19.0, Plan(2, (), 0.5), 10.0),
        (9.0, Plan(1, (), 0.5), 5.0),
        (4.5, Plan(1, (), 0.75), 3.0),
        (2.5, Plan(1, (), 1.0), 2.0),
    ],
)
def test_plan_for_budget_takes_the_first_rung_that_fits(available: float, expected: Plan, cost: float) -> None:
    """``available`` is what is left for the sliding window after the export, the reserve and the safety margin."""
    plan, estimate = plan_for_budget(seconds_left_for(available, 3.0), PER_PASS, TILES, FULL, export_seconds=3.0)
    assert plan == expected
    assert estimate == pytest.approx(cost)


@pytest.mark.parametrize("seconds_left", [2.0, 0.0, -30.0])
def test_when_nothing_fits_the_cheapest_plan_still_runs(seconds_left: float) -> None:
    plan, estimate = plan_for_budget(seconds_left, PER_PASS, TILES, FULL, export_seconds=3.0)
    assert plan == Plan(1, (), 1.0)
    assert estimate == pytest.approx(2.0)  # its real cost, even though it does not fit


def test_a_plan_that_fills_the_available_time_exactly_is_taken() -> None:
    full = Plan(1, (), 0.5)
    tiles = tiles_table({0.5: 16, 0.75: 9, 1.0: 5})
    seconds_left = 20.0 + 2.0 + budget.FIXED_RESERVE_S  # 20 s of room before the safety margin
    per_pass = budget.SAFETY * 20.0 / 16  # 16 passes fill it exactly (a power of two: no rounding)
    assert plan_for_budget(seconds_left, per_pass, tiles, full, 2.0)[0] == full
    assert plan_for_budget(seconds_left, per_pass * 1.001, tiles, full, 2.0)[0] == Plan(1, (), 0.75)


def test_export_time_and_the_fixed_reserve_are_kept_out_of_the_sliding_window() -> None:
    """Without the export or the reserve the full plan (40 s) would fit: with them it does not."""
    seconds_left = 40.5 / budget.SAFETY + 10.0  # 40.5 s of sliding window if nothing else took time
    assert plan_for_budget(seconds_left + budget.FIXED_RESERVE_S, PER_PASS, TILES, FULL, 10.0)[0] == FULL
    assert plan_for_budget(seconds_left, PER_PASS, TILES, FULL, 10.0)[0] == Plan(2, (1,), 0.5)  # no reserve
    assert plan_for_budget(seconds_left + budget.FIXED_RESERVE_S, PER_PASS, TILES, FULL, 11.0)[0] == Plan(2, (1,), 0.5)


def test_the_safety_margin_leaves_part_of_the_time_unplanned() -> None:
    """A plan costing exactly the seconds left minus the reserves does not fit: some time is held back."""
    seconds_left = 40.0 + 3.0 + budget.FIXED_RESERVE_S
    assert plan_for_budget(seconds_left, PER_PASS, TILES, FULL, 3.0)[0] == Plan(2, (1,), 0.5)


# --- BudgetController ---------------------------------------------------------------------------------------------


def controller_with_room(clock: FakeClock, room: float, mirror_axes: tuple[int, ...] = (0, 1),
                         seconds_per_pass: float = 0.5, export_seconds: float = 2.0) -> BudgetController:
    """A controller whose deadline leaves ``room`` seconds for the sliding window at ``clock.now``."""
    deadline = clock.now + export_seconds + budget.FIXED_RESERVE_S + room
    return BudgetController(deadline, export_seconds, mirror_axes, seconds_per_pass)


def test_controller_reads_the_clock(clock: FakeClock) -> None:
    controller = BudgetController(deadline=clock.now + 30.0, export_seconds=0.0, mirror_axes=(),
                                  seconds_per_pass=1.0)
    assert controller.seconds_left() == 30.0
    clock.advance(45.0)
    assert controller.seconds_left() == -15.0


def test_mirroring_stops_when_the_projected_end_passes_the_deadline(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    controller = controller_with_room(clock, room=90.0)
    controller.start_fold(45)
    # 45 tiles x 4 passes x 0.5 s = 90 s: exactly the room left, mirroring kept
    assert controller.mirror_axes_for_tile() == (0, 1)
    assert controller.given_up == []
    clock.advance(0.5)  # no tile finished, half a second gone: 90 s needed, 89.5 s left
    with caplog.at_level(logging.WARNING, logger="model.budget"):
        assert controller.mirror_axes_for_tile() == ()
    assert controller.given_up == ["mirroring stopped for the last 45 tiles (running late)"]
    assert "time budget: mirroring stopped for the last 45 tiles" in caplog.text
    # it stays off for the rest of the fold even when time is plentiful again, and is logged once
    clock.advance(-1000.0)
    assert controller.mirror_axes_for_tile() == ()
    assert len(controller.given_up) == 1
    # a new fold starts with the plan's mirroring again
    controller.start_fold(45)
    assert controller.mirror_axes_for_tile() == (0, 1)


def test_mirroring_is_kept_while_the_remaining_tiles_fit(clock: FakeClock) -> None:
    controller = controller_with_room(clock, room=50.0, mirror_axes=(2,), seconds_per_pass=1.0)
    controller.start_fold(20)  # 20 tiles x 2 passes x 1 s = 40 s <= 50 s
    for _ in range(20):
        assert controller.mirror_axes_for_tile() == (2,)
        clock.advance(2.0)
        controller.tile_done(2.0, 2)
    assert controller.tiles_left == 0 and controller.given_up == []


def test_without_mirror_axes_there_is_nothing_to_stop(clock: FakeClock) -> None:
    controller = controller_with_room(clock, room=-100.0, mirror_axes=())
    controller.start_fold(10)
    assert controller.mirror_axes_for_tile() == ()
    assert controller.given_up == []


def test_tile_done_counts_down_and_keeps_a_running_mean_of_the_pass_cost(clock: FakeClock) -> None:
    controller = controller_with_room(clock, room=100.0, seconds_per_pass=1.0)
    controller.start_fold(2)
    controller.tile_done(4.0, 2)  # 2 s per pass
    assert controller.tiles_left == 1
    assert controller.seconds_per_pass == pytest.approx(0.7 * 1.0 + 0.3 * 2.0)
    controller.tile_done(3.0, 0)  # no pass count: taken as one pass
    controller.tile_done(3.0, 1)
    assert controller.tiles_left == 0  # never negative
    assert controller.seconds_per_pass == pytest.approx(0.7 * (0.7 * 1.3 + 0.3 * 3.0) + 0.3 * 3.0)


def test_a_slower_machine_than_planned_stops_mirroring_earlier(clock: FakeClock) -> None:
    """The running mean of measured tile times, not the plan's estimate, decides."""
    controller = controller_with_room(clock, room=50.0, mirror_axes=(0,), seconds_per_pass=1.0)
    controller.start_fold(20)  # planned: 20 tiles x 2 passes x 1 s = 40 s of 50
    assert controller.mirror_axes_for_tile() == (0,)
    clock.advance(6.0)
    # the tile took 3 s per pass: at the planned 1 s per pass the other 19 tiles (38 s) would still fit in the
    # 44 s left, at the running mean of 1.6 s they need 60.8 s
    controller.tile_done(6.0, 2)
    assert controller.mirror_axes_for_tile() == ()
    assert controller.given_up == ["mirroring stopped for the last 19 tiles (running late)"]


def test_fold_fits_only_with_room_to_spare(clock: FakeClock) -> None:
    controller = controller_with_room(clock, room=20.0, mirror_axes=(0, 1, 2), seconds_per_pass=1.0)
    assert controller.fold_fits(8)  # 8 s of 20: fits, and mirroring is not counted (8 x 8 passes would not)
    assert not controller.fold_fits(20)  # fills the room exactly: no margin left
    assert not controller.fold_fits(21)
    clock.advance(15.0)  # 5 s of room left
    assert not controller.fold_fits(8)
    assert controller.fold_fits(1)
    clock.advance(10.0)  # past the deadline: not even one tile
    assert not controller.fold_fits(1)


def test_fold_fits_uses_the_measured_pass_cost_and_the_export(clock: FakeClock) -> None:
    controller = controller_with_room(clock, room=20.0, seconds_per_pass=1.0, export_seconds=5.0)
    assert controller.fold_fits(8)
    controller.start_fold(1)
    controller.tile_done(40.0, 4)  # 10 s per pass measured: running mean 3.7 s
    assert not controller.fold_fits(8)
    late_export = controller_with_room(clock, room=20.0, seconds_per_pass=1.0, export_seconds=5.0)
    late_export.export_seconds = 20.0  # the export takes 15 s more than planned for: the room is gone
    assert not late_export.fold_fits(8)


class ClockTickingNetwork(torch.nn.Module):
    """A stand-in network whose every forward pass takes ``seconds`` on the fake clock; records batch sizes."""

    def __init__(self, clock: FakeClock, seconds: float, num_classes: int = 2) -> None:
        super().__init__()
        self.clock = clock
        self.seconds = seconds
        self.num_classes = num_classes
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.advance(self.seconds)
        self.batches.append(x.shape[0])
        return x[:, :1].expand(-1, self.num_classes, *x.shape[2:]).clone()


def test_sliding_window_drops_mirroring_for_the_remaining_tiles_when_running_late(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 tiles planned at 1 s per pass with one mirror axis (16 s, exactly the room); each pass really takes 1.5 s.

    After the first tile the running mean is 1.15 s per pass: 7 x 2 x 1.15 = 16.1 s needed, 13 s left, so the
    last 7 tiles run without mirroring: 2 + 7 forward passes instead of 16.
    """
    import model.sliding_window as sliding_window

    monkeypatch.setattr(sliding_window, "time", fake_time(clock))
    network = ClockTickingNetwork(clock, seconds=1.5)
    controller = controller_with_room(clock, room=16.0, mirror_axes=(0,), seconds_per_pass=1.0, export_seconds=0.0)
    data = torch.rand(1, 8, 8, 8)
    logits = sliding_window_logits(network, data, (4, 4, 4), 2, mirror_axes=(0,), step_fraction=1.0,
                                   controller=controller)
    assert logits.shape == (2, 8, 8, 8)
    assert len(network.batches) == 2 + 7
    assert controller.given_up == ["mirroring stopped for the last 7 tiles (running late)"]
    assert controller.tiles_left == 0
    # the stand-in network is mirror-invariant: dropping mirroring half-way must not change the accumulated logits
    reference = sliding_window_logits(ClockTickingNetwork(FakeClock(), 1.0), data, (4, 4, 4), 2, step_fraction=1.0)
    assert torch.equal(logits, reference)


def test_sliding_window_keeps_mirroring_when_on_time(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.sliding_window as sliding_window

    monkeypatch.setattr(sliding_window, "time", fake_time(clock))
    network = ClockTickingNetwork(clock, seconds=1.0)
    controller = controller_with_room(clock, room=18.0, mirror_axes=(0,), seconds_per_pass=1.0, export_seconds=0.0)
    sliding_window_logits(network, torch.rand(1, 8, 8, 8), (4, 4, 4), 2, mirror_axes=(0,), step_fraction=1.0,
                          controller=controller)
    assert len(network.batches) == 8 * 2
    assert controller.given_up == []
    assert controller.seconds_per_pass == pytest.approx(1.0)


# --- process_start_monotonic and time_forward ---------------------------------------------------------------------


def test_process_start_is_before_now_and_recent() -> None:
    start = process_start_monotonic()
    assert start is not None
    assert start <= IMPORTED_AT <= time.monotonic()
    assert IMPORTED_AT - start < 600  # a pytest run does not take 10 minutes to import its test modules


def fake_proc(monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> None:
    """Serve ``files`` (path -> text) to model.budget's ``open``; any other path does not exist."""

    def fake_open(path: str, *args: Any, **kwargs: Any) -> Any:
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(budget, "open", fake_open, raising=False)


def stat_line(start_ticks: int, comm: str = "python") -> str:
    """A /proc/self/stat line with the process start (field 22) at ``start_ticks``."""
    fields_after_comm = ["S"] + [str(i) for i in range(4, 22)] + [str(start_ticks)] + ["0"] * 30
    return f"4242 ({comm}) " + " ".join(fields_after_comm) + "\n"


def test_process_start_is_computed_from_proc_start_ticks_and_uptime(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    # started 5 s after boot, up 65 s: started 60 s ago; a ") " in the command name must not shift the fields
    fake_proc(monkeypatch, {"/proc/self/stat": stat_line(5 * ticks, comm="odd) name (x"),
                            "/proc/uptime": "65.00 120.00\n"})
    assert process_start_monotonic() == pytest.approx(clock.now - 60.0)


def test_process_start_is_never_in_the_future(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    fake_proc(monkeypatch, {"/proc/self/stat": stat_line(100 * ticks), "/proc/uptime": "50.0 10.0\n"})
    assert process_start_monotonic() == clock.now


@pytest.mark.parametrize(
    "files",
    [
        {},  # not Linux
        {"/proc/self/stat": "4242 (python) S 1 2 3\n", "/proc/uptime": "65.0 1.0\n"},  # too few fields
        {"/proc/self/stat": stat_line(500), "/proc/uptime": "soon\n"},  # garbage
    ],
)
def test_process_start_is_unknown_without_a_readable_proc(monkeypatch: pytest.MonkeyPatch,
                                                          files: dict[str, str]) -> None:
    fake_proc(monkeypatch, files)
    assert process_start_monotonic() is None


def clock_advancing_pass(clock: FakeClock, durations: Iterator[float], calls: list[float]) -> Callable[[], None]:
    """A forward pass that takes the next of ``durations`` seconds on the fake clock."""

    def run_pass() -> None:
        seconds = next(durations)
        calls.append(seconds)
        clock.advance(seconds)

    return run_pass


@pytest.mark.parametrize("repeats", [2, 4])
def test_time_forward_leaves_out_the_slow_first_pass(clock: FakeClock, repeats: int) -> None:
    """The first pass (kernel set-up: 100 s here) is a warm-up; the result is the steady-state 3 s per pass."""
    calls: list[float] = []
    durations = itertools.chain([100.0], itertools.repeat(3.0))
    assert time_forward(clock_advancing_pass(clock, durations, calls), repeats=repeats) == pytest.approx(3.0)
    assert calls[0] == 100.0
    assert len(calls) > repeats  # at least one warm-up, then ``repeats`` timed passes


def test_time_forward_reports_a_typical_timed_pass(clock: FakeClock) -> None:
    calls: list[float] = []
    durations = itertools.chain([100.0], itertools.cycle([2.0, 4.0]))
    seconds = time_forward(clock_advancing_pass(clock, durations, calls))
    assert 2.0 <= seconds <= 4.0


# --- the predictor under a budget -----------------------------------------------------------------------------------

SHAPE_ZYX = (20, 36, 32)
SPACING_XYZ = (8.0, 8.0, 6.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 random-weight folds, 16^3 patch, 4/8 features, on the input's own grid (no resampling), 3 mirror axes."""
    from devkit.make_test_model import make_test_model

    return make_test_model(tmp_path_factory.mktemp("budget") / "model", folds=2, spacing_zyx=(6.0, 8.0, 8.0),
                           patch_size=(16, 16, 16), features=(4, 8), mirror_axes=(0, 1, 2))


def spy_on_sliding_window(monkeypatch: pytest.MonkeyPatch,
                          after_call: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Record the keyword arguments of every sliding-window run of the predictor (one per fold)."""
    import model.predictor as predictor_module

    calls: list[dict[str, Any]] = []
    real = predictor_module.sliding_window_logits

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        result = real(*args, **kwargs)
        if after_call is not None:
            after_call()
        return result

    monkeypatch.setattr(predictor_module, "sliding_window_logits", spy)
    return calls


def budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("time budget: gave up")]


@pytest.mark.usefixtures("one_thread")
def test_a_budget_too_small_for_anything_still_gives_a_full_result(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    calls = spy_on_sliding_window(monkeypatch)
    predictor = Predictor(load_model_folder(tiny_model), torch.device("cpu"),
                          PredictorOptions(progress=False, time_budget=0.001))
    with caplog.at_level(logging.INFO, logger="model.predictor"):
        labels = predictor.predict(random_ct_and_t1(SHAPE_ZYX), SPACING_XYZ)
    assert labels.shape == SHAPE_ZYX and labels.dtype == np.uint8
    assert labels.max() <= 30 and len(np.unique(labels)) > 1
    assert len(calls) == 1  # one fold
    assert calls[0]["mirror_axes"] == () and calls[0]["step_fraction"] == 1.0
    assert calls[0]["controller"] is not None
    warnings = budget_warnings(caplog)
    assert len(warnings) == 1
    assert "folds 2 -> 1" in warnings[0] and "mirroring over axes (0, 1, 2)" in warnings[0]
    assert "tile step 0.5 -> 1" in warnings[0]


@pytest.mark.usefixtures("one_thread")
def test_without_a_budget_the_full_plan_runs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    calls = spy_on_sliding_window(monkeypatch)
    model = load_model_folder(tiny_model)
    predictor = Predictor(model, torch.device("cpu"), PredictorOptions(progress=False))
    case = predictor.preprocess(random_ct_and_t1(SHAPE_ZYX), SPACING_XYZ)
    plan, controller = predictor.plan(case)
    assert plan == Plan(2, (0, 1, 2), 0.5) and controller is None
    with caplog.at_level(logging.INFO, logger="model.predictor"):
        labels = predictor.predict_preprocessed(case)
    assert labels.shape == SHAPE_ZYX
    assert [(c["mirror_axes"], c["step_fraction"], c["controller"]) for c in calls] == [((0, 1, 2), 0.5, None)] * 2
    assert "time budget" not in caplog.text


@pytest.mark.usefixtures("one_thread")
def test_a_middling_budget_drops_only_what_it_must(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At a (made-up) 1 s per forward pass, 24 tiles at step 0.5: the full plan needs 384 s, 2 folds mirrored over
    one axis 96 s. 170 s of budget leave 0.85 x 168.5 = 143 s: mirroring over z and y goes, both folds stay."""
    import model.predictor as predictor_module
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    monkeypatch.setattr(predictor_module.Predictor, "_time_one_pass", lambda self, case: 1.0)
    monkeypatch.setattr(predictor_module, "estimate_export_seconds", lambda case, num_classes: 0.0)
    calls = spy_on_sliding_window(monkeypatch)
    predictor = Predictor(load_model_folder(tiny_model), torch.device("cpu"),
                          PredictorOptions(progress=False, time_budget=170.0))
    case = predictor.preprocess(random_ct_and_t1(SHAPE_ZYX), SPACING_XYZ)
    assert predictor._n_tiles(case, 0.5) == 24
    with caplog.at_level(logging.INFO, logger="model.predictor"):
        labels = predictor.predict_preprocessed(case)
    assert labels.shape == SHAPE_ZYX
    assert [(c["mirror_axes"], c["step_fraction"]) for c in calls] == [((2,), 0.5)] * 2
    assert budget_warnings(caplog) == ["time budget: gave up mirroring over axes (0, 1) (8 -> 2 passes per tile)"]


@pytest.mark.usefixtures("one_thread")
def test_a_fold_that_no_longer_fits_is_skipped_but_the_first_always_completes(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The plan fits (100 s budget, fake clock), but the first fold takes 99 s: the second is given up."""
    import model.predictor as predictor_module
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    fake = FakeClock()
    monkeypatch.setattr(budget, "time", SimpleNamespace(monotonic=fake, perf_counter=time.perf_counter))
    monkeypatch.setattr(predictor_module, "time", SimpleNamespace(monotonic=fake))
    monkeypatch.setattr(predictor_module.Predictor, "_time_one_pass", lambda self, case: 0.001)
    monkeypatch.setattr(predictor_module, "estimate_export_seconds", lambda case, num_classes: 0.0)
    calls = spy_on_sliding_window(monkeypatch, after_call=lambda: fake.advance(99.0))
    predictor = Predictor(load_model_folder(tiny_model), torch.device("cpu"),
                          PredictorOptions(progress=False, time_budget=100.0))
    with caplog.at_level(logging.INFO, logger="model.predictor"):
        labels = predictor.predict(random_ct_and_t1(SHAPE_ZYX), SPACING_XYZ)
    assert labels.shape == SHAPE_ZYX
    assert len(calls) == 1 and calls[0]["mirror_axes"] == (0, 1, 2)  # the plan was the full one
    assert budget_warnings(caplog) == ["time budget: gave up folds 2 -> 1 (running late)"]

"""A wall-time budget for one case: choose folds, mirroring and tile step so the run finishes in time.

Plan first, then steer:

1. Before the sliding window, the predictor times a few forward passes of one tile (:func:`time_forward`), so the
   plan uses this machine's speed under its current load, and estimates the export from the output size.
2. :func:`plan_for_budget` walks a degradation ladder from the full ensemble down and takes the first plan whose
   estimated cost fits the seconds left: drop mirror axes (z first, then y; the left-right x flip last), then
   folds, then widen the tile step (0.5 -> 0.75 -> 1.0). Everything given up is logged.
3. :class:`BudgetController` watches the real per-tile times while the sliding window runs: if the projected end
   passes the deadline it stops mirroring for the remaining tiles, and it starts another fold only if that fold
   fits (see :meth:`BudgetController.fold_fits`). A run always completes at least one fold.

Times are wall-clock seconds (``time.monotonic``). Axis numbers are spatial axes of the model's (transposed)
arrays, as in the plans' mirror axes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TILE_STEPS = (0.75, 1.0)
"""Wider tile steps the ladder may take after the default one, in this order."""
SAFETY = 0.85
"""Fraction of the remaining seconds a plan may fill (the rest absorbs load changes and estimate errors)."""
FIXED_RESERVE_S = 1.5
"""Seconds always kept for process exit and logging after the export (writing the output is part of the export
estimate). Was 5 s: on a 14 s OpenKBP run a budget of 1.25x the unbudgeted time still dropped a fold (measured)."""


def mirror_passes(mirror_axes: Sequence[int]) -> int:
    """Forward passes per tile with mirroring over ``mirror_axes``: the plain pass + every non-empty subset."""
    return 2 ** len(mirror_axes)


@dataclass(frozen=True)
class Plan:
    """What one case runs: how many folds (the first ``n_folds`` of the model), which mirror axes, which step."""

    n_folds: int
    mirror_axes: tuple[int, ...]
    tile_step: float

    def passes(self, tiles_for_step: Callable[[float], int]) -> int:
        """Forward passes of the whole plan."""
        return self.n_folds * tiles_for_step(self.tile_step) * mirror_passes(self.mirror_axes)


def degradation_ladder(n_folds: int, mirror_axes: Sequence[int], tile_step: float) -> list[Plan]:
    """Plans from the full one down to 1 fold, no mirroring, step 1.0, in order of preference.

    Mirror axes are dropped lowest axis first (z before y before x), then folds one by one, then the step widens.
    """
    axes = tuple(sorted(mirror_axes))
    ladder = [Plan(n_folds, axes[k:], tile_step) for k in range(len(axes) + 1)]
    ladder += [Plan(f, (), tile_step) for f in range(n_folds - 1, 0, -1)]
    ladder += [Plan(1, (), s) for s in TILE_STEPS if s > tile_step]
    return ladder


def describe_loss(full: Plan, chosen: Plan) -> list[str]:
    """Human-readable list of what ``chosen`` gives up against ``full``."""
    lost = []
    if chosen.n_folds < full.n_folds:
        lost.append(f"folds {full.n_folds} -> {chosen.n_folds}")
    dropped = [a for a in full.mirror_axes if a not in chosen.mirror_axes]
    if dropped:
        lost.append(f"mirroring over axes {tuple(dropped)} ({mirror_passes(full.mirror_axes)} -> "
                    f"{mirror_passes(chosen.mirror_axes)} passes per tile)")
    if chosen.tile_step > full.tile_step:
        lost.append(f"tile step {full.tile_step:g} -> {chosen.tile_step:g}")
    return lost


def plan_for_budget(
    seconds_left: float,
    seconds_per_pass: float,
    tiles_for_step: Callable[[float], int],
    full: Plan,
    export_seconds: float,
) -> tuple[Plan, float]:
    """The best plan of the ladder whose estimated cost fits ``SAFETY * (seconds_left - reserves)``.

    Args:
        seconds_left: wall seconds until the deadline.
        seconds_per_pass: measured seconds of one forward pass of one tile (incl. accumulation).
        tiles_for_step: number of tiles for a given step fraction.
        full: the plan without a budget (all folds, all mirror axes, the requested step).
        export_seconds: estimated seconds of the export after the sliding window.

    Returns:
        the plan and its estimated seconds. If nothing fits, the cheapest plan (a run always gives a result).
    """
    available = SAFETY * (seconds_left - export_seconds - FIXED_RESERVE_S)
    ladder = degradation_ladder(full.n_folds, full.mirror_axes, full.tile_step)
    for plan in ladder:
        cost = plan.passes(tiles_for_step) * seconds_per_pass
        if cost <= available:
            return plan, cost
    cheapest = ladder[-1]
    return cheapest, cheapest.passes(tiles_for_step) * seconds_per_pass


def process_start_monotonic() -> float | None:
    """``time.monotonic()`` value at which this process started (Linux), or None if unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started_ago = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(started_ago, 0.0)
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class BudgetController:
    """Steers a running sliding window towards ``deadline`` (a ``time.monotonic()`` value).

    The predictor calls :meth:`mirror_axes_for_tile` before each tile and :meth:`tile_done` after it, and
    :meth:`fold_fits` before every fold after the first.
    """

    deadline: float
    export_seconds: float
    mirror_axes: tuple[int, ...]
    seconds_per_pass: float
    tiles_left: int = 0
    given_up: list[str] = field(default_factory=list)
    _mirroring_stopped: bool = False

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def _room(self) -> float:
        return self.seconds_left() - self.export_seconds - FIXED_RESERVE_S

    def mirror_axes_for_tile(self) -> tuple[int, ...]:
        """Mirror axes for the next tile: the plan's, or none once the remaining tiles would not fit."""
        if self.mirror_axes and not self._mirroring_stopped:
            needed = self.tiles_left * mirror_passes(self.mirror_axes) * self.seconds_per_pass
            if needed > self._room():
                self._mirroring_stopped = True
                msg = f"mirroring stopped for the last {self.tiles_left} tiles (running late)"
                self.given_up.append(msg)
                log.warning("time budget: %s", msg)
        return () if self._mirroring_stopped else self.mirror_axes

    def tile_done(self, seconds: float, passes: int) -> None:
        """Record one finished tile: ``seconds`` for ``passes`` forward passes (running mean of the pass cost)."""
        self.tiles_left = max(self.tiles_left - 1, 0)
        per_pass = seconds / max(passes, 1)
        self.seconds_per_pass = 0.7 * self.seconds_per_pass + 0.3 * per_pass

    def start_fold(self, n_tiles: int) -> None:
        self.tiles_left = n_tiles
        self._mirroring_stopped = False

    def fold_fits(self, n_tiles: int) -> bool:
        """Whether one more fold of ``n_tiles`` tiles (without mirroring) fits before the deadline."""
        return n_tiles * self.seconds_per_pass <= SAFETY * self._room()


def time_forward(run_pass: Callable[[], None], repeats: int = 2) -> float:
    """Seconds of one forward pass: one warm-up call, then the mean of ``repeats`` timed calls."""
    run_pass()
    start = time.perf_counter()
    for _ in range(repeats):
        run_pass()
    return (time.perf_counter() - start) / repeats

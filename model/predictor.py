"""The ensemble predictor: preprocessed case in, HaN-Seg label array out.

For each fold: load its weights, run the Gaussian-weighted sliding window (with mirroring TTA over the model's
allowed axes); fold logits are summed in fp16 and divided by the fold count (a mean of logits, as nnU-Net does).
Then export: back to the CT grid, argmax, model labels mapped to HaN-Seg values by name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from contract.errors import ModelFolderError
from contract.labels import lateral_splits, model_to_hanseg_lookup
from model.budget import BudgetController, Plan, describe_loss, plan_for_budget, time_forward
from model.cpu_heap import freed_memory_kept
from model.device import autocast_for
from model.export import labels_to_image_array, logits_to_labels
from model.fast import fast_settings
from model.model_folder import Fold, ModelFolder
from model.network import build_network, load_fold_weights
from model.placement import (
    Placement,
    choose_placement,
    cpu_placement,
    empty_device_cache,
    estimate_need,
    host_tensor,
    next_placement,
    probe_activation_bytes,
    to_results,
    weight_bytes,
)
from model.preprocess import PreprocessedCase, preprocess_case
from model.sliding_window import FoldAccumulator, pad_to_patch, padded_shape, sliding_window_logits, tile_slicers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorOptions:
    """How to run inference.

    Attributes:
        use_mirroring: mirroring test-time augmentation over the model's allowed axes.
        tile_step: sliding-window step as a fraction of the patch size, in (0, 1].
        progress: show a progress bar over tiles x folds.
        fast: fast CPU mode (:mod:`model.fast`: bf16 autocast where the CPU has it, mirroring over one axis).
        time_budget: wall seconds for a whole case; folds / mirroring / tile step are reduced to fit
            (:mod:`model.budget`). The deadline is passed per case (:meth:`Predictor.predict_preprocessed`);
            without one it is counted from the start of the prediction. None: no budget.
    """

    use_mirroring: bool = True
    tile_step: float = 0.5
    progress: bool = True
    fast: bool = False
    time_budget: float | None = None


@dataclass
class PredictionReport:
    """What one prediction ran (for the run record): fold names, mirror axes, tile step, what the budget gave up."""

    folds: list[str] = field(default_factory=list)
    mirror_axes: list[int] = field(default_factory=list)
    tile_step: float = 0.0
    given_up: list[str] = field(default_factory=list)


class Predictor:
    """Runs one model folder's folds on cases. Build once, call :meth:`predict` per case.

    Construction changes no global state (torch threads are the caller's: ``process.main`` sets them once), and
    nothing is carried from one case to the next but the network itself.
    """

    def __init__(self, model: ModelFolder, device: torch.device, options: PredictorOptions = PredictorOptions()):
        self.model = model
        self.device = device
        self.options = options
        try:
            self.lookup = model_to_hanseg_lookup(model.labels, model.lr_split)
            self.lateral_splits = lateral_splits(model.labels, model.lr_split)
            """HaN-Seg (left, right) values of merged labels, held by the left value until the pipeline splits them
            (``preprocessing.laterality``)."""
        except ValueError as err:
            raise ModelFolderError(model.path / "dataset.json", str(err)) from None
        self.network = build_network(model).to(device)
        load_fold_weights(self.network, model.folds[0].weights, str(model.folds[0].path))
        self.fast = fast_settings(device, model.mirror_axes, options.use_mirroring) if options.fast else None
        self.last_placement: Placement = cpu_placement()
        self._compiled: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        if self.fast is not None:
            return self.fast.mirror_axes
        return self.model.mirror_axes if self.options.use_mirroring else ()

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.fast.autocast_dtype if self.fast is not None else None

    def _n_tiles(self, case: PreprocessedCase, step: float) -> int:
        config = self.model.configuration
        return len(tile_slicers(padded_shape(case.data.shape[1:], config.patch_size), config.patch_size, step))

    @torch.inference_mode()
    def _time_one_pass(self, case: PreprocessedCase) -> float:
        """Seconds of one forward pass on the first tile of this case (plus its Gaussian accumulation share)."""
        config = self.model.configuration
        data, _ = pad_to_patch(case.data, config.patch_size)
        slicer = tile_slicers(data.shape[1:], config.patch_size, self.options.tile_step)[0]
        tile = data[slicer][None].contiguous().to(self.device)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else None

        def run() -> None:
            if autocast is None:
                self.network(tile)
            else:
                with autocast:
                    self.network(tile)

        return time_forward(run)

    def deadline_from_now(self) -> float | None:
        """``time.monotonic()`` deadline of a case started now under the options' time budget (None: no budget)."""
        return None if self.options.time_budget is None else time.monotonic() + self.options.time_budget

    def plan(self, case: PreprocessedCase, deadline: float | None = None) -> tuple[Plan, BudgetController | None]:
        """The plan for this case: everything requested, or what fits before ``deadline`` (a ``time.monotonic()``
        value; None: the options' time budget from now, if any), logged."""
        full = Plan(len(self.model.folds), tuple(self.mirror_axes), self.options.tile_step)
        if deadline is None:
            deadline = self.deadline_from_now()
        if deadline is None:
            return full, None
        per_pass = self._time_one_pass(case)
        export_s = estimate_export_seconds(case, self.model.num_classes)
        plan, cost = plan_for_budget(deadline - time.monotonic(), per_pass, lambda s: self._n_tiles(case, s), full,
                                     export_s)
        lost = describe_loss(full, plan)
        log.info("time budget: %.0f s left, %.3f s per forward pass, export ~%.0f s -> %d folds, mirror axes "
                 "%s, tile step %g (~%.0f s of sliding window)", deadline - time.monotonic(), per_pass, export_s,
                 plan.n_folds, plan.mirror_axes, plan.tile_step,
                 cost)
        if lost:
            log.warning("time budget: gave up %s", "; ".join(lost))
        controller = BudgetController(deadline, export_s, plan.mirror_axes, per_pass)
        controller.given_up.extend(lost)
        return plan, controller

    def placement(self, case: PreprocessedCase) -> Placement:
        """Where this case's tensors live (:mod:`model.placement`); logged."""
        if self.device.type != "cuda":
            return cpu_placement()
        config = self.model.configuration
        data, _ = pad_to_patch(case.data, config.patch_size)
        slicers = tile_slicers(data.shape[1:], config.patch_size, self.options.tile_step)
        batch = self.fast.batch_tiles if self.fast is not None else 1
        tiles = torch.stack([data[s] for s in slicers[:batch]])
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else autocast_for(self.device))
        need = estimate_need(case.data.shape, self.model.num_classes, config.patch_size, case.shape_after_cropping,
                             weight_bytes(self.network),
                             probe_activation_bytes(self.network, tiles, self.device, autocast))
        chosen = choose_placement(self.device, need)
        log.info("memory: %s", chosen.reason)
        return chosen

    def _forward_for(self, fold: Fold) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward pass of ``fold`` (its weights already in ``self.network``): the torch network, or in
        compiled fast mode its OpenVINO model (compiled once per fold and kept)."""
        if self.fast is None or not self.fast.compiled:
            return self.network
        if fold.name not in self._compiled:
            from model.compiled import compile_fold

            self._compiled[fold.name] = compile_fold(self.model, fold, self.network, torch.get_num_threads())
        return self._compiled[fold.name]

    def _move_network(self, placement: Placement) -> None:
        if next(self.network.parameters()).device != placement.network_device:
            self.network.to(placement.network_device)

    @torch.inference_mode()
    def predict_logits(self, case: PreprocessedCase, deadline: float | None = None,
                       report: PredictionReport | None = None, placement: Placement | None = None) -> torch.Tensor:
        """Mean fp16 logits of all (planned) folds on the model grid, ``(K, *spatial)``, on the placement's
        results device (the GPU on the device path, else the host).

        A CUDA out-of-memory error in a fold moves the run one step down device -> host -> cpu
        (:func:`model.placement.next_placement`) and retries that fold there, or all folds if the failed one had
        already written part of the ensemble sum; it is logged, never a crash. ``deadline``: see :meth:`plan`;
        ``report`` (if given) is filled with what ran and what the time budget gave up.
        """
        config = self.model.configuration
        placement = placement or self.placement(case)
        self.last_placement = placement
        plan, controller = self.plan(case, deadline)
        n_tiles = self._n_tiles(case, plan.tile_step)
        folds = self.model.folds[:plan.n_folds]
        log.info(
            "predicting: %d folds x %d tiles, patch %s, mirror axes %s%s, %s path", len(folds), n_tiles,
            config.patch_size, plan.mirror_axes, f", {self.fast.describe()}" if self.fast else "", placement.path,
        )
        self._move_network(placement)
        data = to_results(case.data, placement)
        summed = host_tensor((self.model.num_classes, *case.data.shape[1:]), torch.half, placement)
        done = 0
        accumulators: list[FoldAccumulator] = []
        with freed_memory_kept() as heap, tqdm(total=n_tiles * len(folds), desc="tiles", unit="tile",
                                                disable=not self.options.progress, mininterval=2) as bar:
            log.info("CPU memory during the tiles: %s", heap.describe())
            while done < len(folds):
                fold = folds[done]
                if controller is not None and done and not controller.fold_fits(n_tiles):
                    msg = f"folds {len(folds)} -> {done} (running late)"
                    controller.given_up.append(msg)
                    log.warning("time budget: gave up %s", msg)
                    break
                if controller is not None:
                    controller.mirror_axes = plan.mirror_axes
                load_fold_weights(self.network, fold.weights, str(fold.path))
                accumulators.clear()
                fold_start = time.monotonic()
                try:
                    sliding_window_logits(
                        self._forward_for(fold),
                        data,
                        config.patch_size,
                        self.model.num_classes,
                        mirror_axes=plan.mirror_axes,
                        step_fraction=plan.tile_step,
                        device=placement.network_device,
                        on_tile=bar.update,
                        autocast_dtype=self.autocast_dtype,
                        controller=controller,
                        batch_tiles=self.fast.batch_tiles if self.fast is not None else 1,
                        out=summed,
                        first=done == 0,
                        results_device=placement.results_device,
                        on_accumulator=accumulators.append,
                    )
                except torch.OutOfMemoryError as err:
                    if placement.path == "cpu":
                        raise
                    written = accumulators[0].flushed_rows if accumulators else 0
                    failed = placement
                    placement = next_placement(placement)
                    self.last_placement = placement
                    accumulators.clear()
                    restart = written > 0 and done > 0
                    log.warning("CUDA out of memory in fold %s on the %s path (%s): retrying %s on the %s path",
                                fold.path.name, failed.path, str(err).splitlines()[0][:120],
                                "all folds" if restart else "this fold", placement.path)
                    summed = to_results(summed, placement) if done and not restart else \
                        host_tensor(summed.shape, torch.half, placement)
                    data = to_results(case.data, placement)
                    empty_device_cache(failed.network_device)
                    self._move_network(placement)
                    bar.reset()
                    if restart:
                        done = 0
                    continue
                done += 1
                log.info("fold %s done (%d of %d): %d tiles in %.1f s", fold.path.name, done, len(folds), n_tiles,
                         time.monotonic() - fold_start)
        if done > 1:
            summed /= done
        if report is not None:
            report.folds = [fold.name for fold in folds[:done]]
            report.mirror_axes = list(plan.mirror_axes)
            report.tile_step = plan.tile_step
            report.given_up = list(controller.given_up) if controller is not None else []
        return summed

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float]) -> np.ndarray:
        """Segment one case.

        Args:
            channels: one array per model input channel (``dataset.json`` order), all on the CT grid, numpy
                order (z, y, x).
            spacing_xyz: CT voxel spacing in mm, SimpleITK order (x, y, z).

        Returns:
            ``uint8`` HaN-Seg label array (values 0..30) with the CT's numpy shape (z, y, x).
        """
        return self.predict_preprocessed(self.preprocess(channels, spacing_xyz))

    def preprocess(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float]) -> PreprocessedCase:
        """First half of :meth:`predict`: the network input on the model grid (the caller may then free
        ``channels`` before the sliding window and export, which matters for HaN-Seg-sized CTs)."""
        return preprocess_case(channels, spacing_xyz, self.model)

    def predict_preprocessed(self, case: PreprocessedCase, deadline: float | None = None,
                             report: PredictionReport | None = None) -> np.ndarray:
        """Second half of :meth:`predict`: ensemble, export to the CT grid, HaN-Seg label values. ``deadline`` and
        ``report``: see :meth:`predict_logits`."""
        logits = self.predict_logits(case, deadline, report)
        kwargs = self.model.configuration.probabilities_resampling_kwargs
        export = {"target_shape": case.shape_after_cropping, "current_spacing": case.model_spacing,
                  "target_spacing": case.original_spacing, "force_separate_z": kwargs.get("force_separate_z", False)}
        labels = None
        if self.last_placement.export_on_device:
            try:
                labels = logits_to_labels(logits, on_device=True, **export)
            except torch.OutOfMemoryError:
                log.warning("CUDA out of memory in the GPU export: exporting in chunks on the host instead")
                empty_device_cache(logits.device)
        if labels is None:
            labels = logits_to_labels(logits.cpu(), **export)
        del logits
        result = labels_to_image_array(labels, case, self.lookup)
        return result


def estimate_export_seconds(case: PreprocessedCase, num_classes: int) -> float:
    """Rough wall seconds of :func:`model.export.logits_to_labels` for ``case`` on this machine now.

    Times the cheap per-voxel part (cell gathers of one chunk of output rows) and scales it to the whole output,
    times a factor for the interpolation of mixed (border) voxels and the paste/transpose/write.
    """
    from model import export

    shape = case.shape_after_cropping
    plane = int(np.prod(shape[1:]))
    rows = max(1, min(shape[0], export.CHUNK_VOXELS // max(plane, 1)))
    probe = torch.zeros(case.data.shape[1:], dtype=torch.int16)
    maps = [export.AxisMap.build(o, n, "nearest") for o, n in zip(probe.shape, shape)]
    start = time.perf_counter()
    export.gather_cells(probe, maps, 0, rows)
    per_row = (time.perf_counter() - start) / rows
    return per_row * shape[0] * EXPORT_SAFETY_FACTOR * max(1.0, num_classes / 8)


EXPORT_SAFETY_FACTOR = 6.0
"""Export seconds per (cell-gather seconds x classes / 8): covers label gathers, mixed-voxel interpolation,
uncropping and writing. Deliberately generous: overestimating costs quality, underestimating costs the deadline."""

"""The model's input channels, made from a case exactly as the model folder declares them.

ONE builder for inference (``process.py``) and for the training converters (``training.t1_channel``,
``training.convert_*``), so that what a model saw in training and what it gets at inference cannot drift apart.

Declaration (``dataset.json``; nnU-Net ignores the extra keys)::

    "channel_names":   {"0": "CT_soft", "1": "CT_bone", "2": "T1"},
    "channel_recipes": {"0": {"source": "CT", "window": {"level": 40, "width": 400}},
                        "1": {"source": "CT", "window": {"level": 700, "width": 3000}},
                        "2": {"source": "T1"}},
    "mr_registration": "rigid+bspline"

* ``source`` ``"CT"``: the CT in HU as read (int16 kept), or with ``window`` the CT clipped to
  ``[level - width/2, level + width/2]`` HU (float32), as the model was trained. With ``z_offset_mm`` (2.5-D
  context for a 2-D network): the CT ``z_offset_mm`` mm toward the patient's head (negative: toward the feet),
  i.e. each voxel holds the CT value found that far superior of it along the image axis closest to the patient's
  superior-inferior axis; linear between slices, the first / last slice repeated beyond the scan (float32; the
  window, if any, is applied after the shift). Defined in patient terms so that it means the same on every
  storage orientation and slice spacing (OpenKBP 2.5 / 3 mm, HaN-Seg 2 mm). ``"T1"``: the T1 MR registered and
  resampled onto the CT grid (float32, 0 outside the MR field of view).
* Without ``channel_recipes`` a channel named ``CT``/``ct`` is the CT as read and a name containing ``t1``, ``mr``
  or ``mri`` is the T1 (the two-channel models trained before recipes existed). Any other name is a model-folder
  error (exit 4) naming dataset.json.
* ``mr_registration``: ``"rigid"`` (default) or ``"rigid+bspline"`` (:mod:`preprocessing.deformable` after the
  rigid stage, falling back to rigid when its check fails).
* When there is no usable MR (missing, unreadable, registration rejected) EVERY T1-derived channel is the
  modality-dropout fill :data:`MR_DROPOUT_FILL` (zeros, which z-score normalisation keeps at 0: what the trainer's
  modality dropout feeds the network; the trainer drops channel GROUPS, :func:`channel_groups`).

Images are SimpleITK (x, y, z, mm); arrays are numpy (z, y, x).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.errors import InputError, ModelFolderError
from contract.imageio import check_scan_geometry, repair_intensities

log = logging.getLogger(__name__)

RECIPES_KEY = "channel_recipes"
REGISTRATION_KEY = "mr_registration"
REGISTRATION_MODES = ("rigid", "rigid+bspline")
DEFAULT_REGISTRATION = "rigid"
SOURCES = ("CT", "T1")
CT_NAMES = frozenset({"CT", "ct"})
MR_NAME_KEYWORDS = ("t1", "mr", "mri")
MR_DROPOUT_FILL = 0.0
"""Raw value of every T1-derived channel when there is no usable MR."""
MAX_Z_OFFSET_MM = 50.0
"""Largest ``z_offset_mm`` a recipe may declare (a context channel, not a different region)."""

MR_USED = "used"
MR_ABSENT = "absent"
MR_NOT_IN_MODEL = "not used: the model has no MR channel"
MR_DROPPED = "dropped"


@dataclass(frozen=True)
class ChannelRecipe:
    """How one input channel is made: ``source`` ``"CT"`` (optionally windowed: level/width in HU) or ``"T1"``."""

    name: str
    source: str
    window: tuple[float, float] | None = None
    z_offset_mm: float = 0.0

    @property
    def group(self) -> str:
        """Modality-dropout group: ``"mr"`` for T1-derived channels, ``"ct"`` for CT-derived ones."""
        return "mr" if self.source == "T1" else "ct"

    @property
    def clip_hu(self) -> tuple[float, float] | None:
        if self.window is None:
            return None
        level, width = self.window
        return level - width / 2.0, level + width / 2.0

    def describe(self) -> str:
        """Human-readable recipe, e.g. ``"CT 2.5 mm toward the feet"`` or ``"CT window L40/W400"`` (model card)."""
        parts = [self.source]
        if self.z_offset_mm:
            parts.append(f"{abs(self.z_offset_mm):g} mm toward the {'head' if self.z_offset_mm > 0 else 'feet'}")
        if self.window is not None:
            parts.append(f"window L{self.window[0]:g}/W{self.window[1]:g}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.window is not None:
            out["window"] = {"level": self.window[0], "width": self.window[1]}
        if self.z_offset_mm:
            out["z_offset_mm"] = self.z_offset_mm
        return out


@dataclass(frozen=True)
class ChannelPlan:
    """Every input channel's recipe (channel order) and the MR registration mode a model folder declares."""

    recipes: tuple[ChannelRecipe, ...]
    mr_registration: str = DEFAULT_REGISTRATION

    @property
    def mr_channels(self) -> tuple[int, ...]:
        return tuple(i for i, r in enumerate(self.recipes) if r.source == "T1")

    @property
    def ct_channels(self) -> tuple[int, ...]:
        return tuple(i for i, r in enumerate(self.recipes) if r.source == "CT")

    @property
    def uses_mr(self) -> bool:
        return bool(self.mr_channels)

    def dataset_json_keys(self) -> dict[str, Any]:
        """``channel_names``, ``channel_recipes`` and ``mr_registration`` for a dataset.json (converters)."""
        return {
            "channel_names": {str(i): r.name for i, r in enumerate(self.recipes)},
            RECIPES_KEY: {str(i): r.to_json() for i, r in enumerate(self.recipes)},
            REGISTRATION_KEY: self.mr_registration,
        }


LEGACY_PLAN = ChannelPlan((ChannelRecipe("CT", "CT"), ChannelRecipe("T1", "T1")))
"""The two-channel CT + T1 layout (CT as read, T1 registered rigidly)."""

SEED_RECIPE_PLAN = ChannelPlan(
    (ChannelRecipe("CT_soft", "CT", (40.0, 400.0)), ChannelRecipe("CT_bone", "CT", (700.0, 3000.0)),
     ChannelRecipe("T1", "T1")),
    "rigid",
)
"""The best published HaN-Seg recipe's channels: soft-tissue and bone CT windows stacked with the T1. Registration
stays RIGID by default: on the synthetic protocol the B-spline stage did not beat rigid yet (mean TRE 1.57 vs
1.20 mm; better only where the neck moved: 1.81 vs 2.76 mm; test_deformable); ``rigid+bspline`` is opt-in
(the converters' ``--mr-registration``)."""


Z_CONTEXT_OFFSETS_MM = (-5.0, -2.5, 2.5, 5.0)
"""Offsets (mm toward the head) of the CT context channels of :data:`Z_CONTEXT_PLAN`."""

Z_CONTEXT_PLAN = ChannelPlan(
    (ChannelRecipe("CT", "CT"), ChannelRecipe("T1", "T1"))
    + tuple(ChannelRecipe("CT", "CT", z_offset_mm=d) for d in Z_CONTEXT_OFFSETS_MM),
    "rigid",
)
"""2.5-D input for a 2-D network: the CT and T1 of :data:`LEGACY_PLAN` (same channel indices, so a legacy model's
weights carry over) plus the CT 5 and 2.5 mm below and above each slice. The context channels are named ``CT`` so
that nnU-Net normalises them as CT (its normalisation is chosen by channel name)."""


NAMED_PLANS = {"ct+t1": LEGACY_PLAN, "seed": SEED_RECIPE_PLAN, "2.5d": Z_CONTEXT_PLAN}
"""The channel layouts the training converters offer (``--channels``)."""
NAMED_PLANS_HELP = ("input channels: ct+t1 (CT as read + T1), seed (CT soft window, CT bone window, T1: the best "
                    "published HaN-Seg recipe), or 2.5d (CT, T1, and the CT 5 / 2.5 mm below and above: z-context "
                    "for a 2-D network)")
"""The converters' ``--channels`` help."""


def parse_channel_plan(dataset: Mapping[str, Any], path: str | Path = "dataset.json") -> ChannelPlan:
    """The :class:`ChannelPlan` a dataset.json declares.

    Raises:
        ModelFolderError: naming ``path``, for an unknown channel name (without a recipe), a malformed recipe, an
            unknown registration mode, or no CT-derived channel.
    """
    names = dataset.get("channel_names")
    if not isinstance(names, Mapping) or not names:
        raise ModelFolderError(path, "'channel_names' must be a non-empty object")
    try:
        ordered = [str(names[str(i)]) for i in range(len(names))]
    except KeyError:
        raise ModelFolderError(path, f"'channel_names' keys must be 0..{len(names) - 1}, got {sorted(names)}") from None
    raw = dataset.get(RECIPES_KEY)
    if raw is not None and (not isinstance(raw, Mapping) or set(map(str, raw)) != {str(i) for i in range(len(names))}):
        raise ModelFolderError(path, f"'{RECIPES_KEY}' must give one recipe per channel (keys 0..{len(names) - 1})")
    recipes = tuple(
        _recipe(i, name, raw[str(i)] if raw is not None else None, path) for i, name in enumerate(ordered)
    )
    mode = dataset.get(REGISTRATION_KEY, DEFAULT_REGISTRATION)
    if mode not in REGISTRATION_MODES:
        raise ModelFolderError(path, f"'{REGISTRATION_KEY}' is {mode!r}; expected one of {list(REGISTRATION_MODES)}")
    plan = ChannelPlan(recipes, str(mode))
    if not plan.ct_channels:
        raise ModelFolderError(path, f"no CT-derived channel among {ordered}")
    return plan


def _recipe(index: int, name: str, raw: Any, path: str | Path) -> ChannelRecipe:
    if raw is None:
        if name in CT_NAMES:
            return ChannelRecipe(name, "CT")
        if any(k in name.lower() for k in MR_NAME_KEYWORDS):
            return ChannelRecipe(name, "T1")
        raise ModelFolderError(
            path, f"channel {index} {name!r}: unknown channel name (known: CT, or a T1/MR name; other channels need "
                  f"a '{RECIPES_KEY}' entry)")
    if not isinstance(raw, Mapping) or set(raw) - {"source", "window", "z_offset_mm"}:
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: expected {{'source', 'window', "
                                     f"'z_offset_mm'}}, got {raw!r}")
    source = raw.get("source")
    if source not in SOURCES:
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: source {source!r} is not one of {list(SOURCES)}")
    offset = raw.get("z_offset_mm", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not np.isfinite(offset) \
            or abs(offset) > MAX_Z_OFFSET_MM:
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: z_offset_mm must be a number of mm within "
                                     f"+-{MAX_Z_OFFSET_MM:g}, got {offset!r}")
    if offset and source != "CT":
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: z_offset_mm applies to the CT only")
    window = raw.get("window")
    if window is None:
        return ChannelRecipe(name, str(source), z_offset_mm=float(offset))
    if source != "CT":
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: a window applies to the CT only")
    try:
        level, width = float(window["level"]), float(window["width"])
    except (KeyError, TypeError, ValueError):
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: window must be {{'level': HU, 'width': HU}}, "
                                     f"got {window!r}") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ModelFolderError(path, f"'{RECIPES_KEY}' entry {index}: window width must be > 0 and finite")
    return ChannelRecipe(name, "CT", (level, width), float(offset))


def channel_groups(plan: ChannelPlan) -> dict[str, tuple[int, ...]]:
    """Channel indices per modality-dropout group: ``{"ct": (...), "mr": (...)}``."""
    return {"ct": plan.ct_channels, "mr": plan.mr_channels}


# ----------------------------------------------------------------------------------------------------------------
# The MR on the CT grid


@dataclass
class MrOnCt:
    """The T1 MR on the CT grid and how it got there.

    Attributes:
        image: float32 on the CT's exact grid, or None: every T1-derived channel is then the dropout fill.
        status: ``registered``, ``missing`` (no MR), ``rejected`` (registration failed its check).
        reason: why there is no image ('' when registered).
        mode: the registration mode used (``rigid`` / ``rigid+bspline``).
        rigid: the rigid stage's :class:`preprocessing.registration.RegistrationResult` (None if it did not run).
        deformable: the B-spline stage's :class:`preprocessing.deformable.DeformableResult` (None if not run).
    """

    image: sitk.Image | None
    status: str
    reason: str = ""
    mode: str = DEFAULT_REGISTRATION
    rigid: Any = None
    deformable: Any = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ct_to_mr(self) -> sitk.Transform | None:
        """The transform the MR was resampled with (CT physical -> MR physical, mm), None if unused."""
        if self.image is None:
            return None
        if self.deformable is not None and self.deformable.accepted:
            return self.deformable.ct_to_mr
        return self.rigid.ct_to_mr

    def transforms(self) -> list[tuple[str, sitk.Transform]]:
        """``[("rigid", ...), ("deformable", rigid o bspline)]`` as used for this case (the deformable one only
        when it ran and was accepted); empty when the MR was not used."""
        if self.image is None:
            return []
        out = [("rigid", self.rigid.ct_to_mr)]
        if self.deformable is not None and self.deformable.accepted:
            out.append(("deformable", self.deformable.ct_to_mr))
        return out


def mr_on_ct_grid(ct: sitk.Image, mr: sitk.Image | None, mode: str = DEFAULT_REGISTRATION,
                  threads: int | None = None, deformable_settings: Any = None,
                  deformable_thresholds: Any = None) -> MrOnCt:
    """Register ``mr`` to ``ct`` (rigid, then the B-spline stage for ``rigid+bspline``) and resample it onto the
    CT grid. ``mr`` None, or a registration rejected by its quality check, gives ``image=None``.
    ``deformable_settings`` / ``deformable_thresholds``: :mod:`preprocessing.deformable`'s (default: its
    defaults, with ``threads``)."""
    from dataclasses import replace

    from preprocessing.deformable import (
        DEFAULT_DEFORMABLE,
        DEFAULT_DEFORMABLE_THRESHOLDS,
        refine_deformable,
        resample_deformable,
    )
    from preprocessing.registration import register_mr_to_ct, resample_mr_to_ct

    if mode not in REGISTRATION_MODES:
        raise ValueError(f"registration mode {mode!r} is not one of {REGISTRATION_MODES}")
    if mr is None:
        return MrOnCt(None, "missing", "no MR for this case", mode)
    rigid = register_mr_to_ct(ct, mr, threads=threads)
    metrics = {k: float(v) for k, v in rigid.metrics.items()}
    if not rigid.accepted:
        return MrOnCt(None, "rejected", str(rigid.reason), mode, rigid=rigid, metrics=metrics)
    deformable = None
    if mode == "rigid+bspline":
        settings = deformable_settings or replace(DEFAULT_DEFORMABLE, threads=threads)
        deformable = refine_deformable(ct, mr, rigid.ct_to_mr, settings,
                                       deformable_thresholds or DEFAULT_DEFORMABLE_THRESHOLDS)
        metrics.update({f"bspline_{k}": float(v) for k, v in deformable.metrics.items()})
        metrics["bspline_accepted"] = float(deformable.accepted)
    result = MrOnCt(None, "registered", "", mode, rigid=rigid, deformable=deformable, metrics=metrics)
    if deformable is not None and deformable.accepted:
        result.image = resample_deformable(mr, ct, deformable.ct_to_mr, rigid.ct_to_mr)
    else:
        result.image = resample_mr_to_ct(mr, ct, rigid.ct_to_mr)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Channel arrays


class DeferredChannel:
    """A channel computed each time it is read (``np.asarray(channel)``), so that a model's several derived channels
    of a large CT (a HaN-Seg CT's z-context channel is 0.8-1.3 GB of float32 each) never all exist at once: the
    preprocessing reads one channel at a time. ``shape`` and ``dtype`` are known without computing it."""

    def __init__(self, compute: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._compute = compute
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        array = self._compute()
        return array if dtype is None else array.astype(dtype, copy=False)

    def transposed(self, axes: Sequence[int]) -> DeferredChannel:
        """The same channel with its axes permuted (numpy ``transpose``), still deferred."""
        axes = tuple(axes)
        return DeferredChannel(lambda: np.asarray(self).transpose(axes), tuple(self.shape[a] for a in axes),
                               self.dtype)


ChannelArray = np.ndarray | DeferredChannel
"""A channel as :func:`channel_arrays` gives it: an array, or (``deferred=True``) a :class:`DeferredChannel`."""


def channel_arrays(plan: ChannelPlan, ct: sitk.Image, mr_on_ct: sitk.Image | None,
                   deferred: bool = False) -> list[ChannelArray]:
    """The model's input arrays (numpy z, y, x; channel order), all on the CT grid.

    The raw CT and the T1 are read-only VIEWS into the images (the caller keeps the images alive while the arrays
    are used; a HaN-Seg CT copy is 0.4-0.8 GB); a window is a new float32 array; a T1-derived channel without an
    MR is a lazily allocated array of :data:`MR_DROPOUT_FILL`. With ``deferred`` a z-context channel is a
    :class:`DeferredChannel` (computed when the preprocessing reads it; inference), else an array (converters).
    """
    ct_arr = sitk.GetArrayViewFromImage(ct)
    mr_arr = sitk.GetArrayViewFromImage(mr_on_ct) if mr_on_ct is not None else None
    if mr_arr is not None and mr_arr.shape != ct_arr.shape:
        raise ValueError(f"MR on the CT grid has shape {mr_arr.shape}, the CT {ct_arr.shape}")
    arrays: list[np.ndarray] = []
    for recipe in plan.recipes:
        if recipe.source == "CT":
            clip = recipe.clip_hu
            if recipe.z_offset_mm:
                context = partial(_context_channel, ct, ct_arr, recipe)
                arrays.append(DeferredChannel(context, ct_arr.shape, np.float32) if deferred else context())
            else:
                arrays.append(ct_arr if clip is None else np.clip(ct_arr, *clip, dtype=np.float32))
        elif mr_arr is not None:
            arrays.append(mr_arr)
        else:  # np.zeros maps untouched pages to the kernel's zero page: no resident memory until written
            arrays.append(np.zeros(ct_arr.shape, np.float32) if MR_DROPOUT_FILL == 0 else
                          np.full(ct_arr.shape, MR_DROPOUT_FILL, dtype=np.float32))
    return arrays


def _context_channel(ct: sitk.Image, ct_arr: np.ndarray, recipe: ChannelRecipe) -> np.ndarray:
    """A z-context channel: the CT ``recipe.z_offset_mm`` toward the head, then the recipe's window (if any)."""
    shifted = shifted_superior(ct, ct_arr, recipe.z_offset_mm)
    clip = recipe.clip_hu
    return shifted if clip is None else np.clip(shifted, *clip, out=shifted)


def superior_axis(image: sitk.Image) -> tuple[int, float]:
    """(numpy axis, sign) of the image axis closest to the patient's superior direction: moving +1 along that
    numpy axis moves ``sign`` x spacing mm toward the head. (SimpleITK's physical frame is LPS: superior = +z.)"""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: image axes x, y, z
    axis_xyz = int(np.argmax(np.abs(direction[2])))
    return 2 - axis_xyz, float(np.sign(direction[2, axis_xyz]))


def shifted_superior(image: sitk.Image, array: np.ndarray, offset_mm: float) -> np.ndarray:
    """``array`` (numpy z, y, x, on ``image``'s grid) sampled ``offset_mm`` mm toward the patient's head: output
    voxel i holds the value at index i + offset / spacing along :func:`superior_axis` (linear between slices, edge
    slices repeated). float32."""
    axis, sign = superior_axis(image)
    spacing = image.GetSpacing()[2 - axis]
    n = array.shape[axis]
    position = np.clip(np.arange(n) + sign * offset_mm / spacing, 0, n - 1)
    below = np.floor(position).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    frac = (position - below).astype(np.float32)
    low = np.take(array, below, axis=axis).astype(np.float32)
    if not frac.any():
        return low
    shape = [1, 1, 1]
    shape[axis] = n
    frac = frac.reshape(shape)
    high = np.take(array, above, axis=axis).astype(np.float32)
    low *= 1 - frac
    low += frac * high
    return low


def channel_images(plan: ChannelPlan, ct: sitk.Image, mr_on_ct: sitk.Image | None) -> list[sitk.Image]:
    """:func:`channel_arrays` as images carrying the CT's grid (for the training converters' channel files): the
    raw CT keeps its pixel type, every other channel is float32."""
    images = []
    for recipe, arr in zip(plan.recipes, channel_arrays(plan, ct, mr_on_ct)):
        if recipe.source == "CT" and recipe.window is None and not recipe.z_offset_mm:
            images.append(ct)
            continue
        image = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
        image.CopyInformation(ct)
        images.append(image)
    return images


def write_transforms(transforms: Sequence[tuple[str, sitk.Transform]], folder: Path, case_id: str) -> list[Path]:
    """Write each ``(name, transform)`` as ``<folder>/<case_id>_ct_to_mr_<name>.tfm`` (``sitk.WriteTransform``;
    CT physical space -> MR physical space, mm, LPS): ``sitk.Resample(mr, ct, sitk.ReadTransform(path))``
    reproduces the MR channel. Returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, transform in transforms:
        path = folder / f"{case_id}_ct_to_mr_{name}.tfm"
        tmp = path.with_name(path.name + ".tmp.tfm")
        sitk.WriteTransform(transform, str(tmp))
        tmp.replace(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# One case, as the in-memory API (hanseg.api.segment) and the command line use it


@dataclass
class MrDecision:
    """What happened to the MR of one case (stored in the run record).

    Attributes:
        status: ``used``, ``absent``, ``not used: ...`` or ``dropped``.
        reason: why it was dropped ("" otherwise).
        metrics: the registration's quality metrics (empty if it did not run).
        ct_to_mr: the transform the MR channel was resampled with, CT -> MR physical points (the rigid one, or
            rigid o B-spline when the deformable stage was accepted); None if no registration was used.
        seconds: wall seconds of the registration.
        stages: the transforms by stage name (``rigid``, ``deformable``) as used (:meth:`MrOnCt.transforms`).
    """

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    ct_to_mr: sitk.Transform | None = None
    seconds: float = 0.0
    stages: list[tuple[str, sitk.Transform]] = field(default_factory=list)

    @property
    def used(self) -> bool:
        return self.status == MR_USED


@dataclass
class CaseChannels:
    """A case's model input on the CT grid: ``arrays`` (numpy z, y, x, channel order; views into ``mr_on_ct`` and
    the CT where possible, so keep them alive), the MR decision, and the registered MR (None: dropout fill)."""

    arrays: list[ChannelArray]
    decision: MrDecision
    mr_on_ct: sitk.Image | None = None


def prepare_case_channels(ct: sitk.Image, mr: sitk.Image | None, plan: ChannelPlan,
                          mr_source: str = "T1 MR") -> CaseChannels:
    """The model's input channels for one case, as its folder declares them (``plan``). A missing MR, one without
    usable intensities, or one whose registration fails its check makes every T1-derived channel the dropout fill
    (the case is predicted from the CT alone, as the model was trained to do under modality dropout)."""
    if not plan.uses_mr:
        if mr is not None:
            log.info("model has no MR channel: %s is not used", mr_source)
        return CaseChannels(channel_arrays(plan, ct, None, deferred=True), MrDecision(MR_NOT_IN_MODEL))
    if mr is None:
        log.warning("no T1 MR: predicting from the CT alone")
        return CaseChannels(channel_arrays(plan, ct, None, deferred=True), MrDecision(MR_ABSENT))
    try:
        check_scan_geometry(mr, mr_source, "T1 MR")
        mr = repair_intensities(mr, mr_source, "T1 MR", repair=False)  # any non-finite voxel: the MR is dropped
        check_not_a_ct(mr, mr_source)
    except InputError as err:
        log.warning("%s: predicting from the CT alone", err)
        return CaseChannels(channel_arrays(plan, ct, None, deferred=True), MrDecision(MR_DROPPED, reason=err.problem))
    result = mr_on_ct_grid(ct, mr, plan.mr_registration)
    seconds = float(result.rigid.seconds) if result.rigid is not None else 0.0
    if result.image is None:
        log.warning("%s: MR-to-CT registration failed its quality check (%s): predicting from the CT alone",
                    mr_source, result.reason)
        decision = MrDecision(MR_DROPPED, reason=result.reason, metrics=result.metrics,
                              ct_to_mr=result.rigid.ct_to_mr if result.rigid is not None else None, seconds=seconds)
        return CaseChannels(channel_arrays(plan, ct, None, deferred=True), decision)
    if not np.isfinite(sitk.GetArrayViewFromImage(result.image)).all():
        reason = "T1 MR has NaN/inf values once resampled onto the CT"
        log.warning("%s: %s: predicting from the CT alone", mr_source, reason)
        return CaseChannels(channel_arrays(plan, ct, None, deferred=True), MrDecision(MR_DROPPED, reason=reason))
    log.info("MR registered to CT (%s) in %.1f s", plan.mr_registration, seconds)
    decision = MrDecision(MR_USED, metrics=result.metrics, ct_to_mr=result.ct_to_mr, seconds=seconds,
                          stages=result.transforms())
    return CaseChannels(channel_arrays(plan, ct, result.image, deferred=True), decision, result.image)


MR_HU_AIR_THRESHOLD = -200.0
MR_MAX_HU_AIR_FRACTION = 0.05
"""An "MR" with more than this fraction of voxels below MR_HU_AIR_THRESHOLD has Hounsfield-unit air: it is a CT
(MR intensities are not negative), and is dropped (issue 13)."""


def check_not_a_ct(mr: sitk.Image, mr_source: str) -> None:
    """Refuse (InputError) an MR whose histogram is a CT's: air at about -1000 HU."""
    values = sitk.GetArrayViewFromImage(mr)
    fraction = float(np.count_nonzero(values < MR_HU_AIR_THRESHOLD)) / values.size
    if fraction > MR_MAX_HU_AIR_FRACTION:
        raise InputError(mr_source, f"T1 MR looks like a CT ({fraction:.0%} of its voxels are below "
                                    f"{MR_HU_AIR_THRESHOLD:g}, Hounsfield-unit air)")

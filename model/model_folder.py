"""Reader for nnU-Net v2 results folders: the one place that knows the model-folder format.

A model folder (``<Dataset>/<Trainer>__<Plans>__<configuration>/`` as nnU-Net writes it, or ``weights/``) holds::

    plans.json                      network, patch size, spacing, normalisation, resampling, transposes
    dataset.json                    channel_names (input channels) and labels (name -> value); optional
                                    "channel_recipes" / "mr_registration" (how each channel is made:
                                    preprocessing.channels), "head_neck_crop" (preprocessing.head_neck_crop),
                                    "largest_component" (OARs post-processed by preprocessing.components),
                                    "orientation": the training images' orientation code (this project's
                                    addition, preprocessing.orientation; default "LPS", the identity direction)
    fold_N/checkpoint_final.pth     per fold: network_weights, init_args.configuration, trainer_name,
                                    inference_allowed_mirroring_axes (optimizer_state is ignored)

Spacings and patch sizes in the plans are in nnU-Net's array axis order *after* ``transpose_forward``
(for an untransposed image that is z, y, x), spacing in millimetres.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contract.errors import ModelFolderError
from contract.labels import output_oar_values
from model.checkpoint_loading import load_checkpoint
from preprocessing.channels import ChannelPlan, parse_channel_plan
from preprocessing.head_neck_crop import CropSettings, parse_crop
from preprocessing.orientation import DEFAULT_ORIENTATION, check_orientation_code

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_final.pth"
FOLD_PATTERN = re.compile(r"^fold_(\d+|all)$")

SUPPORTED_NORMALIZATIONS = frozenset(
    {"CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization"}
)
SUPPORTED_RESAMPLING = "resample_data_or_seg_to_shape"


@dataclass(frozen=True)
class Fold:
    """One trained fold: its name (``"0"``, ``"all"``) and its network weights (a state_dict)."""

    name: str
    path: Path
    weights: dict[str, torch.Tensor] = field(repr=False)


@dataclass(frozen=True)
class Configuration:
    """The parts of one nnU-Net plans configuration that inference needs.

    ``patch_size`` and ``spacing`` (mm) are in transposed array axis order; 2-D configurations have two entries.
    """

    name: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    network_class_name: str
    arch_kwargs: dict[str, Any]
    arch_kwargs_requiring_import: tuple[str, ...]
    data_resampling_kwargs: dict[str, Any]
    probabilities_resampling_kwargs: dict[str, Any]

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2


@dataclass(frozen=True)
class ModelFolder:
    """A loaded nnU-Net v2 model folder, checked for everything this predictor relies on."""

    path: Path
    plans: dict[str, Any] = field(repr=False)
    dataset: dict[str, Any] = field(repr=False)
    configuration: Configuration
    folds: tuple[Fold, ...]
    trainer_name: str
    mirror_axes: tuple[int, ...]

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Input channel names in channel order (e.g. ``("CT", "T1")``)."""
        names = self.dataset["channel_names"]
        return tuple(names[str(i)] for i in range(len(names)))

    @property
    def num_input_channels(self) -> int:
        return len(self.channel_names)

    @property
    def labels(self) -> dict[str, int]:
        """``dataset.json['labels']``: label name -> model output index."""
        return dict(self.dataset["labels"])

    @property
    def lr_split(self) -> dict[str, list[str]]:
        """``dataset.json['lr_split']``: merged label name -> [patient-left OAR, patient-right OAR] (this project's
        addition; empty when the model predicts each side itself). Validated by ``contract.labels.check_lr_split``."""
        return dict(self.dataset.get("lr_split") or {})

    @property
    def num_classes(self) -> int:
        return len(self.dataset["labels"])

    @property
    def transpose_forward(self) -> tuple[int, ...]:
        return tuple(self.plans.get("transpose_forward", (0, 1, 2)))

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(self.plans.get("transpose_backward", (0, 1, 2)))

    def intensity_properties(self, channel: int) -> dict[str, float]:
        """Foreground intensity statistics of a channel (used by CT normalisation)."""
        props = self.plans.get("foreground_intensity_properties_per_channel", {})
        if str(channel) not in props:
            raise ModelFolderError(
                self.path / "plans.json", f"no foreground intensity properties for channel {channel}"
            )
        return props[str(channel)]

    @property
    def orientation(self) -> str:
        """Orientation code the training images were stored in (``dataset.json['orientation']``, default
        ``"LPS"`` = identity direction); inputs are permuted/flipped to it (:mod:`preprocessing.orientation`)."""
        try:
            return check_orientation_code(self.dataset.get("orientation", DEFAULT_ORIENTATION))
        except ValueError as err:
            raise ModelFolderError(self.path / "dataset.json", str(err)) from None

    @property
    def largest_component(self) -> dict[str, int]:
        """``dataset.json['largest_component']``: the output OARs (HaN-Seg names, after the left/right split) whose
        map keeps only its largest connected component (:mod:`preprocessing.components`; determined on
        cross-validation by ``training.determine_postprocessing``), name -> HaN-Seg value; empty if absent."""
        names = self.dataset.get("largest_component", [])
        where = self.path / "dataset.json"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelFolderError(where, "largest_component must be a list of OAR names")
        try:
            outputs = output_oar_values(self.labels, self.lr_split)
        except ValueError as err:
            raise ModelFolderError(where, str(err)) from None
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise ModelFolderError(where, f"largest_component names {unknown}, which the model does not output "
                                          f"(it outputs {sorted(outputs)})")
        return {n: outputs[n] for n in names}

    @property
    def channel_plan(self) -> ChannelPlan:
        """How each input channel is made from a case (``channel_names`` + ``channel_recipes`` +
        ``mr_registration``; :mod:`preprocessing.channels`)."""
        return parse_channel_plan(self.dataset, self.path / "dataset.json")

    @property
    def head_neck_crop(self) -> CropSettings | None:
        """The head-and-neck crop the model asks for (``dataset.json['head_neck_crop']``), or None."""
        return parse_crop(self.dataset, self.path / "dataset.json")

    @property
    def ct_channel(self) -> int:
        """Index of the first CT-derived channel."""
        return self.channel_plan.ct_channels[0]

    @property
    def mr_channel(self) -> int | None:
        """Index of the first T1-derived channel, or None for a CT-only model."""
        channels = self.channel_plan.mr_channels
        return channels[0] if channels else None


MAX_JSON_BYTES = 16 * 2**20
"""Largest plans.json / dataset.json read (nnU-Net's are a few kB to a few hundred kB)."""
MAX_PATCH_VOXELS = 2**24
"""Largest patch (voxels) accepted from the plans: 256^3 x 1, well above any nnU-Net configuration."""
MIN_MODEL_SPACING_MM = 0.05
MAX_MODEL_SPACING_MM = 50.0


def load_json(path: Path) -> dict[str, Any]:
    """A model folder's plans.json / dataset.json as a dict (size-capped; errors are ModelFolderError naming it)."""
    if not path.is_file():
        raise ModelFolderError(path, "missing (not an nnU-Net v2 model folder?)")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ModelFolderError(path, f"larger than {MAX_JSON_BYTES // 2**20} MB: not an nnU-Net JSON file")
        with path.open() as fh:
            content = json.load(fh)
    except RecursionError:
        raise ModelFolderError(path, "JSON nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(path, f"cannot parse JSON ({err})") from None
    if not isinstance(content, dict):
        raise ModelFolderError(path, f"expected a JSON object, got {type(content).__name__}")
    return content


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_dataset_json(dataset: dict[str, Any], path: Path) -> None:
    """``channel_names`` ("0".."N-1" -> name) and ``labels`` (name -> distinct non-negative int, background 0)."""
    channels = dataset["channel_names"]
    if (not isinstance(channels, dict) or not channels
            or sorted(channels) != [str(i) for i in range(len(channels))]
            or not all(isinstance(v, str) for v in channels.values())):
        raise ModelFolderError(path, 'channel_names must map "0", "1", ... to channel names')
    labels = dataset["labels"]
    if not isinstance(labels, dict) or not all(isinstance(k, str) and _is_int(v) and 0 <= v < 256
                                               for k, v in labels.items()):
        raise ModelFolderError(path, "labels must map names to integer values 0..255 (region labels are not "
                                     "supported)")
    if sorted(labels.values()) != list(range(len(labels))):
        raise ModelFolderError(path, f"label values must be 0..{len(labels) - 1}, each once; got "
                                     f"{sorted(labels.values())}")
    if "orientation" in dataset and not isinstance(dataset["orientation"], str):
        raise ModelFolderError(path, "orientation must be a string such as \"LPS\"")


def check_plans_geometry(plans: dict[str, Any], config: Configuration, mirror_axes: tuple[int, ...],
                         path: Path) -> None:
    """Patch size, spacing, transposes and mirror axes: values inference can run with."""
    if not all(p >= 1 for p in config.patch_size) or math.prod(config.patch_size) > MAX_PATCH_VOXELS:
        raise ModelFolderError(path, f"patch size {config.patch_size} must be positive and at most "
                                     f"{MAX_PATCH_VOXELS} voxels")
    if not all(MIN_MODEL_SPACING_MM <= s <= MAX_MODEL_SPACING_MM for s in config.spacing):
        raise ModelFolderError(path, f"spacing {config.spacing} mm outside [{MIN_MODEL_SPACING_MM}, "
                                     f"{MAX_MODEL_SPACING_MM}]")
    forward = plans.get("transpose_forward", [0, 1, 2])
    backward = plans.get("transpose_backward", [0, 1, 2])
    for key, value in (("transpose_forward", forward), ("transpose_backward", backward)):
        if not isinstance(value, list) or sorted(value) != [0, 1, 2] or not all(_is_int(v) for v in value):
            raise ModelFolderError(path, f"{key} must be a permutation of [0, 1, 2], got {value!r:.80}")
    if [forward[b] for b in backward] != [0, 1, 2]:
        raise ModelFolderError(path, f"transpose_backward {backward} does not undo transpose_forward {forward}")
    n_axes = len(config.patch_size)
    if any(not 0 <= a < n_axes for a in mirror_axes):
        raise ModelFolderError(path, f"mirror axes {mirror_axes} out of range for a {n_axes}-D configuration")
    for key, kwargs in (("resampling_fn_data_kwargs", config.data_resampling_kwargs),
                        ("resampling_fn_probabilities_kwargs", config.probabilities_resampling_kwargs)):
        for order_key in ("order", "order_z"):
            if order_key in kwargs and not (_is_int(kwargs[order_key]) and 0 <= kwargs[order_key] <= 5):
                raise ModelFolderError(path, f"{key}.{order_key} must be an integer 0..5")
        if kwargs.get("force_separate_z") not in (None, True, False):
            raise ModelFolderError(path, f"{key}.force_separate_z must be true, false or null")
    props = plans.get("foreground_intensity_properties_per_channel", {})
    if not isinstance(props, dict) or not all(
            isinstance(p, dict) and all(_is_number(v) for v in p.values()) for p in props.values()):
        raise ModelFolderError(path, "foreground_intensity_properties_per_channel must hold numbers per channel")


def resolve_configuration(plans: dict[str, Any], name: str, plans_path: Path) -> dict[str, Any]:
    """Return configuration ``name`` with nnU-Net's ``inherits_from`` chain applied."""
    configurations = plans.get("configurations", {})
    if not isinstance(configurations, dict) or not all(isinstance(c, dict) for c in configurations.values()):
        raise ModelFolderError(plans_path, "configurations must map names to objects")
    if name not in configurations:
        raise ModelFolderError(plans_path, f"configuration {name!r} not found; have {sorted(configurations)}")
    config = dict(configurations[name])
    seen = {name}
    while "inherits_from" in config:
        parent_name = config.pop("inherits_from")
        if parent_name in seen or parent_name not in configurations:
            raise ModelFolderError(plans_path, f"bad inherits_from chain at {parent_name!r}")
        seen.add(parent_name)
        parent = dict(configurations[parent_name])
        parent.update(config)
        config = parent
    return config


def parse_configuration(plans: dict[str, Any], name: str, plans_path: Path, n_channels: int) -> Configuration:
    """The plans configuration ``name`` (``inherits_from`` resolved) as a checked :class:`Configuration` for a model
    of ``n_channels`` input channels; a malformed entry is a :class:`ModelFolderError` naming ``plans_path``."""
    raw = resolve_configuration(plans, name, plans_path)
    try:
        arch = raw["architecture"]
        if not all(_is_int(p) for p in raw["patch_size"]) or not all(_is_number(s) for s in raw["spacing"]):
            raise ValueError("patch_size must be integers and spacing finite numbers")
        if not isinstance(arch["network_class_name"], str) or not isinstance(arch["arch_kwargs"], dict):
            raise ValueError("network_class_name must be a string and arch_kwargs an object")
        config = Configuration(
            name=name,
            patch_size=tuple(int(p) for p in raw["patch_size"]),
            spacing=tuple(float(s) for s in raw["spacing"]),
            normalization_schemes=tuple(raw["normalization_schemes"]),
            use_mask_for_norm=tuple(bool(u) for u in raw["use_mask_for_norm"]),
            network_class_name=arch["network_class_name"],
            arch_kwargs=dict(arch["arch_kwargs"]),
            arch_kwargs_requiring_import=tuple(arch.get("_kw_requires_import", ())),
            data_resampling_kwargs=dict(raw.get("resampling_fn_data_kwargs", {})),
            probabilities_resampling_kwargs=dict(raw.get("resampling_fn_probabilities_kwargs", {})),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(plans_path, f"configuration {name!r} is incomplete or malformed ({err})") from None
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if raw.get(key, SUPPORTED_RESAMPLING) != SUPPORTED_RESAMPLING:
            raise ModelFolderError(plans_path, f"{key}={raw[key]!r} is not supported (only {SUPPORTED_RESAMPLING})")
    unknown = set(config.normalization_schemes) - SUPPORTED_NORMALIZATIONS
    if unknown:
        raise ModelFolderError(plans_path, f"unsupported normalization schemes {sorted(unknown)}")
    if len(config.normalization_schemes) != n_channels or len(config.use_mask_for_norm) != n_channels:
        raise ModelFolderError(plans_path, f"normalization schemes do not match the {n_channels} input channels")
    if len(config.patch_size) not in (2, 3) or len(config.spacing) != len(config.patch_size):
        raise ModelFolderError(plans_path, f"patch size {config.patch_size} / spacing {config.spacing} mismatch")
    return config


def _checkpoint_fields(checkpoint: Any, path: Path) -> tuple[dict[str, torch.Tensor], str, str, tuple[int, ...] | None]:
    """The fields of an nnU-Net v2 checkpoint that inference uses, each checked: ``network_weights`` (a
    state_dict: names -> tensors), ``init_args.configuration`` (a name), ``trainer_name`` and
    ``inference_allowed_mirroring_axes`` (None or a sequence of axis indices)."""
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint or "init_args" not in checkpoint:
        raise ModelFolderError(path, "not an nnU-Net v2 checkpoint (no network_weights/init_args)")
    weights = checkpoint["network_weights"]
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise ModelFolderError(path, f"network_weights must be a state_dict (parameter names -> tensors), got "
                                     f"{type(weights).__name__}")
    init_args = checkpoint["init_args"]
    configuration = init_args.get("configuration") if isinstance(init_args, dict) else None
    if not isinstance(configuration, str) or not configuration:
        raise ModelFolderError(path, "init_args has no configuration name")
    trainer_name = checkpoint.get("trainer_name", "nnUNetTrainer")
    if not isinstance(trainer_name, str):
        raise ModelFolderError(path, f"trainer_name must be a string, got {type(trainer_name).__name__}")
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    if axes is not None:
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool)
                                                          for a in axes):
            raise ModelFolderError(path, f"inference_allowed_mirroring_axes must be a list of axis indices, got "
                                         f"{axes!r:.80}")
        axes = tuple(int(a) for a in axes)
    return weights, configuration, trainer_name, axes


def find_folds(path: Path) -> list[str]:
    """Names of the folds in ``path`` that have a final checkpoint (``"0"``, ``"1"``, ... then ``"all"``)."""
    names = []
    if path.is_dir():
        for child in path.iterdir():
            match = FOLD_PATTERN.match(child.name)
            if match and (child / CHECKPOINT_NAME).is_file():
                names.append(match.group(1))
    return sorted(names, key=lambda n: (n == "all", int(n) if n.isdigit() else 0))


def load_model_folder(path: str | Path, folds: list[str] | None = None, trust_model: bool = False) -> ModelFolder:
    """Load and check an nnU-Net v2 model folder (as data: see :mod:`model.checkpoint_loading`).

    Args:
        path: the results folder holding ``plans.json``, ``dataset.json`` and ``fold_*/``.
        folds: fold names to use (``["0", "1"]``); default all numbered folds, else ``fold_all``
            (nnU-Net's auto-detection skips ``fold_all`` when numbered folds exist).
        trust_model: unpickle the checkpoints without restriction (``--trust-model``); default: refuse
            anything but weights and plain values.

    Raises:
        ModelFolderError: naming the file at fault.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(path, "model folder does not exist")
    plans = load_json(path / "plans.json")
    dataset = load_json(path / "dataset.json")
    if "channel_names" not in dataset and "modality" in dataset:
        dataset["channel_names"] = dataset["modality"]
    for key in ("channel_names", "labels"):
        if key not in dataset:
            raise ModelFolderError(path / "dataset.json", f"has no {key!r}")
    check_dataset_json(dataset, path / "dataset.json")

    available = find_folds(path)
    if folds is None:
        numbered = [f for f in available if f != "all"]
        folds = numbered or available
    missing = [f for f in folds if f not in available]
    if missing or not folds:
        raise ModelFolderError(
            path, f"no {CHECKPOINT_NAME} for fold(s) {missing or folds}; available folds: {available or 'none'}"
        )

    loaded: list[Fold] = []
    trainer_name = ""
    configuration_name = ""
    mirror_axes: tuple[int, ...] = ()
    for name in folds:
        ckpt_path = path / f"fold_{name}" / CHECKPOINT_NAME
        weights, fold_configuration, fold_trainer, axes = _checkpoint_fields(
            load_checkpoint(ckpt_path, trust_model), ckpt_path)
        if not configuration_name:
            configuration_name, trainer_name = fold_configuration, fold_trainer
            mirror_axes = axes if axes is not None else ()
        elif fold_configuration != configuration_name:
            raise ModelFolderError(ckpt_path, f"configuration {fold_configuration!r} differs from fold 0's")
        loaded.append(Fold(name=name, path=ckpt_path, weights=weights))

    configuration = parse_configuration(plans, configuration_name, path / "plans.json", len(dataset["channel_names"]))
    check_plans_geometry(plans, configuration, mirror_axes, path / "plans.json")
    model = ModelFolder(
        path=path,
        plans=plans,
        dataset=dataset,
        configuration=configuration,
        folds=tuple(loaded),
        trainer_name=trainer_name,
        mirror_axes=mirror_axes,
    )
    model.channel_plan  # noqa: B018 - raises early on an unknown channel or recipe, or no CT channel
    model.head_neck_crop  # noqa: B018 - raises early on a malformed crop declaration
    model.orientation  # noqa: B018 - raises early on an invalid orientation code
    model.largest_component  # noqa: B018 - raises early on a post-processing list naming OARs it lacks
    log.info(
        "model %s: %s, configuration %s, folds %s, channels %s, %d classes, mirror axes %s, orientation %s",
        path, trainer_name, configuration_name, list(folds), list(model.channel_names), model.num_classes,
        mirror_axes, model.orientation,
    )
    return model

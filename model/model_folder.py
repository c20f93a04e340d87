"""Reader for nnU-Net v2 results folders: the one place that knows the model-folder format.

A model folder (``<Dataset>/<Trainer>__<Plans>__<configuration>/`` as nnU-Net writes it, or ``weights/``) holds::

    plans.json                      network, patch size, spacing, normalisation, resampling, transposes
    dataset.json                    channel_names (input channels) and labels (name -> value); optional
                                    "channel_recipes" / "mr_registration" (how each channel is made:
                                    preprocessing.channels), "head_neck_crop" (preprocessing.head_neck_crop),
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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contract.errors import ModelFolderError
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


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(path, "missing (not an nnU-Net v2 model folder?)")
    try:
        with path.open() as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFolderError(path, f"cannot parse JSON ({err})") from None


def resolve_configuration(plans: dict[str, Any], name: str, plans_path: Path) -> dict[str, Any]:
    """Return configuration ``name`` with nnU-Net's ``inherits_from`` chain applied."""
    configurations = plans.get("configurations", {})
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


def _parse_configuration(plans: dict[str, Any], name: str, plans_path: Path, n_channels: int) -> Configuration:
    raw = resolve_configuration(plans, name, plans_path)
    try:
        arch = raw["architecture"]
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
        raise ModelFolderError(plans_path, f"configuration {name!r} is incomplete ({err!r})") from None
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


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Load an nnU-Net checkpoint on the CPU.

    Tries ``weights_only=True`` first (safe); nnU-Net's own checkpoints pickle more than tensors, so a
    checkpoint that needs it is loaded with ``weights_only=False``: only point the predictor at model
    folders you trust.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling refusal: retry the trusted way
        log.debug("%s needs full unpickling (weights_only=False)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise ModelFolderError(path, f"cannot load checkpoint ({type(err).__name__}: {err})") from None


def find_folds(path: Path) -> list[str]:
    """Names of the folds in ``path`` that have a final checkpoint (``"0"``, ``"1"``, ... then ``"all"``)."""
    names = []
    if path.is_dir():
        for child in path.iterdir():
            match = FOLD_PATTERN.match(child.name)
            if match and (child / CHECKPOINT_NAME).is_file():
                names.append(match.group(1))
    return sorted(names, key=lambda n: (n == "all", int(n) if n.isdigit() else 0))


def load_model_folder(path: str | Path, folds: list[str] | None = None) -> ModelFolder:
    """Load and check an nnU-Net v2 model folder.

    Args:
        path: the results folder holding ``plans.json``, ``dataset.json`` and ``fold_*/``.
        folds: fold names to use (``["0", "1"]``); default all numbered folds, else ``fold_all``
            (nnU-Net's auto-detection skips ``fold_all`` when numbered folds exist).

    Raises:
        ModelFolderError: naming the file at fault.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(path, "model folder does not exist")
    plans = _load_json(path / "plans.json")
    dataset = _load_json(path / "dataset.json")
    if "channel_names" not in dataset and "modality" in dataset:
        dataset["channel_names"] = dataset["modality"]
    for key in ("channel_names", "labels"):
        if key not in dataset:
            raise ModelFolderError(path / "dataset.json", f"has no {key!r}")

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
        checkpoint = _load_checkpoint(ckpt_path)
        try:
            weights = checkpoint["network_weights"]
            init_args = checkpoint["init_args"]
        except (KeyError, TypeError):
            raise ModelFolderError(ckpt_path, "not an nnU-Net v2 checkpoint (no network_weights/init_args)") from None
        if not configuration_name:
            configuration_name = init_args["configuration"]
            trainer_name = checkpoint.get("trainer_name", "nnUNetTrainer")
            axes = checkpoint.get("inference_allowed_mirroring_axes")
            mirror_axes = tuple(int(a) for a in axes) if axes is not None else ()
        elif init_args["configuration"] != configuration_name:
            raise ModelFolderError(ckpt_path, f"configuration {init_args['configuration']!r} differs from fold 0's")
        loaded.append(Fold(name=name, path=ckpt_path, weights=weights))
        del checkpoint

    configuration = _parse_configuration(plans, configuration_name, path / "plans.json", len(dataset["channel_names"]))
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
    log.info(
        "model %s: %s, configuration %s, folds %s, channels %s, %d classes, mirror axes %s, orientation %s",
        path, trainer_name, configuration_name, list(folds), list(model.channel_names), model.num_classes,
        mirror_axes, model.orientation,
    )
    return model

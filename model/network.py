"""Rebuild the segmentation network from an nnU-Net plans configuration (no nnunetv2 import needed).

The class named in the plans (default ``dynamic_network_architectures...PlainConvUNet``) is instantiated with
the plans' ``arch_kwargs``; kwargs listed in ``_kw_requires_import`` name classes (``torch.nn.Conv3d``, ...).
Every such name is looked up in an explicit table of the classes nnU-Net plans use (:data:`ALLOWED_CLASSES`):
no import and no attribute walking driven by the plans, so a crafted plans.json cannot reach other code
(``torch.nn.modules.module.torch.hub.load`` is just an unknown name).
"""

from __future__ import annotations

import logging

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from contract.errors import ModelFolderError
from model.model_folder import ModelFolder

log = logging.getLogger(__name__)

NETWORK_CLASSES: tuple[type, ...] = (PlainConvUNet, ResidualEncoderUNet)
"""Architectures the predictor builds: the U-Nets nnU-Net v2's planners write (input_channels, num_classes,
deep_supervision + arch_kwargs)."""

LAYER_CLASSES: tuple[type, ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.GroupNorm, nn.LayerNorm,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
)
"""The ``torch.nn`` conv / norm / dropout / nonlinearity classes plans name in ``arch_kwargs``."""


def _names(cls: type) -> tuple[str, ...]:
    """The dotted names a plans file may use for ``cls``: where it is defined, and its public alias."""
    names = [f"{cls.__module__}.{cls.__qualname__}"]
    if cls.__module__.startswith("torch.nn."):
        names.append(f"torch.nn.{cls.__name__}")
    return tuple(names)


ALLOWED_CLASSES: dict[str, type] = {name: cls for cls in (*NETWORK_CLASSES, *LAYER_CLASSES) for name in _names(cls)}
"""Exact dotted name -> class, e.g. ``torch.nn.modules.conv.Conv3d`` and ``torch.nn.Conv3d`` -> ``nn.Conv3d``."""


def locate(dotted_name: object, allowed: tuple[type, ...] | None = None) -> type:
    """The class named exactly ``dotted_name`` in :data:`ALLOWED_CLASSES` (optionally only among ``allowed``)."""
    cls = ALLOWED_CLASSES.get(dotted_name) if isinstance(dotted_name, str) else None
    if cls is None or (allowed is not None and cls not in allowed):
        raise ModelFolderError("plans.json", f"refusing class {dotted_name!r:.120}: not one of the allow-listed "
                                             "nnU-Net network and layer classes (model/network.py)")
    return cls


def build_network(model: ModelFolder) -> nn.Module:
    """Instantiate the network of ``model``'s configuration, without deep supervision, in eval mode.

    Input channels = number of ``dataset.json`` channels; output channels = number of labels (incl. background).
    """
    config = model.configuration
    kwargs = dict(config.arch_kwargs)
    try:
        for key in config.arch_kwargs_requiring_import:
            if kwargs.get(key) is not None:
                kwargs[key] = locate(kwargs[key], LAYER_CLASSES)
        network_class = locate(config.network_class_name, NETWORK_CLASSES)
    except ModelFolderError as err:
        raise ModelFolderError(model.path / "plans.json", err.problem) from None
    kwargs["deep_supervision"] = False
    try:
        network = network_class(input_channels=model.num_input_channels, num_classes=model.num_classes, **kwargs)
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError, AssertionError) as err:
        raise ModelFolderError(model.path / "plans.json", f"cannot build {config.network_class_name} from its "
                                                          f"arch_kwargs ({type(err).__name__}: {err})") from None
    return network.eval()


def load_fold_weights(network: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load one fold's state_dict into ``network`` (strict: every key must match)."""
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(first[:2])
        raise ModelFolderError(source, f"weights do not fit the network in plans.json ({detail})") from None

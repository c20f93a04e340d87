"""Rebuild the segmentation network from an nnU-Net plans configuration (no nnunetv2 import needed).

The class named in the plans (default ``dynamic_network_architectures...PlainConvUNet``) is instantiated with
the plans' ``arch_kwargs``; kwargs listed in ``_kw_requires_import`` name classes (``torch.nn.Conv3d``, ...) that
are imported here. Only classes from an allow-list of packages are imported, so a crafted plans.json cannot
make the predictor import arbitrary code.
"""

from __future__ import annotations

import importlib
import logging

import torch
from torch import nn

from contract.errors import ModelFolderError
from model.model_folder import ModelFolder

log = logging.getLogger(__name__)

ALLOWED_IMPORT_PREFIXES = ("dynamic_network_architectures.", "torch.nn.")


def locate(dotted_name: str) -> type:
    """Import ``package.module.Class`` from the allow-listed packages."""
    if not dotted_name.startswith(ALLOWED_IMPORT_PREFIXES):
        raise ModelFolderError("plans.json", f"refusing to import {dotted_name!r} (not in {ALLOWED_IMPORT_PREFIXES})")
    module_name, _, attr = dotted_name.rpartition(".")
    parts = module_name.split(".")
    # torch.nn.modules.conv.Conv3d and torch.nn.Conv3d are both valid: import the longest importable prefix.
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        try:
            for part in parts[end:] + [attr]:
                obj = getattr(obj, part)
        except AttributeError:
            break
        return obj
    raise ModelFolderError("plans.json", f"cannot import {dotted_name!r}")


def build_network(model: ModelFolder) -> nn.Module:
    """Instantiate the network of ``model``'s configuration, without deep supervision, in eval mode.

    Input channels = number of ``dataset.json`` channels; output channels = number of labels (incl. background).
    """
    config = model.configuration
    kwargs = dict(config.arch_kwargs)
    for key in config.arch_kwargs_requiring_import:
        if kwargs.get(key) is not None:
            kwargs[key] = locate(kwargs[key])
    network_class = locate(config.network_class_name)
    kwargs["deep_supervision"] = False
    try:
        network = network_class(input_channels=model.num_input_channels, num_classes=model.num_classes, **kwargs)
    except TypeError as err:
        raise ModelFolderError(model.path / "plans.json", f"cannot build {config.network_class_name}: {err}") from None
    return network.eval()


def load_fold_weights(network: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load one fold's state_dict into ``network`` (strict: every key must match)."""
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(first[:2])
        raise ModelFolderError(source, f"weights do not fit the network in plans.json ({detail})") from None

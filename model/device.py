"""Device selection and the matching autocast context."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """Return the device to run on.

    Args:
        requested: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: if CUDA is requested explicitly but not available.
    """
    if requested == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {requested!r} (use auto, cpu or cuda[:N])")
    log.info("device: %s", device)
    return device


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA (as nnU-Net does); full fp32 on the CPU, where fp16 autocast is slow or absent."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()

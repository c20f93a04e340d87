"""Loading nnU-Net checkpoints as data: ``torch.load(weights_only=True)`` with a short, explicit allow-list.

A ``.pth`` file is a pickle. Unpickled without restriction it can run any code (an object whose ``__reduce__``
calls ``os.system``), so a model folder copied from elsewhere could take over the machine. The safe unpickler
builds only tensors, containers and plain Python values, plus the types listed here: the numpy scalars and
dtypes that stock nnU-Net v2 checkpoints carry (``_best_ema`` and the training logs are ``np.float64`` /
``np.float32``). The optimiser state, grad-scaler state, ``torch.device`` and the plans in ``init_args`` are
already within what ``weights_only=True`` builds.

Anything else is refused (:class:`~contract.errors.ModelFolderError`, exit 4) unless the user passes
``--trust-model``, which loads the file with full unpickling: only for a model folder one trusts as code.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.errors import ModelFolderError

log = logging.getLogger(__name__)

_NUMPY_SCALAR_TYPES: tuple[type, ...] = (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64,
)

SAFE_CHECKPOINT_GLOBALS: list[Any] = [
    np.dtype,
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),  # the same function, as numpy 1.x pickles it
    *(type(np.dtype(t)) for t in _NUMPY_SCALAR_TYPES),  # numpy.dtypes.Float64DType, ...
]
"""What a checkpoint may contain beyond ``weights_only=True``'s own allow-list: numeric numpy scalars
(``numpy._core.multiarray.scalar`` rebuilds them from a dtype and bytes) and their dtypes. No numpy arrays, no
classes, no callables."""


def load_checkpoint(path: Path, trust_model: bool = False) -> Any:
    """Load a checkpoint on the CPU.

    Args:
        path: the ``.pth`` file.
        trust_model: load with full unpickling (``weights_only=False``): runs whatever the file says. Only
            for model folders trusted as code (``--trust-model``).

    Raises:
        ModelFolderError: naming ``path`` if the file cannot be read, or (untrusted) holds anything outside the
            allow-list; the message names the refused type.
    """
    if trust_model:
        log.warning("%s: loading with full unpickling (--trust-model): the file can run code", path)
    try:
        if trust_model:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if trust_model:
            raise ModelFolderError(path, f"cannot load checkpoint ({_first_line(err)})") from None
        raise ModelFolderError(
            path, f"checkpoint holds something other than weights and plain values ({_refused(err)}); refused "
            "(pass --trust-model only if you trust this model folder as code)") from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ModelFolderError(path, f"cannot load checkpoint ({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def _refused(err: BaseException) -> str:
    """What torch's long 'Weights only load failed' message says was refused, in a few words."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"but got <class '([^']+)'>", text)
    if found:
        return f"refused global {found.group(1)}"
    lines = [line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line]
    return (lines[0] if lines else _first_line(err))[:200]

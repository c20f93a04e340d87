"""Where the project's shared reference data lives: ``../shared`` beside the repository, or ``$HANSEG_SHARED_DIR``.

Nothing in the project names a machine's absolute path: training converters, tests and benchmarks find the shared
OpenKBP and MR data through :func:`shared_data_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "HANSEG_SHARED_DIR"


def shared_dir() -> Path:
    """The shared folder: ``$HANSEG_SHARED_DIR`` if set, else ``<repository>/../shared``."""
    value = os.environ.get(SHARED_ENV)
    return Path(value) if value else REPO_ROOT.parent / "shared"


def shared_data_dir() -> Path:
    """``<shared>/data`` (``openkbp_hn_ct``, ``openkbp_hn_ct_partial``, ``head_mr_t1``)."""
    return shared_dir() / "data"

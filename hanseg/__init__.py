"""HaN-Seg organ-at-risk segmentation as a library: ``segment(ct, mr, model) -> Result`` in memory.

``Model.load`` once, ``segment`` per case; ``Settings`` holds every option (validated); ``Result.labels`` is the
``uint8`` HaN-Seg label map on the CT's grid and ``Result.record`` the run record. ``process.py`` is the command
line over this API.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hanseg.api import Model, ModelIdentity, Result, segment  # noqa: E402
from hanseg.settings import Settings, SettingsError  # noqa: E402

__all__ = ["Model", "ModelIdentity", "Result", "Settings", "SettingsError", "__version__", "segment"]

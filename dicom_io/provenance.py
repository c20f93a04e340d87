"""Who made a DICOM output: this software's name and version, and the model folder's identity."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

SOFTWARE_NAME = "HaN-Seg OAR segmentation"
MANUFACTURER = "HaN-Seg OAR segmentation (open source)"
DISTRIBUTION = "hanseg-oar"
MODEL_FILES = ("plans.json", "dataset.json")


def software_version() -> str:
    """The installed package's version, else the ``version =`` line of ``pyproject.toml``, else ``unknown``."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        found = re.search(r'^version\s*=\s*"([^"]+)"', path.read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1) if found else "unknown"


@dataclass(frozen=True)
class Provenance:
    """Identification written into every DICOM output.

    Attributes:
        software_version: this software's version.
        model_name: the model folder's name (e.g. ``weights``).
        model_id: first 16 hex digits of the SHA-256 of the model's plans.json, dataset.json and fold checkpoints
            (in sorted path order): two outputs with the same id came from the same model files.
    """

    software_version: str
    model_name: str
    model_id: str

    @property
    def description(self) -> str:
        return f"{SOFTWARE_NAME} {self.software_version}, model {self.model_name} ({self.model_id})"


def model_identity(model_dir: Path) -> str:
    """SHA-256 (16 hex digits) over the model folder's plans.json, dataset.json and fold_*/checkpoint_*.pth."""
    digest = hashlib.sha256()
    files = [model_dir / name for name in MODEL_FILES] + sorted(model_dir.glob("fold_*/checkpoint_*.pth"))
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(model_dir)).encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def provenance_for(model_dir: Path) -> Provenance:
    return Provenance(software_version=software_version(), model_name=model_dir.resolve().name,
                      model_id=model_identity(model_dir))

"""Finding a case's input files: platform layout (with ``inputs.json``), local folders and HaN-Seg datasets.

Layouts:
- platform / local: ``ROOT/images/ct/<one image>`` and optionally ``ROOT/images/t1-mri/<one image>``; when
  ``ROOT/inputs.json`` exists (today's grand-challenge platform) its socket entries name the folders.
- dataset: ``ROOT/case_XX/case_XX_IMG_CT.nrrd`` (+ ``case_XX_IMG_MR_T1.nrrd``), one case per folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from contract.errors import InputError
from contract.imageio import SUPPORTED_EXTENSIONS, image_extension, image_stem

log = logging.getLogger(__name__)

CT_FOLDER = Path("images/ct")
MR_FOLDER = Path("images/t1-mri")
OUTPUT_FOLDER = Path("images/head_neck_oar")
CT_SLUGS = frozenset({"ct", "head-neck-ct", "ct-image"})
MR_SLUGS = frozenset({"t1-mri", "mri-t1", "t1-mr", "head-neck-t1-mri"})
DATASET_CT_SUFFIX = "_IMG_CT"
DATASET_MR_SUFFIX = "_IMG_MR_T1"


@dataclass(frozen=True)
class CaseInputs:
    """The files of one case. ``case_id`` names the output file."""

    case_id: str
    ct_path: Path
    mr_path: Path | None


def list_images(folder: Path) -> list[Path]:
    """Supported image files directly inside ``folder`` (hidden files and ``.raw`` companions skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_extension(p))


def _single_image(folder: Path, role: str, required: bool) -> Path | None:
    images = list_images(folder)
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(folder, f"expected exactly one {role} image, found {len(images)}: {names}")
    if images:
        return images[0]
    if required:
        if not folder.is_dir():
            raise InputError(folder, f"{role} folder does not exist")
        others = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        detail = f" (unsupported files: {', '.join(others[:5])})" if others else " (folder is empty)"
        raise InputError(
            folder, f"no {role} image found{detail}; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return None


def _folders_from_inputs_json(root: Path) -> tuple[Path, Path] | None:
    """CT and MR folders named by ``ROOT/inputs.json``, or None if it is absent or unusable."""
    path = root / "inputs.json"
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s: cannot parse (%s); using the folder layout", path, err)
        return None
    ct_folder, mr_folder = root / CT_FOLDER, root / MR_FOLDER
    if not isinstance(entries, list):
        log.warning("%s: expected a list of socket values; using the folder layout", path)
        return None
    for entry in entries:
        interface = entry.get("interface", {}) if isinstance(entry, dict) else {}
        slug = str(interface.get("slug", ""))
        relative = interface.get("relative_path") or entry.get("relative_path")
        if not relative:
            continue
        if slug in CT_SLUGS or Path(relative) == CT_FOLDER:
            ct_folder = root / relative
        elif slug in MR_SLUGS or Path(relative) == MR_FOLDER:
            mr_folder = root / relative
    log.info("inputs.json: CT from %s, MR from %s", ct_folder, mr_folder)
    return ct_folder, mr_folder


def find_folder_case(root: Path) -> CaseInputs:
    """The single case of a platform/local input root.

    Raises:
        InputError: no CT, two CTs, or two MRs.
    """
    folders = _folders_from_inputs_json(root) or (root / CT_FOLDER, root / MR_FOLDER)
    ct = _single_image(folders[0], "CT", required=True)
    assert ct is not None
    mr = _single_image(folders[1], "T1 MR", required=False)
    return CaseInputs(case_id=image_stem(ct), ct_path=ct, mr_path=mr)


def _dataset_image(case_dir: Path, suffix: str) -> Path | None:
    matches = [p for p in list_images(case_dir) if image_stem(p).endswith(suffix)]
    if len(matches) > 1:
        raise InputError(case_dir, f"more than one *{suffix} image: {', '.join(p.name for p in matches)}")
    return matches[0] if matches else None


def is_dataset_root(root: Path) -> bool:
    """True if ``root`` holds HaN-Seg-style case folders rather than an ``images/`` tree."""
    if (root / "images").is_dir():
        return False
    return any(
        p.is_dir() and any(image_stem(f).endswith(DATASET_CT_SUFFIX) for f in list_images(p))
        for p in root.iterdir()
    ) if root.is_dir() else False


def find_dataset_cases(root: Path) -> tuple[list[CaseInputs], list[tuple[Path, InputError]]]:
    """All case folders under ``root`` (sorted by name).

    Returns:
        the usable cases, and the case folders that could not be used with the reason.
    """
    cases: list[CaseInputs] = []
    problems: list[tuple[Path, InputError]] = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            ct = _dataset_image(case_dir, DATASET_CT_SUFFIX)
            if ct is None:
                if list_images(case_dir):
                    raise InputError(case_dir, f"no *{DATASET_CT_SUFFIX} image in the case folder")
                continue
            mr = _dataset_image(case_dir, DATASET_MR_SUFFIX)
        except InputError as err:
            problems.append((case_dir, err))
            continue
        cases.append(CaseInputs(case_id=case_dir.name, ct_path=ct, mr_path=mr))
    return cases, problems

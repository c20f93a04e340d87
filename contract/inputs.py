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

from contract.boundary import check_input_file, resolve_inside
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


MAX_INPUTS_JSON_BYTES = 1 * 2**20
"""Largest ``inputs.json`` read (the platform's is a few hundred bytes)."""
DICOM_MAGIC_OFFSET = 128


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` (not hidden), sorted; an unlistable folder is an input error."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise InputError(folder, f"cannot list folder ({err.strerror or err})") from None


def list_images(folder: Path) -> list[Path]:
    """Entries directly inside ``folder`` with a supported image extension (any case), hidden files and ``.raw``
    companions skipped. Entries that are not regular files (a FIFO, a dangling link) are listed too, so that
    :func:`contract.boundary.check_input_file` refuses them by name rather than reporting "no image"."""
    if not folder.is_dir():
        return []
    return [p for p in _entries(folder) if not p.is_dir() and image_extension(p)]


def _looks_like_dicom(path: Path) -> bool:
    """A regular file with the DICOM preamble's ``DICM`` marker at byte 128, or a ``.dcm`` name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _single_image(folder: Path, role: str, required: bool) -> Path | None:
    images = list_images(folder)
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(folder, f"expected exactly one {role} image, found {len(images)}: {names}")
    if images:
        return images[0]
    others = [p for p in _entries(folder) if p.is_file()] if folder.is_dir() else []
    dicom = [p for p in others if _looks_like_dicom(p)]
    if dicom:
        message = (f"holds {len(dicom)} DICOM file(s) ({dicom[0].name}, ...), which this reader does not take; "
                   f"convert the {role} series to one image file ({', '.join(SUPPORTED_EXTENSIONS)})")
        if required:
            raise InputError(folder, message)
        log.warning("%s: %s: predicting without it", folder, message)
        return None
    if required:
        if not folder.is_dir():
            raise InputError(folder, f"{role} folder does not exist")
        names = [p.name for p in others]
        detail = f" (unsupported files: {', '.join(names[:5])})" if names else " (folder is empty)"
        raise InputError(
            folder, f"no {role} image found{detail}; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return None


def _folders_from_inputs_json(root: Path) -> tuple[Path, Path] | None:
    """CT and MR folders named by ``ROOT/inputs.json``, or None if there is none.

    Schema (the platform's socket values): a list of objects; an object's ``interface`` is an object whose
    ``slug`` is a string and whose ``relative_path`` (or the entry's own) is a relative path string with no
    ``..``, resolving inside ``root``. Entries for other sockets are ignored.

    Raises:
        InputError: naming ``inputs.json`` for anything that does not fit the schema.
    """
    path = root / "inputs.json"
    if not path.exists():
        return None
    try:
        if path.stat().st_size > MAX_INPUTS_JSON_BYTES:
            raise InputError(path, f"larger than {MAX_INPUTS_JSON_BYTES // 2**20} MB")
        entries = json.loads(path.read_text())
    except RecursionError:
        raise InputError(path, "JSON nested too deeply") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot parse ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(entries, list):
        raise InputError(path, f"expected a list of socket values, got {type(entries).__name__}")
    ct_folder, mr_folder = root / CT_FOLDER, root / MR_FOLDER
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(path, f"entry {i} is {type(entry).__name__}, expected an object")
        interface = entry.get("interface", {})
        if not isinstance(interface, dict):
            raise InputError(path, f"entry {i}: interface is {type(interface).__name__}, expected an object")
        slug = interface.get("slug", "")
        relative = interface.get("relative_path", entry.get("relative_path"))
        if not isinstance(slug, str):
            raise InputError(path, f"entry {i}: slug is {type(slug).__name__}, expected a string")
        if relative is None:
            continue
        if not isinstance(relative, str) or not relative:
            raise InputError(path, f"entry {i}: relative_path must be a non-empty string, got {relative!r:.60}")
        relative_path = Path(relative)
        if relative_path.is_absolute() or ".." in relative_path.parts:
            raise InputError(path, f"entry {i}: relative_path {relative!r:.80} must stay inside the input folder")
        if slug in CT_SLUGS or relative_path == CT_FOLDER:
            ct_folder = root / relative_path
        elif slug in MR_SLUGS or relative_path == MR_FOLDER:
            mr_folder = root / relative_path
        else:
            continue
        if (root / relative_path).exists():
            resolve_inside(root / relative_path, root, f"inputs.json entry {i} folder")
    log.info("inputs.json: CT from %s, MR from %s", ct_folder, mr_folder)
    return ct_folder, mr_folder


def find_folder_case(root: Path) -> CaseInputs:
    """The single case of a platform/local input root.

    Raises:
        InputError: no CT, two CTs, or two MRs.
    """
    folders = _folders_from_inputs_json(root) or (root / CT_FOLDER, root / MR_FOLDER)
    for folder, role in zip(folders, ("CT", "T1 MR")):
        if folder.exists():
            resolve_inside(folder, root, f"{role} folder")
    ct = _single_image(folders[0], "CT", required=True)
    assert ct is not None
    mr = _single_image(folders[1], "T1 MR", required=False)
    check_input_file(ct, root, "CT")
    if mr is not None:
        check_input_file(mr, root, "T1 MR")
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
        for p in _entries(root)
    ) if root.is_dir() else False


def find_dataset_cases(root: Path) -> tuple[list[CaseInputs], list[tuple[Path, InputError]]]:
    """All case folders under ``root`` (sorted by name).

    Returns:
        the usable cases, and the case folders that could not be used with the reason.
    """
    cases: list[CaseInputs] = []
    problems: list[tuple[Path, InputError]] = []
    for case_dir in (p for p in _entries(root) if p.is_dir()):
        try:
            resolve_inside(case_dir, root, "case folder")
            ct = _dataset_image(case_dir, DATASET_CT_SUFFIX)
            if ct is None:
                if list_images(case_dir):
                    raise InputError(case_dir, f"no *{DATASET_CT_SUFFIX} image in the case folder")
                continue
            mr = _dataset_image(case_dir, DATASET_MR_SUFFIX)
            check_input_file(ct, root, "CT")
            if mr is not None:
                check_input_file(mr, root, "T1 MR")
        except InputError as err:
            problems.append((case_dir, err))
            continue
        cases.append(CaseInputs(case_id=case_dir.name, ct_path=ct, mr_path=mr))
    return cases, problems

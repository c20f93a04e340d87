"""The ``--output-type`` choices, and one case's DICOM outputs written atomically.

Layout, in every mode: ``OUTPUT/dicom/<case_id>/RTSTRUCT.dcm`` and ``SEG.dcm``; when the input CT was not DICOM,
also ``OUTPUT/dicom/<case_id>/CT/CT_0001.dcm ...``, the CT written as a new study that the outputs reference.
The folder is filled under a hidden temporary name and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from contract.errors import OutputError
from dicom_io.provenance import Provenance

log = logging.getLogger(__name__)

OUTPUT_TYPES: tuple[str, ...] = ("mha", "rtstruct", "dicom-seg")
DEFAULT_OUTPUT_TYPES = frozenset({"mha"})
DICOM_FOLDER = Path("dicom")
RTSTRUCT_NAME = "RTSTRUCT.dcm"
SEG_NAME = "SEG.dcm"
CT_FOLDER_NAME = "CT"


def parse_output_types(text: str) -> frozenset[str]:
    """``"mha,rtstruct"`` -> ``{"mha", "rtstruct"}``.

    Raises:
        ValueError: naming an unknown type, or if the list is empty.
    """
    kinds = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [k for k in kinds if k not in OUTPUT_TYPES]
    if unknown or not kinds:
        raise ValueError(f"--output-type: {', '.join(unknown) or 'nothing'} is not one of {', '.join(OUTPUT_TYPES)}")
    return frozenset(kinds)


def wants_dicom(kinds: Iterable[str]) -> bool:
    return bool(set(kinds) & {"rtstruct", "dicom-seg"})


def case_dicom_folder(output_root: Path, case_id: str) -> Path:
    return output_root / DICOM_FOLDER / case_id


def write_dicom_outputs(labels: sitk.Image, ct: sitk.Image, ct_headers: Sequence[Dataset] | None, folder: Path,
                        kinds: Iterable[str], provenance: Provenance, case_id: str) -> list[Path]:
    """Write the RTSTRUCT and / or DICOM-SEG of one case into ``folder`` (replaced whole, atomically).

    Args:
        labels: the uint8 label map on the CT grid.
        ct: the CT as the case read it (its geometry places the contours).
        ct_headers: the CT series' datasets in slice order (image z), or None if the CT was not DICOM: then it is
            written as a DICOM series into ``folder/CT`` first and the outputs reference that.
        folder: ``OUTPUT/dicom/<case_id>``.
        kinds: the output types asked for (``rtstruct``, ``dicom-seg``; others ignored).
        provenance: software and model identity.

    Returns:
        The files written (final paths).

    Raises:
        OutputError: naming the folder if it cannot be written; nothing is left behind.
    """
    from dicom_io.ct_writer import write_ct_series
    from dicom_io.rtstruct import build_rtstruct
    from dicom_io.seg import build_seg

    kinds = set(kinds)
    array = sitk.GetArrayFromImage(labels).astype(np.uint8)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    except OSError as err:
        raise OutputError(folder.parent, f"output folder is not writable ({err.strerror or err})") from None
    try:
        written = []
        if ct_headers is None:
            ct_files = write_ct_series(ct, staging / CT_FOLDER_NAME, case_id)
            ct_headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files]
            written += [folder / CT_FOLDER_NAME / p.name for p in ct_files]
        if "rtstruct" in kinds:
            build_rtstruct(array, ct, ct_headers, provenance).save_as(staging / RTSTRUCT_NAME,
                                                                      enforce_file_format=True)
            written.append(folder / RTSTRUCT_NAME)
        if "dicom-seg" in kinds:
            build_seg(array, ct_headers, provenance).save_as(staging / SEG_NAME, enforce_file_format=True)
            written.append(folder / SEG_NAME)
        _replace_folder(staging, folder)
    except (OSError, RuntimeError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(folder, f"cannot write the DICOM outputs ({str(err).strip()[:200]})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("DICOM outputs: %s", ", ".join(str(p) for p in written if p.parent == folder))
    return written


def _replace_folder(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an existing ``folder`` is moved aside first and removed after."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(staging, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

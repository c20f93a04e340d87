"""DICOM inputs as cases: one study (a folder or .zip), or a dataset (a folder of study folders / .zip files).

A folder is a DICOM dataset when it holds no DICOM file itself, and at least two of its sub-folders (or .zip
files) are studies: every .zip counts as one, and a sub-folder counts when it holds a CT whose StudyInstanceUID no
other sub-folder's CT has (so a study split into CT/ and MR/ sub-folders, or one with two CT series in two
sub-folders, stays one case). A case is run by reading its series into images in a temporary folder
(:func:`materialise`), which the ordinary pipeline then reads like any other case.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pydicom
import SimpleITK as sitk

from contract.inputs import CaseInputs
from dicom_io.discovery import DicomStudy, dicom_files, is_dicom_file
from dicom_io.reader import read_series

log = logging.getLogger(__name__)


def case_id_of(path: Path) -> str:
    """Output name of a DICOM case: the folder's name, or the .zip's name without ``.zip``."""
    return path.stem if path.is_file() else path.resolve().name


def dataset_studies(root: Path) -> list[Path] | None:
    """The study folders / .zip files of a DICOM dataset root, or None if ``root`` is one study."""
    if not root.is_dir():
        return None
    entries = sorted(p for p in root.iterdir() if not p.name.startswith(".") and not p.is_symlink())
    if any(p.is_file() and is_dicom_file(p) for p in entries):
        return None
    children = [p for p in entries if p.is_dir() or p.suffix.lower() == ".zip"]
    studies: list[Path] = []
    ct_studies: set[str] = set()
    for child in children:
        if child.is_file():
            studies.append(child)
            continue
        study_uid = _first_ct_study(child)
        if study_uid is None:
            continue
        if study_uid in ct_studies:
            return None
        ct_studies.add(study_uid)
        studies.append(child)
    if len(studies) < 2:
        return None
    # sub-folders without a CT (an MR-only study, say) are cases too: they fail with "no CT series"
    return [c for c in children if c in studies or any(True for _ in dicom_files(c, limit=1))]


def _first_ct_study(folder: Path) -> str | None:
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["Modality", "StudyInstanceUID", "SOPClassUID"])
        except Exception:  # noqa: BLE001 - a corrupt file is reported when the case is read
            continue
        if str(getattr(ds, "Modality", "")) == "CT" and "StudyInstanceUID" in ds:
            return str(ds.StudyInstanceUID)
    return None


def materialise(study: DicomStudy, folder: Path) -> CaseInputs:
    """Read the study's CT (and MR) series and write them as ``folder/<case>_CT.mha`` (``_MR.mha``).

    Raises:
        InputError: naming the series, if its pixel data cannot be read.
    """
    ct_path = folder / f"{study.case_id}_CT.mha"
    sitk.WriteImage(read_series(study.ct, "CT"), str(ct_path))
    mr_path = None
    if study.mr is not None:
        mr_path = folder / f"{study.case_id}_MR.mha"
        sitk.WriteImage(read_series(study.mr, "T1 MR"), str(mr_path))
    log.debug("case %s materialised in %s (%d bytes)", study.case_id, folder,
              sum(os.path.getsize(p) for p in (ct_path, mr_path) if p is not None))
    return CaseInputs(case_id=study.case_id, ct_path=ct_path, mr_path=mr_path)

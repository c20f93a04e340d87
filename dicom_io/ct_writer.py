"""A CT image written as a DICOM CT series with SimpleITK's series writer (GDCM), for .mha/.nrrd input.

So that an RTSTRUCT / DICOM-SEG made from a non-DICOM CT is self-consistent, the CT is written as a new study
(new Study / Series / Frame of Reference UIDs, patient "HANSEG^ANONYMOUS" unless given) and the outputs
reference it. This follows SimpleITK's documented recipe for writing a series slice by slice (the
"DicomSeriesFromArray" example): each slice is extracted, tagged (position, orientation, instance number) and
written with ``KeepOriginalImageUID`` so the UIDs set here are kept. HU are stored as int16 with
RescaleSlope 1 and RescaleIntercept 0 (values rounded; a CT in HU is integral).
"""

from __future__ import annotations

import datetime as dt
import locale
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@contextmanager
def preserved_locale() -> Iterator[None]:
    """Restore the process locale after SimpleITK's GDCM DICOM writer, which sets LC_CTYPE to "C" and leaves it
    (measured: Python's default text encoding turned from UTF-8 to ASCII after one slice was written)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


@dataclass(frozen=True)
class NewStudy:
    """Identity of the study created around a non-DICOM CT."""

    patient_name: str = "HANSEG^ANONYMOUS"
    patient_id: str = "HANSEG"
    study_description: str = "HaN-Seg OAR segmentation (CT converted from a non-DICOM image)"
    series_description: str = "CT (converted for HaN-Seg outputs)"


def write_ct_series(ct: sitk.Image, folder: Path, case_id: str, study: NewStudy | None = None) -> list[Path]:
    """Write ``ct`` (HU) as one DICOM file per slice ``folder/CT_0001.dcm ...`` (slice 1 = image index z 0).

    Returns:
        the files, in slice order (ascending image z).
    """
    study = study or NewStudy()
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    values = sitk.GetArrayFromImage(ct)
    image = sitk.GetImageFromArray(np.clip(np.rint(values), -32768, 32767).astype(np.int16))
    image.CopyInformation(ct)
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10g}" for v in np.concatenate([direction[:, 0], direction[:, 1]]))
    spacing = ct.GetSpacing()
    common = {
        "0008|0016": CT_IMAGE_STORAGE,
        "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY\\AXIAL",
        "0008|0020": now.strftime("%Y%m%d"), "0008|0030": now.strftime("%H%M%S"),
        "0008|0021": now.strftime("%Y%m%d"), "0008|0031": now.strftime("%H%M%S"),
        "0008|0050": "", "0008|0090": "", "0008|0070": "HaN-Seg OAR segmentation (converted image)",
        "0018|0060": "", "0020|0012": "1", "0020|0060": "", "0018|5100": "",
        "0008|1030": study.study_description, "0008|103e": study.series_description,
        "0010|0010": study.patient_name, "0010|0020": study.patient_id, "0010|0030": "", "0010|0040": "",
        "0018|0050": f"{spacing[2]:.10g}",
        "0020|000d": generate_uid(), "0020|000e": generate_uid(), "0020|0052": generate_uid(),
        "0020|0010": case_id[:16], "0020|0011": "1", "0020|1040": "",
        "0020|0037": orientation,
        "0028|0030": f"{spacing[1]:.10g}\\{spacing[0]:.10g}",
        "0028|1052": "0", "0028|1053": "1", "0028|1054": "HU",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    with preserved_locale():
        _write_slices(image, ct, folder, common, writer, paths)
    log.info("CT written as a DICOM series of %d slices in %s", len(paths), folder)
    return paths


def _write_slices(image: sitk.Image, ct: sitk.Image, folder: Path, common: dict[str, str],
                  writer: sitk.ImageFileWriter, paths: list[Path]) -> None:
    for k in range(image.GetSize()[2]):
        plane = image[:, :, k]
        for tag, value in common.items():
            plane.SetMetaData(tag, value)
        position = ct.TransformIndexToPhysicalPoint((0, 0, k))
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0008|0018", generate_uid())
        path = folder / f"CT_{k + 1:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(plane)
        paths.append(path)

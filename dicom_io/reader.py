"""Reading a checked DICOM series into a SimpleITK image.

Pixel values come from SimpleITK's GDCM reader, which applies RescaleSlope / RescaleIntercept (CT: HU). The
geometry is set from the series' own ImagePositionPatient / ImageOrientationPatient as checked by
:mod:`dicom_io.geometry`: origin = position of the first slice along the normal, direction columns = (row
direction, column direction, normal), spacing = (column spacing, row spacing, slice gap) in mm. So image index
(x, y, z) = (column, row, slice number in ascending normal order), and numpy (z, y, x) slice k is the k-th file of
:attr:`DicomSeries.paths`.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import SimpleITK as sitk

from contract.errors import InputError
from dicom_io.discovery import DicomSeries

log = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def check_pixel_data(series: DicomSeries) -> None:
    """Refuse a file whose pixel data is missing or shorter than rows x columns x bytes (a truncated copy).

    Raises:
        InputError: naming the file.
    """
    for path, header in zip(series.paths, series.headers):
        try:
            ds = pydicom.dcmread(path, defer_size=None)
            syntax = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else ""
            data = ds.PixelData if "PixelData" in ds else None
        except Exception as err:  # noqa: BLE001 - any parser failure on an input file is a bad input
            raise InputError(path, f"{series.label}: corrupt DICOM file ({type(err).__name__}: "
                             f"{str(err)[:120]})") from None
        if data is None:
            raise InputError(path, f"{series.label}: the file has no pixel data")
        if syntax in UNCOMPRESSED_SYNTAXES:
            expected = int(header.Rows) * int(header.Columns) * int(header.BitsAllocated) // 8
            if len(data) < expected:
                raise InputError(path, f"{series.label}: truncated pixel data ({len(data)} of {expected} bytes)")


def read_series(series: DicomSeries, role: str = "CT") -> sitk.Image:
    """The series as a 3-D SimpleITK image (float32 for MR, the reader's type for CT: HU after rescale).

    Raises:
        InputError: naming the series, if a file's pixel data is truncated or cannot be decoded.
    """
    geometry = series.check()
    check_pixel_data(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.paths])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise InputError(None, f"{series.label}: cannot read the pixel data "
                         f"({(lines[-1] if lines else 'reader error').strip()[:160]})") from None
    if image.GetSize() != geometry.size:
        raise InputError(None, f"{series.label}: read {image.GetSize()} voxels, the headers say {geometry.size}")
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    if role != "CT":
        image = sitk.Cast(image, sitk.sitkFloat32)
    log.info("%s: %s, size %s, spacing %s mm, %s", role, series.label, image.GetSize(),
             tuple(round(s, 3) for s in image.GetSpacing()), _value_range(image))
    return image


def _value_range(image: sitk.Image) -> str:
    values = sitk.GetArrayViewFromImage(image)
    return f"values {float(np.min(values)):g}..{float(np.max(values)):g}"


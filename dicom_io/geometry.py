"""Checking one DICOM image series and sorting its slices along the slice normal.

A series is usable when its slices are single-frame, single-sample images of one size, pixel spacing and
orientation (ImageOrientationPatient), stacked along the normal row x column with uniform spacing and no
in-plane shift (a shift is what a gantry tilt leaves). Positions are ImagePositionPatient, in mm, patient LPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from contract.errors import InputError

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference between two slices' direction cosines still taken as the same orientation."""

POSITION_TOLERANCE_MM = 0.05
"""Smallest slice distance still two slices (closer: duplicated), and largest in-plane drift of slice positions."""

SPACING_TOLERANCE = 0.02
"""Largest deviation of one slice gap from the median gap, as a fraction of the median (non-uniform spacing)."""

MISSING_SLICE_FACTOR = 1.5
"""A gap this many times the median gap (or more) means slices are missing."""

DECODABLE_TRANSFER_SYNTAXES: frozenset[str] = frozenset({
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
})
"""Transfer syntaxes that SimpleITK's GDCM reader decodes."""


@dataclass(frozen=True)
class SliceGeometry:
    """A checked series' geometry. Vectors are patient LPS; spacing is (column, row, slice) in mm, i.e.
    SimpleITK's (x, y, z) order.

    Attributes:
        order: indices into the series' file list, sorted by position along ``normal`` (ascending).
        origin: ImagePositionPatient of the first slice in ``order`` (centre of its first voxel).
        row_direction, column_direction: ImageOrientationPatient's two unit vectors (along a row, down a column).
        normal: row_direction x column_direction, the direction in which slices follow each other.
        spacing: (column spacing, row spacing, slice gap) in mm.
        size: (columns, rows, slices).
    """

    order: tuple[int, ...]
    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    normal: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]

    @property
    def direction(self) -> tuple[float, ...]:
        """SimpleITK direction matrix (row-major 3x3, columns = image x, y, z axes)."""
        return tuple(float(v) for v in np.column_stack([self.row_direction, self.column_direction,
                                                        self.normal]).ravel())


def transfer_syntax_name(uid: str) -> str:
    """``'1.2.840.10008.1.2.4.201 (High-Throughput JPEG 2000 Image Compression (Lossless Only))'``."""
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else uid


def check_series(label: str, paths: list[Path], headers: list[Dataset]) -> SliceGeometry:
    """Check that a series is one uniform stack of slices and return its geometry.

    Args:
        label: how messages name the series (``series <UID> (<description>)``).
        paths: the series' files, in any order.
        headers: their datasets (pixel data not needed), same order as ``paths``.

    Raises:
        InputError: naming the series (or the file), for multi-frame or multi-sample images, an undecodable
            transfer syntax, mixed sizes / spacings / orientations, duplicated or missing slices, non-uniform
            slice spacing, or slice positions off the slice normal (gantry tilt).
    """
    if len(headers) < 3:
        raise InputError(None, f"{label}: only {len(headers)} slice(s); a 3-D series needs at least 3")
    for path, ds in zip(paths, headers):
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
        if syntax not in DECODABLE_TRANSFER_SYNTAXES:
            raise InputError(path, f"{label}: transfer syntax {transfer_syntax_name(syntax)} cannot be decoded")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise InputError(path, f"{label}: multi-frame images are not supported (NumberOfFrames "
                             f"{ds.NumberOfFrames}); export the series as single-frame slices")
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise InputError(path, f"{label}: {ds.SamplesPerPixel} samples per pixel (colour); expected greyscale")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if keyword not in ds or ds[keyword].value in (None, ""):
                raise InputError(path, f"{label}: {keyword} is missing: the slice has no patient geometry")
    _check_same(label, paths, [(int(ds.Rows), int(ds.Columns)) for ds in headers], "image size (rows, columns)",
                0)
    _check_same(label, paths, [tuple(float(v) for v in ds.PixelSpacing) for ds in headers], "pixel spacing",
                1e-4)
    _check_same(label, paths, [tuple(float(v) for v in ds.ImageOrientationPatient) for ds in headers],
                "orientation (ImageOrientationPatient): mixed orientations", ORIENTATION_TOLERANCE)
    iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(paths[0], f"{label}: ImageOrientationPatient {tuple(iop)} is not two orthonormal vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    sorted_paths = [paths[i] for i in order]
    gaps = np.diff(along)
    close = np.flatnonzero(gaps < POSITION_TOLERANCE_MM)
    if close.size:
        i = int(close[0])
        raise InputError(None, f"{label}: duplicated slice at {along[i]:.2f} mm along the slice normal "
                         f"({sorted_paths[i].name} and {sorted_paths[i + 1].name})")
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    worst = float(np.abs(drift).max())
    if worst > POSITION_TOLERANCE_MM:
        tilt = getattr(headers[0], "GantryDetectorTilt", None)
        tilt_text = f", GantryDetectorTilt {float(tilt):g} deg" if tilt not in (None, "") else ""
        raise InputError(None, f"{label}: slice positions drift {worst:.2f} mm off the slice normal (gantry tilt"
                         f"{tilt_text}); tilted series are not supported: reconstruct without tilt")
    median = float(np.median(gaps))
    missing = np.flatnonzero(gaps >= MISSING_SLICE_FACTOR * median)
    if missing.size:
        i = int(missing[0])
        raise InputError(None, f"{label}: missing slice(s): gap of {gaps[i]:.2f} mm between "
                         f"{sorted_paths[i].name} and {sorted_paths[i + 1].name} (slice spacing {median:.2f} mm)")
    deviation = float(np.abs(gaps - median).max())
    if deviation > max(SPACING_TOLERANCE * median, POSITION_TOLERANCE_MM / 10):
        raise InputError(None, f"{label}: non-uniform slice spacing: gaps from {gaps.min():.3f} to "
                         f"{gaps.max():.3f} mm (tolerance {SPACING_TOLERANCE:.0%} of {median:.3f} mm)")
    spacing_row, spacing_col = (float(v) for v in headers[0].PixelSpacing)  # (between rows, between columns)
    slice_gap = float((along[-1] - along[0]) / (len(along) - 1))
    return SliceGeometry(
        order=tuple(int(i) for i in order),
        origin=tuple(float(v) for v in positions[0]),
        row_direction=tuple(float(v) for v in row),
        column_direction=tuple(float(v) for v in col),
        normal=tuple(float(v) for v in normal),
        spacing=(spacing_col, spacing_row, slice_gap),
        size=(int(headers[0].Columns), int(headers[0].Rows), len(headers)),
    )


def _check_same(label: str, paths: list[Path], values: list[tuple], what: str, tolerance: float) -> None:
    first = np.asarray(values[0], dtype=float)
    for path, value in zip(paths, values):
        if np.abs(np.asarray(value, dtype=float) - first).max() > tolerance:
            raise InputError(path, f"{label}: {what} differ between slices: {tuple(value)} here, "
                             f"{tuple(values[0])} in {paths[0].name}")

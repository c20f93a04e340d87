"""Reading input images with validation, and writing the output label map atomically.

Axis conventions: SimpleITK images are indexed (x, y, z); ``sitk.GetArrayFromImage`` returns numpy arrays
indexed (z, y, x). Spacing and origin are in millimetres, in SimpleITK's (x, y, z) order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from contract.atomic import write_atomic
from contract.errors import InputError

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".mha", ".mhd", ".nrrd", ".nii.gz", ".nii", ".tif", ".tiff")
"""Image file extensions accepted as input (matched case-insensitively, longest first)."""

MAX_SPACING_MM = 20.0
"""Largest voxel spacing accepted on any axis; anything coarser is not a planning image."""

MIN_EXTENT_MM = 20.0
"""Smallest physical extent (size x spacing) accepted on any axis: a head-and-neck image is far larger."""

MAX_NONFINITE_FRACTION = 0.01
"""Up to this fraction of NaN/inf voxels is repaired (set to the image minimum) with a warning; more is refused."""


def image_extension(path: str | Path) -> str | None:
    """Return the supported extension of ``path`` (e.g. ``.nii.gz``), or None if it is not supported."""
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def image_stem(path: str | Path) -> str:
    """File name without its (possibly double) image extension: ``case_01_IMG_CT.nii.gz`` -> ``case_01_IMG_CT``."""
    name = Path(path).name
    ext = image_extension(path)
    return name[: -len(ext)] if ext else Path(path).stem


def read_image(path: str | Path, role: str = "image") -> sitk.Image:
    """Read a 3-D scalar image and check it is usable.

    Args:
        path: the image file.
        role: what the image is ("CT", "MR"), used in messages.

    Returns:
        The image as read, as a float32 (MR) or its stored pixel type.

    Raises:
        InputError: naming ``path``, if the file is missing, of an unsupported type, unreadable, not 3-D,
            not scalar (vector/RGB), has a non-positive or absurd spacing, or has no finite voxel.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{role} file does not exist")
    if image_extension(path) is None:
        raise InputError(
            path, f"unsupported {role} file type; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        reason = next((line for line in reversed(detail) if line.strip()), "unknown reader error")
        raise InputError(path, f"cannot read {role} image ({reason.strip()[:200]})") from None
    check_image(image, path, role)
    return image


def read_scan(path: str | Path, role: str) -> sitk.Image:
    """Read a patient scan given to the algorithm (CT or MR): :func:`read_image`, then :func:`validate_scan`."""
    return validate_scan(read_image(path, role), path, role)


def validate_scan(image: sitk.Image, path: str | Path | None, role: str) -> sitk.Image:
    """The one validator of a patient scan, read from a file or given in memory: :func:`check_image` (3-D,
    scalar, spacing, direction), a minimum physical extent (:func:`check_extent`) and usable intensities
    (:func:`repair_intensities`). ``path`` names the image in messages (None: in memory).

    Returns:
        the image, or a copy with a few non-finite voxels repaired.
    """
    check_image(image, path, role)
    check_extent(image, path, role)
    return repair_intensities(image, path, role)


def check_image(image: sitk.Image, path: str | Path | None, role: str = "image") -> None:
    """Validate an already-read image (see :func:`read_image` for the rules)."""
    if image.GetDimension() != 3:
        raise InputError(path, f"{role} must be a 3-D image, got {image.GetDimension()}-D size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path,
            f"{role} must have one value per voxel, got {image.GetNumberOfComponentsPerPixel()} "
            "(vector or RGB image)",
        )
    if min(image.GetSize()) < 2:
        raise InputError(path, f"{role} must have at least 2 voxels on each axis, got size {image.GetSize()}")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(
            path, f"{role} has an invalid voxel spacing {tuple(spacing)} mm (expected 0 < spacing <= {MAX_SPACING_MM})"
        )
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.isfinite(direction).all() or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(path, f"{role} has a degenerate direction matrix {tuple(direction.ravel())}")


def write_image_atomic(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write ``image`` to ``path`` so that ``path`` either holds the complete file or does not exist
    (:func:`contract.atomic.write_atomic`).

    Raises:
        OutputError: naming ``path`` (or its folder) if the folder cannot be created or written (permissions,
            full disk).
    """
    write_atomic(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress), what="output image")
    log.info("wrote %s", path)


def check_extent(image: sitk.Image, path: str | Path | None, role: str = "image") -> None:
    """Refuse a scan smaller than ``MIN_EXTENT_MM`` along any axis (physical size = voxels x spacing)."""
    extent = np.asarray(image.GetSpacing()) * np.asarray(image.GetSize())
    if np.any(extent < MIN_EXTENT_MM):
        covered = tuple(round(float(e), 1) for e in extent)
        raise InputError(path, f"{role} covers only {covered} mm (x, y, z); at least {MIN_EXTENT_MM} mm per axis")


def repair_intensities(image: sitk.Image, path: str | Path | None, role: str = "image") -> sitk.Image:
    """Refuse images without usable intensities; repair a few non-finite voxels.

    NaN/inf voxels (float images only) are replaced by the smallest finite value (air, for a CT) with a warning
    if they are at most ``MAX_NONFINITE_FRACTION`` of the image. A constant image carries no anatomy.

    Raises:
        InputError: naming ``path`` if too many voxels are non-finite or the image is constant.
    """
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        n_bad = int(values.size - np.count_nonzero(finite))
        if n_bad:
            fraction = n_bad / values.size
            if fraction > MAX_NONFINITE_FRACTION or n_bad == values.size:
                raise InputError(path, f"{role} has {n_bad} NaN/inf voxels ({fraction:.1%} of the image)")
            fill = float(values[finite].min())
            log.warning("%s: %d NaN/inf voxels (%.3f%%) set to %g", path, n_bad, 100 * fraction, fill)
            repaired = np.where(finite, values, fill).astype(values.dtype)
            fixed = sitk.GetImageFromArray(repaired)
            fixed.CopyInformation(image)
            image, values = fixed, sitk.GetArrayViewFromImage(fixed)
    low, high = values.min(), values.max()
    if low == high:
        raise InputError(path, f"{role} is constant (every voxel is {low}): no anatomy to segment")
    return image

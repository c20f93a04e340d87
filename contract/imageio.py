"""Reading input images with validation, and writing the output label map atomically.

Axis conventions: SimpleITK images are indexed (x, y, z); ``sitk.GetArrayFromImage`` returns numpy arrays
indexed (z, y, x). Spacing and origin are in millimetres, in SimpleITK's (x, y, z) order.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
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
"""Up to this fraction of NaN/inf voxels is repaired (set to the image minimum) with a warning; more is refused.
Only for the CT: an MR with any non-finite voxel is dropped (the case is predicted from the CT alone)."""

MAX_IMAGE_VOXELS = 2**29
"""Largest image accepted, checked from the header before any pixel is read: 536,870,912 voxels (1024 x 1024 x
512; a HaN-Seg CT is 1024 x 1024 x ~300). A small compressed file can claim far more (a "bomb")."""

MIN_VOXELS_PER_AXIS = 4
"""Fewest voxels a CT or MR may have along any axis (a 2-slice or 3 x 3 x 3 "scan" is not a planning image)."""

DIRECTION_TOLERANCE = 1e-3
"""Largest deviation of direction^T x direction from the identity: the axes must be orthonormal."""

CT_PIXEL_TYPES = {
    sitk.sitkInt16: "int16", sitk.sitkInt32: "int32", sitk.sitkInt64: "int64",
    sitk.sitkFloat32: "float32", sitk.sitkFloat64: "float64",
}
"""Pixel types that hold Hounsfield units (-1024 .. 3071) as stored. 8-bit and unsigned types do not: a CT
stored in one must carry a rescale to HU in its header (NIfTI scl_slope/scl_inter, which ITK applies and
returns as float)."""

COMPLEX_PIXEL_TYPES = frozenset({sitk.sitkComplexFloat32, sitk.sitkComplexFloat64})

FLOAT32_MAX = float(np.finfo(np.float32).max)

_IMAGE_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO", ".nii.gz": "NiftiImageIO",
             ".nii": "NiftiImageIO", ".tif": "TIFFImageIO", ".tiff": "TIFFImageIO"}
"""The one ITK reader each extension is read with: the format follows the name, never the content's guess."""


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

    The header is read first (:func:`check_header`: dimension, components, pixel type, voxel count) and the
    pixels only if it passes. The ITK reader is chosen by the extension, matched case-insensitively.

    Args:
        path: the image file.
        role: what the image is ("CT", "MR"), used in messages.

    Returns:
        The image as read, in its stored pixel type.

    Raises:
        InputError: naming ``path``, if the file is missing, of an unsupported type, unreadable, too large,
            not 3-D, not scalar (vector/RGB/complex), has a non-positive or absurd spacing or a direction
            matrix whose axes are not orthonormal.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{role} file does not exist")
    ext = image_extension(path)
    if ext is None:
        raise InputError(
            path, f"unsupported {role} file type; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    with _reader_path(path, ext) as readable:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(readable))
        reader.SetImageIO(_IMAGE_IO[ext])
        try:
            reader.ReadImageInformation()
            check_header(reader, path, role)
            image = reader.Execute()
        except RuntimeError as err:
            detail = str(err).strip().splitlines()
            reason = next((line for line in reversed(detail) if line.strip()), "unknown reader error")
            raise InputError(path, f"cannot read {role} image ({reason.strip()[:200]})") from None
    check_image(image, path, role)
    return image


@contextlib.contextmanager
def _reader_path(path: Path, ext: str) -> Iterator[Path]:
    """A path ITK's reader accepts for ``path``. NIfTI's library refuses a mixed-case extension (``ct.Nii.gz``):
    such a file is read through a lower-case symlink in a private temporary folder."""
    if _IMAGE_IO[ext] != "NiftiImageIO" or path.name.endswith(ext):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hanseg-read-") as tmp:
        link = Path(tmp) / f"image{ext}"
        link.symlink_to(path.resolve())
        yield link


def check_header(reader: sitk.ImageFileReader, path: str | Path, role: str = "image") -> None:
    """Refuse, from the header alone, an image that is not 3-D scalar real-valued or has too many voxels."""
    size = reader.GetSize()
    if len(size) != 3:
        raise InputError(path, f"{role} must be a 3-D image, got {len(size)}-D size {size}")
    if reader.GetPixelID() in COMPLEX_PIXEL_TYPES or "complex" in sitk.GetPixelIDValueAsString(reader.GetPixelID()):
        raise InputError(path, f"{role} has complex voxels; a real-valued scalar image is needed")
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"{role} must have one value per voxel, got {reader.GetNumberOfComponents()} "
                               "(a vector or RGB image, or complex)")
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > MAX_IMAGE_VOXELS:
        raise InputError(path, f"{role} header claims {size[0]} x {size[1]} x {size[2]} = {voxels:,} voxels; at most "
                               f"{MAX_IMAGE_VOXELS:,} are read")


def read_scan(path: str | Path, role: str) -> sitk.Image:
    """Read a patient scan given to the algorithm (CT or MR): :func:`read_image`, then :func:`validate_scan`."""
    return validate_scan(read_image(path, role), path, role)


def validate_scan(image: sitk.Image, path: str | Path | None, role: str) -> sitk.Image:
    """The one validator of a patient scan, read from a file or given in memory: :func:`check_image` (3-D,
    scalar, spacing, orthonormal direction), a plausible geometry (:func:`check_scan_geometry`), for a CT a pixel
    type that holds HU (:func:`check_ct_pixel_type`) and usable intensities (:func:`repair_intensities`).
    ``path`` names the image in messages (None: in memory).

    Returns:
        the image, or a copy with a few non-finite voxels repaired.
    """
    check_image(image, path, role)
    check_scan_geometry(image, path, role)
    if role == "CT":
        check_ct_pixel_type(image, path)
    return repair_intensities(image, path, role)


def check_scan_geometry(image: sitk.Image, path: str | Path | None, role: str) -> None:
    """At least ``MIN_VOXELS_PER_AXIS`` voxels and ``MIN_EXTENT_MM`` per axis, and a TIFF's spacing stated."""
    if (path is not None and image_extension(path) in (".tif", ".tiff")
            and np.allclose(image.GetSpacing(), 1.0, rtol=0, atol=1e-6)):
        raise InputError(path, f"{role} is a TIFF without a stated voxel spacing (the reader's default 1 x 1 x 1 "
                               "mm); convert it to .mha / .nrrd / .nii.gz with its real spacing")
    check_extent(image, path, role)
    if min(image.GetSize()) < MIN_VOXELS_PER_AXIS:
        raise InputError(path, f"{role} has only {image.GetSize()} voxels (x, y, z); at least {MIN_VOXELS_PER_AXIS} "
                               "per axis")


def check_ct_pixel_type(image: sitk.Image, path: str | Path | None) -> None:
    """Refuse a CT whose pixel type cannot hold Hounsfield units (see :data:`CT_PIXEL_TYPES`)."""
    if image.GetPixelID() not in CT_PIXEL_TYPES:
        dtype = sitk.GetArrayViewFromImage(image).dtype.name
        raise InputError(path, f"CT pixel type {dtype} cannot hold Hounsfield units "
                               "(-1024 .. 3071) and the header gives no rescale to HU; store it as int16 or float")


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
    if not np.isfinite(direction).all() or np.abs(direction.T @ direction - np.eye(3)).max() > DIRECTION_TOLERANCE:
        values = tuple(round(float(v), 4) for v in direction.ravel())
        raise InputError(path, f"{role} has a direction matrix whose axes are not orthonormal {values}")


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


def repair_intensities(image: sitk.Image, path: str | Path | None, role: str = "image",
                       repair: bool = True) -> sitk.Image:
    """Refuse images without usable intensities; repair a few non-finite voxels.

    Non-finite voxels (float images only) are NaN, inf, and values beyond the float32 range (they become inf in
    the float32 network input). With ``repair`` they are replaced by the smallest finite value (air, for a CT)
    with a warning if they are at most ``MAX_NONFINITE_FRACTION`` of the image; without it any is refused.
    A constant image carries no anatomy.

    Raises:
        InputError: naming ``path`` if too many voxels are non-finite or the image is constant.
    """
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if values.dtype.itemsize > 4:
            finite &= np.abs(values) <= FLOAT32_MAX
        n_bad = int(values.size - np.count_nonzero(finite))
        if n_bad:
            fraction = n_bad / values.size
            if not repair:
                raise InputError(path, f"{role} has {n_bad} NaN, inf or out-of-float32-range voxels "
                                       f"({fraction:.3%} of the image)")
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

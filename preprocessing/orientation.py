"""Axis orientation: give the model its images in the orientation it was trained in, and put labels back.

nnU-Net ignores an image's direction matrix: it segments the voxel array as stored. A network trained without
left-right mirroring (lateralised OARs: Parotid_L / Parotid_R, ...) therefore swaps left and right on a CT stored
with a flipped x axis, and a CT stored sagittally would be sliced along the wrong axis by a 2-D model. To prevent
that, every CT (and the MR resampled onto it) is permuted and flipped to the model's training orientation before
preprocessing, and the label map is permuted back afterwards.

Reorientation is lossless: only axis permutations and flips (``SimpleITK.DICOMOrient``), no interpolation. For an
oblique direction matrix the closest axis-aligned orientation is used, and the output still carries the CT's
exact direction.

Orientation codes follow DICOM / SimpleITK's ``DICOMOrientImageFilter``: one letter per image axis (x, y, z)
naming the patient direction that axis points TO. The identity direction matrix is ``"LPS"``.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

DEFAULT_ORIENTATION = "LPS"
"""Orientation assumed for a model folder that does not state one: the identity direction matrix, which is what
SimpleITK gives for NRRD/MHA files written in LPS (HaN-Seg) and for the project's own training data."""

_AXIS_LETTERS = ({"L", "R"}, {"P", "A"}, {"S", "I"})


def orientation_of(image: sitk.Image) -> str:
    """Closest DICOM orientation code of ``image``'s direction matrix, e.g. ``"LPS"`` for the identity."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def check_orientation_code(code: str) -> str:
    """``code`` upper-cased if it names each patient axis (L/R, P/A, S/I) exactly once; ValueError otherwise."""
    code = str(code).upper()
    axes = [next((i for i, letters in enumerate(_AXIS_LETTERS) if c in letters), -1) for c in code]
    if sorted(axes) != [0, 1, 2]:
        raise ValueError(f"invalid orientation code {code!r} (expected e.g. 'LPS' or 'RAS')")
    return code


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    """``image`` with its axes permuted and flipped to ``orientation`` (no resampling; same physical voxels).

    Returns ``image`` itself when it is already in that orientation.
    """
    orientation = check_orientation_code(orientation)
    if orientation_of(image) == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def labels_to_original_orientation(labels: np.ndarray, oriented: sitk.Image, original: sitk.Image) -> np.ndarray:
    """Permute a label array on ``oriented``'s grid (numpy z, y, x) back onto ``original``'s voxel grid.

    Args:
        labels: label array with ``oriented``'s numpy shape.
        oriented: the image the labels were predicted on (``reorient(original, ...)``).
        original: the image as read; the result has its numpy shape and voxel order.
    """
    if oriented is original:
        return labels
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(oriented)
    back = sitk.DICOMOrient(image, orientation_of(original))
    if back.GetSize() != original.GetSize():  # cannot happen for a permutation; guard against a wrong pairing
        raise AssertionError(f"reoriented labels {back.GetSize()} do not match the image {original.GetSize()}")
    return sitk.GetArrayFromImage(back)

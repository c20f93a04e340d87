"""DICOM in and out: find and check the CT / T1 MR series of a study, read them into SimpleITK images, and write
the label map as an RT Structure Set (contours on the mask's edges) and a DICOM-SEG (highdicom), plus the CT as a
DICOM series when the input was not DICOM.

Modules, one job each:
    discovery    walk a folder (any depth) or a .zip, group DICOM files by SeriesInstanceUID, pick CT / MR
    geometry     check one series (tilt, missing / duplicated slices, spacing, orientation, transfer syntax) and
                 sort its slices along the slice normal
    reader       read a checked series into a SimpleITK image (HU from RescaleSlope / Intercept)
    contours     label-map slices -> closed planar contours in patient coordinates (iso-line at 0.5)
    rtstruct     the RT Structure Set writer
    seg          the DICOM-SEG writer (highdicom)
    ct_writer    a CT image written as a DICOM series (SimpleITK series writer), for .mha/.nrrd input
    outputs      the ``--output-type`` choices and one case's DICOM outputs written atomically
    codes        per-OAR names, colours and coded concepts (SNOMED CT where one exists)

Axis conventions: SimpleITK images are indexed (x, y, z) = (column, row, slice); numpy arrays from
``sitk.GetArrayFromImage`` are (z, y, x) = (slice, row, column). Patient coordinates are DICOM's LPS, in mm.
"""

"""RT Structure Set writer: one ROI per labelled OAR, closed planar contours on the CT's slice planes.

Each contour references the CT SOP instance of its slice; the structure set carries the CT's Frame of Reference,
copies its Patient and General Study modules, starts a new series (ApprovalStatus UNAPPROVED, a description that
says the contours are automatic and must be reviewed), and names this software and the model.
Written with pydicom; every decimal string is formatted to at most 16 characters (DICOM's DS limit).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from contract.labels import HANSEG_NAMES_BY_VALUE
from dicom_io.codes import describe_oar
from dicom_io.contours import label_contours
from dicom_io.provenance import MANUFACTURER, SOFTWARE_NAME, Provenance

log = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
REVIEW_WARNING = "AUTOMATIC contours (HaN-Seg OARs): not reviewed, must be checked by a clinician before use"
"""Opening of the StructureSetDescription of every structure set written here."""
SERIES_DESCRIPTION = "AUTO OARs UNREVIEWED - must be reviewed"
"""SeriesDescription (an LO: 64 characters at most)."""

PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                    "IssuerOfPatientID", "OtherPatientIDs", "EthnicGroup", "PatientComments")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                  "AccessionNumber", "StudyDescription")
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Type 2 attributes: present (empty if the CT has no value)."""


def ds_string(value: float) -> str:
    """A decimal string of at most 16 characters (0.1 micrometre resolution for coordinates under 10 km)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def build_rtstruct(labels: np.ndarray, ct_image: sitk.Image, ct_headers: Sequence[Dataset],
                   provenance: Provenance, series_number: int = 901) -> Dataset:
    """The RT Structure Set of a label map on a CT series.

    Args:
        labels: numpy (z, y, x) uint8 HaN-Seg label map on the CT's grid.
        ct_image: the CT as read (its geometry places the contours; slice z is ``ct_headers[z]``).
        ct_headers: the CT series' datasets in slice order (pixel data not needed).
        provenance: software and model identity.
        series_number: SeriesNumber of the new series.

    Returns:
        The dataset, with file meta, ready for ``dcmwrite``.
    """
    if labels.shape[0] != len(ct_headers):
        raise AssertionError(f"label map has {labels.shape[0]} slices, the CT series {len(ct_headers)}")
    ct = ct_headers[0]
    now = dt.datetime.now()
    ds = _new_dataset(now)
    for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS:
        if keyword in ct:
            setattr(ds, keyword, ct.data_element(keyword).value)
        elif keyword in TYPE2_KEYWORDS:
            setattr(ds, keyword, "")
    if "SpecificCharacterSet" in ct:
        ds.SpecificCharacterSet = ct.SpecificCharacterSet
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = SOFTWARE_NAME
    ds.SoftwareVersions = provenance.software_version
    ds.DeviceSerialNumber = provenance.model_id
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = ct.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ct.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "HaN-Seg AUTO"
    ds.StructureSetName = "HaN-Seg OARs (automatic)"
    ds.StructureSetDescription = f"{REVIEW_WARNING}. {provenance.description}"[:1024]
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(ct_headers)])
    ds.ApprovalStatus = "UNAPPROVED"

    rois, roi_contours, observations = [], [], []
    present = [int(v) for v in np.unique(labels) if v != 0]
    for roi_number, value in enumerate(present, start=1):
        oar = describe_oar(HANSEG_NAMES_BY_VALUE[value])
        roi = Dataset()
        roi.ROINumber = roi_number
        roi.ReferencedFrameOfReferenceUID = ct.FrameOfReferenceUID
        roi.ROIName = oar.name
        roi.ROIDescription = f"HaN-Seg label {value} ({oar.type.meaning})"
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = provenance.description[:64]
        rois.append(roi)
        contour_items = []
        for k, polygons in sorted(label_contours(labels, value, ct_image).items()):
            for points in polygons:
                item = Dataset()
                image_ref = Dataset()
                image_ref.ReferencedSOPClassUID = ct_headers[k].SOPClassUID
                image_ref.ReferencedSOPInstanceUID = ct_headers[k].SOPInstanceUID
                item.ContourImageSequence = DicomSequence([image_ref])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourNumber = len(contour_items) + 1
                item.ContourData = [ds_string(v) for v in points.ravel()]
                contour_items.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(oar.colour)
        roi_contour.ReferencedROINumber = roi_number
        roi_contour.ContourSequence = DicomSequence(contour_items)
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = roi_number
        observation.ReferencedROINumber = roi_number
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
        log.debug("RTSTRUCT ROI %d %s: %d contours", roi_number, oar.name, len(contour_items))
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    log.info("RTSTRUCT: %d ROIs (%s)", len(rois), ", ".join(r.ROIName for r in rois))
    return ds


def _new_dataset(now: dt.datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return ds


def _referenced_frame(ct_headers: Sequence[Dataset]) -> Dataset:
    ct = ct_headers[0]
    images = []
    for header in ct_headers:
        ref = Dataset()
        ref.ReferencedSOPClassUID = header.SOPClassUID
        ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
        images.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = ct.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame

"""DICOM-SEG writer (highdicom): one binary segment per labelled OAR, on the CT series' frames.

Segment numbers run 1..n over the OARs present (DICOM requires consecutive numbers); each segment's label is
the HaN-Seg name, its colour the QA picture's, its property type a SNOMED CT concept where one exists (with
Left / Right as a modifier), and its algorithm identification names this software, its version and the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from contract.labels import HANSEG_NAMES_BY_VALUE
from dicom_io.codes import describe_oar
from dicom_io.provenance import MANUFACTURER, SOFTWARE_NAME, Provenance

log = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AUTO OAR SEG UNREVIEWED - must be reviewed"


def build_seg(labels: np.ndarray, ct_datasets: Sequence[Dataset], provenance: Provenance,
              series_number: int = 902) -> hd.seg.Segmentation:
    """The DICOM-SEG of a label map on a CT series.

    Args:
        labels: numpy (z, y, x) uint8 HaN-Seg label map; slice z lies on ``ct_datasets[z]``.
        ct_datasets: the CT series' datasets in slice order (pixel data not needed).
        provenance: software and model identity.

    Returns:
        The Segmentation (a pydicom Dataset) referencing the CT series and study.
    """
    if labels.shape != (len(ct_datasets), int(ct_datasets[0].Rows), int(ct_datasets[0].Columns)):
        raise AssertionError(f"label map {labels.shape} does not match the CT series' "
                             f"{len(ct_datasets)} x {ct_datasets[0].Rows} x {ct_datasets[0].Columns} frames")
    present = [int(v) for v in np.unique(labels) if v != 0]
    segment_numbers = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE_NAME, family=codes.cid7162.ArtificialIntelligence, version=provenance.software_version,
        source=f"model {provenance.model_name} sha256:{provenance.model_id}")
    descriptions = []
    for number, value in enumerate(present, start=1):
        segment_numbers[value] = number
        oar = describe_oar(HANSEG_NAMES_BY_VALUE[value])
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=oar.name, segmented_property_category=oar.category,
            segmented_property_type=oar.type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=generate_uid(), tracking_id=f"HaN-Seg {oar.name}",
            display_color=hd.color.CIELabColor.from_rgb(*oar.colour))
        if oar.laterality is not None:
            modifier = hd.sr.CodedConcept(oar.laterality.value, oar.laterality.scheme_designator,
                                          oar.laterality.meaning)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = \
                DicomSequence([modifier])
        descriptions.append(description)
    seg = hd.seg.Segmentation(
        source_images=list(ct_datasets), pixel_array=segment_numbers[labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=SOFTWARE_NAME,
        software_versions=provenance.software_version, device_serial_number=provenance.model_id,
        content_description="AUTOMATIC OARs: must be reviewed before use",
        content_label="HANSEG_OARS", series_description=SERIES_DESCRIPTION,
    )
    log.info("DICOM-SEG: %d segments (%s)", len(descriptions), ", ".join(d.SegmentLabel for d in descriptions))
    return seg


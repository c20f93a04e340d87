"""Per-OAR descriptions for DICOM outputs: the HaN-Seg name, the QA picture's colour, and coded concepts.

Codes come from pydicom's copy of the DICOM code tables (``pydicom.sr.codedict``), none typed in here. An OAR
without a SNOMED CT concept in those tables (e.g. the anterior / posterior eye segments, the arytenoids) gets a
code in this project's private scheme ``99HANSEG`` (DICOM PS3.16 allows private schemes prefixed 99), so no
concept is claimed that was not looked up.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from contract.labels import HANSEG_LABELS
from evaluation.qa import OAR_COLOURS

PRIVATE_SCHEME = "99HANSEG"

_SNOMED_KEYWORDS: dict[str, str] = {
    "A_Carotid": "CarotidArtery",
    "Bone_Mandible": "Mandible",
    "Brainstem": "BrainStem",
    "BuccalMucosa": "BuccalMucosa",
    "Cavity_Oral": "OralCavity",
    "Esophagus_S": "Esophagus",
    "Glnd_Lacrimal": "LacrimalGland",
    "Glnd_Submand": "SubmandibularGland",
    "Glnd_Thyroid": "Thyroid",
    "Glottis": "Glottis",
    "Larynx_SG": "Supraglottis",
    "Lips": "Lip",
    "OpticChiasm": "OpticChiasm",
    "OpticNrv": "OpticNerve",
    "Parotid": "ParotidGland",
    "Pituitary": "Pituitary",
    "SpinalCord": "SpinalCord",
}
"""HaN-Seg name (without its _L/_R side) -> keyword in ``pydicom.sr.codedict.codes.SCT``."""


@dataclass(frozen=True)
class OarDescription:
    """What DICOM outputs say about one OAR.

    Attributes:
        label: HaN-Seg label value (1..30).
        name: HaN-Seg / TG-263 style name, e.g. ``Parotid_L``.
        colour: RGB 0..255, the colour of the QA pictures.
        category: SegmentedPropertyCategory (SNOMED CT anatomical structure).
        type: SegmentedPropertyType, SNOMED CT where one exists.
        laterality: SNOMED CT Left / Right for _L / _R names, else None.
    """

    label: int
    name: str
    colour: tuple[int, int, int]
    category: Code
    type: Code
    laterality: Code | None


def describe_oar(name: str) -> OarDescription:
    """The :class:`OarDescription` of a HaN-Seg OAR name.

    Raises:
        KeyError: if ``name`` is not a HaN-Seg OAR.
    """
    value = HANSEG_LABELS[name]
    base, laterality = name, None
    if name.endswith(("_L", "_R")) and name[:-2] in _SNOMED_KEYWORDS:
        base, laterality = name[:-2], codes.SCT.Left if name.endswith("_L") else codes.SCT.Right
    keyword = _SNOMED_KEYWORDS.get(base)
    if keyword is not None:
        concept = getattr(codes.SCT, keyword)
        concept = Code(concept.value, concept.scheme_designator, concept.meaning)
    else:
        concept = Code(name, PRIVATE_SCHEME, name.replace("_", " "))
    return OarDescription(label=value, name=name, colour=OAR_COLOURS[name],
                          category=codes.SCT.AnatomicalStructure, type=concept, laterality=laterality)

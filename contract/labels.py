"""The HaN-Seg organ-at-risk label table: the single source of truth for names and values.

The challenge defines label ``v`` as ``1 + position`` of the OAR name in Python ``sorted()`` order of the
30 names; 0 is background. Every other module (export, evaluation, training conversion, QA pictures) must
take names and values from here.
"""

from __future__ import annotations

from collections.abc import Mapping

HANSEG_OAR_NAMES: tuple[str, ...] = tuple(
    sorted(
        [
            "A_Carotid_L", "A_Carotid_R", "Arytenoid", "Bone_Mandible", "Brainstem", "BuccalMucosa",
            "Cavity_Oral", "Cochlea_L", "Cochlea_R", "Cricopharyngeus", "Esophagus_S", "Eye_AL", "Eye_AR",
            "Eye_PL", "Eye_PR", "Glnd_Lacrimal_L", "Glnd_Lacrimal_R", "Glnd_Submand_L", "Glnd_Submand_R",
            "Glnd_Thyroid", "Glottis", "Larynx_SG", "Lips", "OpticChiasm", "OpticNrv_L", "OpticNrv_R",
            "Parotid_L", "Parotid_R", "Pituitary", "SpinalCord",
        ]
    )
)
"""The 30 OAR names in label order (index 0 is label 1)."""

BACKGROUND = 0
NUM_OARS = len(HANSEG_OAR_NAMES)
MAX_LABEL = NUM_OARS

HANSEG_LABELS: dict[str, int] = {name: i + 1 for i, name in enumerate(HANSEG_OAR_NAMES)}
"""OAR name -> label value in the output map (1..30)."""

HANSEG_NAMES_BY_VALUE: dict[int, str] = {v: k for k, v in HANSEG_LABELS.items()}
"""Label value (1..30) -> OAR name."""

BACKGROUND_NAMES = frozenset({"background", "Background", "BACKGROUND"})


def hanseg_value(name: str) -> int:
    """Return the HaN-Seg label value of an OAR name.

    Raises:
        KeyError: with the list of valid names, if ``name`` is not a HaN-Seg OAR.
    """
    try:
        return HANSEG_LABELS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a HaN-Seg OAR name; valid names: {', '.join(HANSEG_OAR_NAMES)}") from None


def model_to_hanseg_lookup(model_labels: Mapping[str, int]) -> list[int]:
    """Build a lookup table from a model's label values to HaN-Seg values, matching BY NAME.

    Args:
        model_labels: ``dataset.json['labels']`` of an nnU-Net model: name -> consecutive integer value,
            with a background entry at 0.

    Returns:
        ``lut`` with ``lut[model_value] == hanseg_value``; background maps to 0.

    Raises:
        ValueError: if a name is not in the HaN-Seg table, a value is not an int (region-based models),
            or values are not the consecutive integers nnU-Net requires.
    """
    values: dict[int, str] = {}
    for name, value in model_labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(
                f"label {name!r} has value {value!r}: only plain integer labels are supported "
                "(region-based nnU-Net models are not)"
            )
        if value in values:
            raise ValueError(f"labels {values[value]!r} and {name!r} share the value {value}")
        values[value] = name
    if sorted(values) != list(range(len(values))):
        raise ValueError(f"label values must be consecutive integers from 0, got {sorted(values)}")
    if values.get(0) not in BACKGROUND_NAMES:
        raise ValueError(f"label 0 must be the background, got {values.get(0)!r}")
    lut = [BACKGROUND] * len(values)
    for value, name in values.items():
        if value == 0:
            continue
        if name not in HANSEG_LABELS:
            raise ValueError(
                f"model label {name!r} (value {value}) is not a HaN-Seg OAR name; "
                f"valid names: {', '.join(HANSEG_OAR_NAMES)}"
            )
        lut[value] = HANSEG_LABELS[name]
    return lut


def _lateral_pairs() -> dict[str, tuple[str, str]]:
    pairs: dict[str, tuple[str, str]] = {}
    for name in HANSEG_OAR_NAMES:
        if name.endswith("L") and name[:-1] + "R" in HANSEG_LABELS:
            base = name[:-1].rstrip("_")
            pairs[base] = (name, name[:-1] + "R")
    return pairs


LATERAL_PAIRS: dict[str, tuple[str, str]] = _lateral_pairs()
"""Merged name -> (patient-left OAR, patient-right OAR) for the 8 lateralised pairs of the table, e.g.
``"Parotid": ("Parotid_L", "Parotid_R")``, ``"Eye_A": ("Eye_AL", "Eye_AR")``. A model trained with the pairs merged
names the merged label so and declares the pair in its ``dataset.json`` (``lr_split``); the pipeline splits it by the
patient's mid-sagittal plane (``preprocessing.laterality``)."""

LATERAL_OF: dict[str, str] = {side: merged for merged, pair in LATERAL_PAIRS.items() for side in pair}
"""Lateralised OAR name -> its merged name (``"Parotid_L" -> "Parotid"``)."""

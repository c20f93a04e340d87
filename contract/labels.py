"""The HaN-Seg organ-at-risk label table: the single source of truth for names and values.

The challenge defines label ``v`` as ``1 + position`` of the OAR name in Python ``sorted()`` order of the
30 names; 0 is background. Every other module (export, evaluation, training conversion, QA pictures) must
take names and values from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def model_to_hanseg_lookup(model_labels: Mapping[str, int],
                           lr_split: Mapping[str, Sequence[str]] | None = None) -> list[int]:
    """Build a lookup table from a model's label values to HaN-Seg values, matching BY NAME.

    Args:
        model_labels: ``dataset.json['labels']`` of an nnU-Net model: name -> consecutive integer value,
            with a background entry at 0.
        lr_split: ``dataset.json['lr_split']`` (merged name -> [left OAR, right OAR]); a merged label maps to its
            LEFT member's value, and :func:`lateral_splits` names the pairs the pipeline must then split.

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
    merged = check_lr_split(lr_split or {})
    lut = [BACKGROUND] * len(values)
    for value, name in values.items():
        if value == 0:
            continue
        if name in merged:
            lut[value] = HANSEG_LABELS[merged[name][0]]
            continue
        if name not in HANSEG_LABELS:
            hint = (f" (a merged left/right label such as {name!r} must be declared in dataset.json 'lr_split', "
                    f"e.g. {{\"Parotid\": [\"Parotid_L\", \"Parotid_R\"]}})" if name in LATERAL_PAIRS else "")
            raise ValueError(
                f"model label {name!r} (value {value}) is not a HaN-Seg OAR name{hint}; "
                f"valid names: {', '.join(HANSEG_OAR_NAMES)}"
            )
        lut[value] = HANSEG_LABELS[name]
    taken = [lut[v] for v in values if v != 0]
    duplicated = sorted({HANSEG_NAMES_BY_VALUE[t] for t in taken if taken.count(t) > 1})
    if duplicated:
        raise ValueError(f"OAR(s) {duplicated} named twice (as a label and inside a merged lr_split label)")
    return lut


def check_lr_split(lr_split: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, str]]:
    """Validate ``dataset.json['lr_split']``: merged label name -> [patient-left OAR, patient-right OAR].

    Each pair must be one of the table's lateralised pairs (:data:`LATERAL_PAIRS`), left first; the merged name
    must not itself be a HaN-Seg OAR name.

    Raises:
        ValueError: naming the entry at fault.
    """
    if not isinstance(lr_split, Mapping):
        raise ValueError(f"'lr_split' must be an object (merged name -> [left OAR, right OAR]), got {lr_split!r}")
    pairs = set(LATERAL_PAIRS.values())
    out: dict[str, tuple[str, str]] = {}
    for name, members in lr_split.items():
        if name in HANSEG_LABELS:
            raise ValueError(f"lr_split: merged name {name!r} is itself a HaN-Seg OAR name")
        if not isinstance(members, Sequence) or isinstance(members, str) or tuple(members) not in pairs:
            raise ValueError(f"lr_split: {name!r} -> {members!r} is not a [left, right] pair of the label table "
                             f"(pairs: {', '.join(f'{a}/{b}' for a, b in LATERAL_PAIRS.values())})")
        out[name] = (members[0], members[1])
    return out


def output_oar_values(model_labels: Mapping[str, int],
                      lr_split: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """The HaN-Seg OARs a model's output map holds after the left/right split: name -> HaN-Seg value."""
    merged = check_lr_split(lr_split or {})
    out: dict[str, int] = {}
    for name in model_labels:
        for oar in merged.get(name, (name,)):
            if oar in HANSEG_LABELS:
                out[oar] = HANSEG_LABELS[oar]
    return out


def lateral_splits(model_labels: Mapping[str, int],
                   lr_split: Mapping[str, Sequence[str]] | None) -> list[tuple[int, int]]:
    """HaN-Seg (left value, right value) of each merged label the model predicts: what the pipeline must split."""
    merged = check_lr_split(lr_split or {})
    return [(HANSEG_LABELS[merged[n][0]], HANSEG_LABELS[merged[n][1]]) for n in model_labels if n in merged]


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

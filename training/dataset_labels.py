"""nnU-Net label values for a training dataset, derived BY NAME from the HaN-Seg table in ``contract.labels``.

nnU-Net v2 needs consecutive integer labels (0 = background, 1..K). A dataset holding only some of the 30 HaN-Seg
OARs therefore cannot store raw HaN-Seg values in its label maps. The converters write the *dataset* values
computed here: the present OARs, kept in HaN-Seg label order, numbered 1..K. The inference code maps model values
back to HaN-Seg values by name (``contract.labels.model_to_hanseg_lookup``), so the names are what must be right.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from contract.labels import HANSEG_LABELS, hanseg_value

BACKGROUND_NAME = "background"


def dataset_label_table(present_oars: Iterable[str]) -> dict[str, int]:
    """Return nnU-Net's ``labels`` entry for a dataset holding ``present_oars``.

    Args:
        present_oars: HaN-Seg OAR names present in at least one case (any order, duplicates allowed).

    Returns:
        ``{"background": 0, name: 1..K}`` with names in HaN-Seg label order (insertion-ordered dict).

    Raises:
        KeyError: if a name is not a HaN-Seg OAR.
    """
    names = sorted(set(present_oars), key=hanseg_value)
    table = {BACKGROUND_NAME: 0}
    for i, name in enumerate(names, start=1):
        table[name] = i
    return table


def hanseg_to_dataset_lut(table: dict[str, int]) -> np.ndarray:
    """Lookup array ``lut[hanseg_value] -> dataset value`` (uint8, length 31); OARs not in ``table`` map to 0."""
    lut = np.zeros(max(HANSEG_LABELS.values()) + 1, dtype=np.uint8)
    for name, value in table.items():
        if name == BACKGROUND_NAME:
            continue
        lut[hanseg_value(name)] = value
    return lut


def dataset_to_hanseg_lut(table: dict[str, int]) -> np.ndarray:
    """Lookup array ``lut[dataset_value] -> hanseg_value`` (uint8, length K+1)."""
    lut = np.zeros(max(table.values()) + 1, dtype=np.uint8)
    for name, value in table.items():
        if name != BACKGROUND_NAME:
            lut[value] = hanseg_value(name)
    return lut

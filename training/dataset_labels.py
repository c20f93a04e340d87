"""nnU-Net label values for a training dataset, derived BY NAME from the HaN-Seg table in ``contract.labels``.

nnU-Net v2 needs consecutive integer labels (0 = background, 1..K). A dataset holding only some of the 30 HaN-Seg
OARs therefore cannot store raw HaN-Seg values in its label maps. The converters write the *dataset* values
computed here: the present OARs, kept in HaN-Seg label order, numbered 1..K. The inference code maps model values
back to HaN-Seg values by name (``contract.labels.model_to_hanseg_lookup``), so the names are what must be right.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from contract.labels import HANSEG_LABELS, LATERAL_OF, LATERAL_PAIRS, hanseg_value

BACKGROUND_NAME = "background"


def training_name(name: str, merge_lr: bool) -> str:
    """The label name an OAR is trained under: its merged L/R name (``Parotid_L -> Parotid``) when ``merge_lr``."""
    return LATERAL_OF.get(name, name) if merge_lr else name


def _order(name: str) -> int:
    return hanseg_value(LATERAL_PAIRS[name][0]) if name in LATERAL_PAIRS else hanseg_value(name)


def dataset_label_table(present_oars: Iterable[str], merge_lr: bool = False) -> dict[str, int]:
    """Return nnU-Net's ``labels`` entry for a dataset holding ``present_oars``.

    Args:
        present_oars: HaN-Seg OAR names present in at least one case (any order, duplicates allowed).
        merge_lr: name each lateralised pair once with its merged name (``contract.labels.LATERAL_PAIRS``).

    Returns:
        ``{"background": 0, name: 1..K}`` with names in HaN-Seg label order (a merged pair at its left member's
        place; insertion-ordered dict).

    Raises:
        KeyError: if a name is not a HaN-Seg OAR.
    """
    for name in present_oars:
        hanseg_value(name)
    names = sorted({training_name(n, merge_lr) for n in present_oars}, key=_order)
    table = {BACKGROUND_NAME: 0}
    for i, name in enumerate(names, start=1):
        table[name] = i
    return table


def lr_split_declaration(table: dict[str, int]) -> dict[str, list[str]]:
    """``dataset.json`` ``lr_split`` for the merged names of ``table``: merged name -> [left OAR, right OAR]."""
    return {name: list(LATERAL_PAIRS[name]) for name in table if name in LATERAL_PAIRS}


def hanseg_to_dataset_lut(table: dict[str, int]) -> np.ndarray:
    """Lookup array ``lut[hanseg_value] -> dataset value`` (uint8, length 31); OARs not in ``table`` map to 0.

    Both members of a merged L/R name map to the merged value."""
    lut = np.zeros(max(HANSEG_LABELS.values()) + 1, dtype=np.uint8)
    for name, value in table.items():
        if name == BACKGROUND_NAME:
            continue
        for member in LATERAL_PAIRS.get(name, (name,)):
            lut[hanseg_value(member)] = value
    return lut


def dataset_to_hanseg_lut(table: dict[str, int]) -> np.ndarray:
    """Lookup array ``lut[dataset_value] -> hanseg_value`` (uint8, length K+1)."""
    lut = np.zeros(max(table.values()) + 1, dtype=np.uint8)
    for name, value in table.items():
        if name != BACKGROUND_NAME:
            lut[value] = hanseg_value(name)
    return lut

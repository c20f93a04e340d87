"""HaN-Seg's ``OAR_data.csv``: which OARs each case really has delineated.

The HaN-Seg release ships, beside the ``case_XX`` folders, a table with one row per case and one column per OAR.
Layout accepted here (the delimiter is detected: ``;``, ``,`` or tab)::

    ID;A_Carotid_L;A_Carotid_R;...;SpinalCord
    case_01;1;1;...;1
    case_02;1;0;...;1

* first column: the case id (``case_01``; a bare number ``1`` / ``01`` is read as ``case_01``);
* other columns: OAR names, matched to ``contract.labels`` names case-insensitively, with the aliases some copies
  use (``Eye_L``/``Eye_R`` = ``Eye_AL``/``Eye_AR``, ``Lens_L``/``Lens_R`` = ``Eye_PL``/``Eye_PR``); a column that
  matches no OAR is reported and ignored;
* cells: ``1`` (also ``1.0``, ``yes``, ``true``, ``x``) = delineated; ``0`` / empty / ``no`` = not delineated.
  Any other value (e.g. ``0.5``, a partial delineation) counts as NOT delineated, conservatively: a partial mask
  must not teach the network that the rest of the organ is background. The raw value is kept for the report.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from contract.labels import HANSEG_OAR_NAMES

log = logging.getLogger(__name__)

FILE_NAME = "OAR_data.csv"
ALIASES = {"eye_l": "Eye_AL", "eye_r": "Eye_AR", "lens_l": "Eye_PL", "lens_r": "Eye_PR"}
YES = frozenset({"1", "1.0", "yes", "true", "x", "y"})
NO = frozenset({"", "0", "0.0", "no", "false", "n", "-"})
_BY_LOWER = {n.lower(): n for n in HANSEG_OAR_NAMES}


@dataclass(frozen=True)
class OarTable:
    """Per case: the OARs delineated, and cells that were neither yes nor no (name -> raw text)."""

    path: Path
    delineated: dict[str, frozenset[str]]
    unclear: dict[str, dict[str, str]] = field(default_factory=dict)
    ignored_columns: tuple[str, ...] = ()


def oar_name(column: str) -> str | None:
    """The HaN-Seg OAR name of a column header, or None."""
    key = column.strip().lower()
    return ALIASES.get(key) or _BY_LOWER.get(key)


def case_id(cell: str) -> str:
    """``case_01`` for ``case_01``, ``1`` or ``01``; other ids unchanged (stripped)."""
    cell = cell.strip()
    return f"case_{int(cell):02d}" if re.fullmatch(r"\d+", cell) else cell


def read_oar_table(path: Path) -> OarTable:
    """Read an ``OAR_data.csv`` (module docstring).

    Raises:
        ValueError: naming the file, if it has no header with at least one OAR column or no case rows.
    """
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=";,\t")
    except csv.Error:
        raise ValueError(f"{path}: cannot find the delimiter of the header line") from None
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header and at least one case row")
    header = rows[0]
    names = [oar_name(c) for c in header[1:]]
    ignored = tuple(c for c, n in zip(header[1:], names) if n is None and c.strip())
    if not any(names):
        raise ValueError(f"{path}: no column names an OAR (header {header[:4]}...)")
    if ignored:
        log.warning("%s: columns that name no HaN-Seg OAR are ignored: %s", path, list(ignored))
    delineated: dict[str, frozenset[str]] = {}
    unclear: dict[str, dict[str, str]] = {}
    for row in rows[1:]:
        case = case_id(row[0])
        yes = set()
        for name, cell in zip(names, row[1:]):
            if name is None:
                continue
            value = cell.strip().lower()
            if value in YES:
                yes.add(name)
            elif value not in NO:
                unclear.setdefault(case, {})[name] = cell.strip()
        delineated[case] = frozenset(yes)
    return OarTable(path=path, delineated=delineated, unclear=unclear, ignored_columns=ignored)


def find_oar_table(root: Path) -> Path | None:
    """The ``OAR_data.csv`` at or above the case folders under ``root`` (the shallowest one), or None."""
    found = sorted(root.rglob(FILE_NAME), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None

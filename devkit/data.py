"""Where the tests and benchmarks find real data: the shared folder when it is there, else the few small real
cases bundled in ``test/data/`` (so that a fresh clone runs the core tests).

Shared data: ``../shared`` beside the repository or ``$HANSEG_SHARED_DIR`` (:mod:`training.shared_data`).
Bundled: ``test/data/openkbp/cases/{pt_4,pt_17,pt_201}`` (``test/data/README.md`` gives their source).
"""

from __future__ import annotations

from pathlib import Path

from training.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
BUNDLED_OPENKBP = REPO / "test" / "data" / "openkbp" / "cases"
SHARED_SKIP_REASON = "needs the shared data folder (../shared or $HANSEG_SHARED_DIR)"
"""Every test that skips for want of shared data says this (conftest fails the run if ../shared is present and
such a test skipped anyway)."""


def shared_openkbp_cases() -> Path:
    """``<shared>/data/openkbp_hn_ct/cases`` (may not exist)."""
    return shared_data_dir() / "openkbp_hn_ct" / "cases"


def shared_present() -> bool:
    """Whether the shared OpenKBP data is there."""
    return shared_openkbp_cases().is_dir()


def openkbp_cases_dir() -> Path:
    """The OpenKBP ``cases`` folder to use: the shared one (34 cases) if present, else the bundled one (3)."""
    return shared_openkbp_cases() if shared_present() else BUNDLED_OPENKBP


def shared_partial_openkbp_cases() -> Path:
    """``<shared>/data/openkbp_hn_ct_partial/cases``: cases with some of the 7 OARs (may not exist)."""
    return shared_data_dir() / "openkbp_hn_ct_partial" / "cases"


def openkbp_case(case: str) -> Path | None:
    """Folder of one OpenKBP case (``ct.nii.gz``, ``oar_labels.nii.gz``): shared (full or partial) or bundled;
    None if none has it."""
    for root in (shared_openkbp_cases(), shared_partial_openkbp_cases(), BUNDLED_OPENKBP):
        if (root / case / "ct.nii.gz").is_file():
            return root / case
    return None


def head_mr_dir() -> Path:
    """``<shared>/data/head_mr_t1`` (two real T1 MRs; not bundled)."""
    return shared_data_dir() / "head_mr_t1"

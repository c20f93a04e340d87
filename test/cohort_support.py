"""A small cohort for the dataset-mode tests and benchmark: real OpenKBP CTs (../shared), cut to 64 x 64 x 12
voxels so that a case takes about a second, in the HaN-Seg dataset layout; one case is a corrupt file and one can be
made to raise an injected unexpected error (:func:`build_faulty_runner`, :func:`inject_fault_into_process`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from contract.inputs import CaseInputs
from test.conftest import OPENKBP, openkbp_ct_path

CORRUPT_CASE = "case_04"
FAULT_CASE = "case_07"
INJECTED_MESSAGE = "injected fault for the cohort tests"
CORRUPT_NRRD = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00\x01"


def make_cohort(root: Path, n_cases: int = 12, corrupt: bool = True) -> list[str]:
    """Write ``root/case_XX/case_XX_IMG_CT.nrrd`` for ``n_cases`` cases, each from another OpenKBP patient;
    with ``corrupt``, :data:`CORRUPT_CASE` gets a truncated NRRD. Returns the case ids. Skips the test without
    ../shared."""
    openkbp_ct_path()  # skips when the shared data is not there
    patients = sorted(p.name for p in OPENKBP.iterdir() if (p / "ct.nii.gz").is_file())
    if len(patients) < n_cases:
        import pytest

        pytest.skip(f"needs {n_cases} OpenKBP CTs (../shared/data/openkbp_hn_ct); {OPENKBP} has {len(patients)}")
    case_ids = []
    for index, patient in enumerate(patients[:n_cases]):
        case_id = f"case_{index:02d}"
        path = root / case_id / f"{case_id}_IMG_CT.nrrd"
        path.parent.mkdir(parents=True, exist_ok=True)
        if corrupt and case_id == CORRUPT_CASE:
            path.write_bytes(CORRUPT_NRRD)
        else:
            ct = sitk.ReadImage(str(openkbp_ct_path(patient)))
            sitk.WriteImage(ct[32:96, 32:96, 50:62], str(path))
        case_ids.append(case_id)
    return case_ids


def _with_fault(segment: Callable[[CaseInputs, Path], None], fault_case: str,
                write_log: Path | None) -> Callable[[CaseInputs, Path], None]:
    def run(case: CaseInputs, output_path: Path) -> None:
        if case.case_id == fault_case:
            raise RuntimeError(INJECTED_MESSAGE)
        segment(case, output_path)
        if write_log is not None:  # one line per completed write, appended in one call
            with open(write_log, "a") as fh:
                fh.write(f"{case.case_id}\n")

    return run


def build_faulty_runner(options: dict[str, Any]) -> Callable[[CaseInputs, Path], None]:
    """A :class:`cohort.job.RunnerSpec` factory: dataset mode's case function, except that the case named by
    ``options["fault_case"]`` raises RuntimeError; with ``options["write_log"]`` every finished write is logged."""
    from cohort import case_files

    options = dict(options)
    fault_case = options.pop("fault_case", FAULT_CASE)
    write_log = options.pop("write_log", None)
    return _with_fault(case_files.build_case_runner(options), fault_case, Path(write_log) if write_log else None)


def inject_fault_into_process(fault_case: str = FAULT_CASE) -> None:
    """Make :func:`cohort.case_files.build_case_runner` (the factory dataset mode uses) fail ``fault_case``, for a
    command-line run in this interpreter."""
    from cohort import case_files

    original = case_files.build_case_runner
    case_files.build_case_runner = lambda options: _with_fault(original(options), fault_case, None)

"""A small HaN-Seg-LAYOUT dataset made from the shared OpenKBP CTs: for dry runs and CI of the HaN-Seg recipe.

Not HaN-Seg data: real OpenKBP CTs (``../shared/data/openkbp_hn_ct``) resampled to a coarse grid, their 7 OARs
renamed to HaN-Seg names (``training.convert_openkbp.OPENKBP_TO_HANSEG``) and written as one binary mask file per
OAR, a T1-like MR per case synthesised from the CT in its own moved scanner geometry (``training.t1_channel``,
seeded by the case id), and an ``OAR_data.csv``. It has what the real data has that the recipe must handle (MRs on
their own grids and fields of view, one OAR missing from one case: mask file absent and 0 in the table), on a grid
coarse enough for the whole recipe to run in minutes on a CPU. (No overlapping masks: OpenKBP's are exclusive.)::

    <out>/set_1/case_01/case_01_IMG_CT.nrrd, case_01_IMG_MR_T1.nrrd, case_01_OAR_<Name>.seg.nrrd ...
    <out>/set_1/OAR_data.csv

    python -m training.sample_hanseg_layout --out work_dirs/hanseg_sample [--cases pt_4 pt_13 pt_17 pt_201]
        [--spacing 8 8 6]

Spacing is SimpleITK order (x, y, z), mm. Case ``i`` (1-based, in ``--cases`` order) becomes ``case_0i``; the
second case has no SpinalCord.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from contract.labels import HANSEG_OAR_NAMES
from training.convert_openkbp import OPENKBP_LABELS, OPENKBP_TO_HANSEG, case_seed
from training.shared_data import shared_data_dir
from training.t1_channel import synthetic_mr

log = logging.getLogger(__name__)

DEFAULT_CASES = ("pt_4", "pt_13", "pt_17", "pt_201")
DEFAULT_SPACING_XYZ = (8.0, 8.0, 6.0)
DROPPED = {1: "SpinalCord"}
"""0-based case index -> an OAR left out of that case (mask file absent, 0 in OAR_data.csv)."""


def resample(image: sitk.Image, spacing_xyz: Sequence[float], interpolator: int, default: float) -> sitk.Image:
    """``image`` on a grid of ``spacing_xyz`` mm covering the same extent (same origin and direction)."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_xyz)]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), tuple(spacing_xyz),
                         image.GetDirection(), default, image.GetPixelID())


def write_sample(out: Path, cases: Sequence[str] = DEFAULT_CASES,
                 spacing_xyz: Sequence[float] = DEFAULT_SPACING_XYZ, source: Path | None = None) -> Path:
    """Write the sample dataset under ``out/set_1``; return that folder.

    Raises:
        FileNotFoundError: if a case is not in the shared OpenKBP folder.
    """
    source = source or shared_data_dir() / "openkbp_hn_ct"
    root = out / "set_1"
    rows = []
    for i, case in enumerate(cases):
        case_dir = source / "cases" / case
        if not (case_dir / "ct.nii.gz").is_file():
            raise FileNotFoundError(f"{case_dir / 'ct.nii.gz'}: no such OpenKBP case")
        case_id = f"case_{i + 1:02d}"
        dest = root / case_id
        dest.mkdir(parents=True, exist_ok=True)
        ct = resample(sitk.ReadImage(str(case_dir / "ct.nii.gz")), spacing_xyz, sitk.sitkLinear, -1024)
        labels = resample(sitk.ReadImage(str(case_dir / "oar_labels.nii.gz")), spacing_xyz,
                          sitk.sitkNearestNeighbor, 0)
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(dest / f"{case_id}_IMG_CT.nrrd"), useCompression=True)
        mr, _ = synthetic_mr(ct, case_seed(case_id))
        sitk.WriteImage(mr, str(dest / f"{case_id}_IMG_MR_T1.nrrd"), useCompression=True)
        arr = sitk.GetArrayFromImage(labels)
        delineated = set()
        for value, openkbp_name in OPENKBP_LABELS.items():
            name = OPENKBP_TO_HANSEG[openkbp_name]
            if DROPPED.get(i) == name or not (arr == value).any():
                continue
            mask = sitk.GetImageFromArray((arr == value).astype(np.uint8))
            mask.CopyInformation(labels)
            sitk.WriteImage(mask, str(dest / f"{case_id}_OAR_{name}.seg.nrrd"), useCompression=True)
            delineated.add(name)
        rows.append(f"{case_id};" + ";".join("1" if n in delineated else "0" for n in HANSEG_OAR_NAMES))
        log.info("%s <- OpenKBP %s: CT %s at %s mm, %d OAR masks", case_id, case, ct.GetSize(), spacing_xyz,
                 len(delineated))
    (root / "OAR_data.csv").write_text("ID;" + ";".join(HANSEG_OAR_NAMES) + "\n" + "\n".join(rows) + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="OpenKBP case ids")
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING_XYZ), metavar=("X", "Y", "Z"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        root = write_sample(args.out, args.cases, args.spacing)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

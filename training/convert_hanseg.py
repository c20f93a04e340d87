"""Convert HaN-Seg cases into an nnU-Net v2 raw dataset: CT + registered T1 channels, one label map per case.

Input layout (HaN-Seg, Zenodo 7442914; any folder depth)::

    <root>/.../case_XX/case_XX_IMG_CT.nrrd
                       case_XX_IMG_MR_T1.nrrd             (optional)
                       case_XX_OAR_<Name>.seg.nrrd        one binary mask per OAR present (<Name> from contract.labels)

Output: see ``training.raw_dataset``. Per case:

* ``_0000`` the CT as read (HU); ``_0001`` the T1 registered onto the CT grid. With ``--channels seed``: ``_0000``
  the CT soft-tissue window, ``_0001`` the CT bone window, ``_0002`` the T1. Every channel is built by the SAME
  code as inference (``preprocessing.channels``), and dataset.json declares the recipes and the MR registration
  (``--mr-registration``) so that inference rebuilds them. For the T1:
  if there is no MR, or the registration is rejected or fails, the channel is all zeros (what the model sees at
  inference without a usable MR, and under modality dropout in training) and this is recorded.
* the label map, on the CT grid, with the DATASET's consecutive label values (``training.dataset_labels``): the
  OARs present in at least one converted case, in HaN-Seg order. (If all 30 are present this is the HaN-Seg table.)

OVERLAP RULE: masks are painted from the largest OAR of the case to the smallest, so where masks overlap the
SMALLER structure wins (Glottis / Arytenoid inside Larynx_SG, Lips / BuccalMucosa against Cavity_Oral keep their
voxels; a large structure loses a thin rim). Overlap voxel counts per pair are recorded.

WHICH OARS A CASE HAS: HaN-Seg's ``OAR_data.csv`` (``training.hanseg_oar_table``; found under ``--src`` or given
with ``--oar-table``) says per case which OARs are delineated. A mask is painted only if the table marks it
delineated (a mask the table marks 0 or partial is left out and listed under ``masks_ignored``; an OAR the table
marks delineated without a mask file is listed under ``delineated_without_mask``). Without the table, every mask
file counts. Per training case ``label_availability.json`` (``training.label_availability``) lists the dataset
labels the case annotates, for the partial-label trainer.

MISSING OARS: an OAR the case lacks is background in its label map (nnU-Net has no per-case label mask).
``oars_missing`` lists, per case, only the OARs that OTHER cases of the dataset have (the dataset's labels), i.e.
the ones the case really lacks; OARs that no case has are listed once in the summary (``oars_in_no_case``).

Masks not on the CT grid are resampled onto it (nearest neighbour, physical space) and this is recorded.

Usage::

    python -m training.convert_hanseg --src /data/HaN-Seg/set_1 --out work_dirs/nnUNet_raw --dataset-id 601 \
        [--test-cases case_01 case_02] [--t1 registered|zeros] [--workers 2] [--oar-table OAR_data.csv]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.labels import HANSEG_LABELS, HANSEG_OAR_NAMES
from preprocessing.channels import (
    LEGACY_PLAN,
    NAMED_PLANS,
    NAMED_PLANS_HELP,
    REGISTRATION_MODES,
    ChannelPlan,
    channel_images,
)
from training.dataset_labels import dataset_label_table
from training.hanseg_oar_table import OarTable, find_oar_table, read_oar_table
from training.label_availability import FILE_NAME as AVAILABILITY_FILE
from training.label_availability import write_availability
from training.raw_dataset import dataset_folder_name, write_case_channels, write_dataset_json, write_report
from training.t1_channel import make_t1_channel

log = logging.getLogger(__name__)

DEFAULT_DATASET_NAME = "HaNSeg"
CT_SUFFIX = "_IMG_CT.nrrd"
MR_SUFFIX = "_IMG_MR_T1.nrrd"
OAR_PATTERN = re.compile(r"^(?P<case>.+)_OAR_(?P<name>.+)\.seg\.nrrd$")
GRID_TOLERANCE = 1e-3


def find_cases(root: Path) -> dict[str, Path]:
    """Case id -> case folder, for every ``*_IMG_CT.nrrd`` under ``root`` (sorted by id)."""
    cases = {}
    for ct in sorted(root.rglob(f"*{CT_SUFFIX}")):
        case_id = ct.name[: -len(CT_SUFFIX)]
        if case_id in cases:
            raise ValueError(f"case {case_id} found twice: {cases[case_id]} and {ct.parent}")
        cases[case_id] = ct.parent
    return cases


def find_masks(case_dir: Path, case_id: str) -> dict[str, Path]:
    """OAR name -> mask file of one case; unknown names are logged and skipped."""
    masks = {}
    for path in sorted(case_dir.glob(f"{case_id}_OAR_*.seg.nrrd")):
        match = OAR_PATTERN.match(path.name)
        if match is None:
            continue
        name = match["name"]
        if name not in HANSEG_LABELS:
            log.warning("%s: %s is not a HaN-Seg OAR name, skipped", case_id, path.name)
            continue
        masks[name] = path
    return masks


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, and spacing / origin / direction equal within 1e-3 (mm or unitless)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=GRID_TOLERANCE)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GRID_TOLERANCE)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=GRID_TOLERANCE))


def mask_on_ct_grid(mask: sitk.Image, ct: sitk.Image) -> tuple[np.ndarray, bool]:
    """Binary mask as a bool (z, y, x) array on the CT grid; second value True if it had to be resampled."""
    resampled = not same_grid(mask, ct)
    if resampled:
        mask = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return sitk.GetArrayFromImage(mask) > 0, resampled


def build_label_map(masks: dict[str, np.ndarray], table: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    """Combine binary masks into one uint8 label map with ``table``'s values (smaller OAR wins overlaps).

    Args:
        masks: OAR name -> bool array (z, y, x), all the same shape.
        table: dataset label table (name -> value), must hold every name in ``masks``.

    Returns:
        The label map and ``{"A&B": voxels}`` for every overlapping pair.
    """
    shape = next(iter(masks.values())).shape
    out = np.zeros(shape, dtype=np.uint8)
    overlaps = {}
    for a, b in itertools.combinations(sorted(masks), 2):
        n = int(np.count_nonzero(masks[a] & masks[b]))
        if n:
            overlaps[f"{a}&{b}"] = n
    # largest first, smallest last: the smallest structure overwrites (ties broken by HaN-Seg order)
    order = sorted(masks, key=lambda n: (-int(masks[n].sum()), HANSEG_LABELS[n]))
    for name in order:
        out[masks[name]] = table[name]
    return out, overlaps


@dataclass(frozen=True)
class CaseOars:
    """Which masks of one case are used, and what ``OAR_data.csv`` said about the others."""

    use: tuple[str, ...]
    ignored: dict[str, str]
    delineated_without_mask: tuple[str, ...]
    listed_in_table: bool | None


def case_oars(case_id: str, mask_names: list[str], oar_table: OarTable | None) -> CaseOars:
    """The masks to paint for ``case_id``: all of them without a table; else those the table marks delineated.

    ``ignored``: mask name -> the table's cell ("0" when not delineated, the raw text when unclear).
    """
    if oar_table is None:
        return CaseOars(tuple(mask_names), {}, (), None)
    if case_id not in oar_table.delineated:
        log.warning("%s: not listed in %s; every mask file counts", case_id, oar_table.path)
        return CaseOars(tuple(mask_names), {}, (), False)
    yes = oar_table.delineated[case_id]
    unclear = oar_table.unclear.get(case_id, {})
    use = tuple(n for n in mask_names if n in yes)
    ignored = {n: unclear.get(n, "0") for n in mask_names if n not in yes}
    without = tuple(n for n in HANSEG_OAR_NAMES if n in yes and n not in mask_names)
    return CaseOars(use, ignored, without, True)


def convert_case(case_id: str, case_dir: Path, out_dir: Path, table: dict[str, int], test: bool, t1_mode: str,
                 threads: int | None = None, oars: CaseOars | None = None,
                 plan: ChannelPlan = LEGACY_PLAN) -> dict[str, Any]:
    """Convert one HaN-Seg case; return its conversion record. ``oars``: which masks to use (default all);
    ``plan``: the channels to write (and the MR registration to use), built by the inference channel builder."""
    ct = sitk.ReadImage(str(case_dir / f"{case_id}{CT_SUFFIX}"))
    mask_files = find_masks(case_dir, case_id)
    if oars is None:
        oars = case_oars(case_id, list(mask_files), None)
    mask_files = {n: p for n, p in mask_files.items() if n in oars.use}
    masks, resampled = {}, []
    for name, path in mask_files.items():
        masks[name], was_resampled = mask_on_ct_grid(sitk.ReadImage(str(path)), ct)
        if was_resampled:
            resampled.append(name)
    if masks:
        label_arr, overlaps = build_label_map(masks, table)
    else:
        label_arr, overlaps = np.zeros(ct.GetSize()[::-1], dtype=np.uint8), {}
    label = sitk.GetImageFromArray(label_arr)
    label.CopyInformation(ct)

    mr_path = case_dir / f"{case_id}{MR_SUFFIX}"
    mr = sitk.ReadImage(str(mr_path), sitk.sitkFloat32) if mr_path.exists() and t1_mode == "registered" else None
    t1 = make_t1_channel(ct, t1_mode, mr=mr, threads=threads, registration=plan.mr_registration)
    mr_on_ct = None if t1.filled_with_zeros else t1.image
    write_case_channels(out_dir, case_id, channel_images(plan, ct, mr_on_ct), label, test=test)
    empty = [n for n, m in masks.items() if not m.any()]
    record = {
        "case": case_id,
        "split": "test (held out)" if test else "train",
        "oars_present": [n for n in HANSEG_OAR_NAMES if n in masks],
        "oars_missing": [n for n in table if n != "background" and n not in masks],
        "oars_empty_mask": empty,
        "masks_ignored": oars.ignored,
        "delineated_without_mask": list(oars.delineated_without_mask),
        "listed_in_oar_table": oars.listed_in_table,
        "masks_resampled_to_ct_grid": resampled,
        "overlap_voxels": overlaps,
        "overlap_rule": "smaller OAR wins (masks painted largest to smallest)",
        "mr_file": mr_path.name if mr_path.exists() else None,
        "t1": t1.record(),
    }
    log.info("%s: %d OARs (%d of the dataset's missing, %d masks ignored), %d overlapping pairs, T1 %s accepted=%s",
             case_id, len(masks), len(record["oars_missing"]), len(oars.ignored), len(overlaps), t1.mode, t1.accepted)
    return record


def convert(src: Path, raw_root: Path, dataset_id: int, name: str = DEFAULT_DATASET_NAME,
            test_cases: list[str] | None = None, t1_mode: str = "registered", workers: int = 1,
            all_labels: bool = False, oar_table: Path | None = None, plan: ChannelPlan = LEGACY_PLAN) -> Path:
    """Convert every HaN-Seg case under ``src`` into ``raw_root/DatasetXXX_Name``; return that folder.

    Args:
        plan: the input channels and MR registration (:data:`preprocessing.channels.LEGACY_PLAN`: CT + T1, rigid;
            ``SEED_RECIPE_PLAN``: CT soft window, CT bone window, T1, rigid + B-spline); written to dataset.json
            so that inference rebuilds the same channels.
        test_cases: case ids written to imagesTs/labelsTs (held out) instead of imagesTr/labelsTr.
        t1_mode: ``registered`` (real MR, inference registration) or ``zeros``.
        all_labels: use all 30 HaN-Seg OARs in dataset.json even if some are absent from every case.
        oar_table: HaN-Seg's ``OAR_data.csv`` (default: the one found under ``src``, if any).
    """
    cases = find_cases(src)
    if not cases:
        raise FileNotFoundError(f"no *{CT_SUFFIX} under {src}")
    test_set = set(test_cases or [])
    unknown = test_set - set(cases)
    if unknown:
        raise ValueError(f"test cases not found under {src}: {sorted(unknown)}")
    table_path = oar_table if oar_table is not None else find_oar_table(src)
    oar_rows = read_oar_table(table_path) if table_path is not None else None
    if oar_rows is None:
        log.info("no %s under %s: every mask file counts as delineated", "OAR_data.csv", src)
    used = {cid: case_oars(cid, list(find_masks(d, cid)), oar_rows) for cid, d in cases.items()}
    present = set(HANSEG_OAR_NAMES) if all_labels else {n for u in used.values() for n in u.use}
    table = dataset_label_table(present)
    out_dir = raw_root / dataset_folder_name(dataset_id, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cid, d, cid in test_set) for cid, d in cases.items()]
    threads = 1 if workers > 1 else None
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(convert_case, c, d, out_dir, table, t, t1_mode, threads, used[c], plan)
                       for c, d, t in jobs]
            records = [f.result() for f in futures]
    else:
        records = [convert_case(c, d, out_dir, table, t, t1_mode, threads, used[c], plan) for c, d, t in jobs]
    n_train = sum(1 for r in records if r["split"] == "train")
    t1_note = ("T1 = the case's MR registered onto the CT grid by preprocessing.registration (zeros where rejected)"
               if t1_mode == "registered" else "T1 channel is all zeros (placeholder)")
    write_dataset_json(out_dir, table, n_train,
                       description=f"HaN-Seg cases from {src}. {t1_note}. Overlaps: smaller OAR wins. "
                                   "Missing OARs are background; see conversion_report.json.",
                       extra={"t1_channel": t1_mode, "label_availability": AVAILABILITY_FILE},
                       channel_keys=plan.dataset_json_keys())
    write_availability(out_dir, table, {r["case"]: r["oars_present"] for r in records if r["split"] == "train"})
    rejected = [r["case"] for r in records if r["t1"]["t1_channel_zeros"]]
    write_report(out_dir, records, {
        "t1_mode": t1_mode, "t1_note": t1_note, "num_training": n_train, "num_test": len(records) - n_train,
        "labels": table, "overlap_rule": "smaller OAR wins (masks painted largest to smallest)",
        "t1_zeros_cases": rejected,
        "cases_missing_oars": {r["case"]: r["oars_missing"] for r in records if r["oars_missing"]},
        "oars_in_no_case": [n for n in HANSEG_OAR_NAMES if n not in table],
        "oar_table": None if oar_rows is None else str(oar_rows.path),
        "oar_table_ignored_columns": [] if oar_rows is None else list(oar_rows.ignored_columns),
        "cases_with_masks_ignored": {r["case"]: r["masks_ignored"] for r in records if r["masks_ignored"]},
    })
    log.info("wrote %s: %d training, %d held out, %d labels, T1 zeros for %d cases", out_dir, n_train,
             len(records) - n_train, len(table) - 1, len(rejected))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="folder holding case_XX/ folders (any depth)")
    parser.add_argument("--out", type=Path, required=True, help="nnUNet_raw folder")
    parser.add_argument("--dataset-id", type=int, default=601)
    parser.add_argument("--name", default=DEFAULT_DATASET_NAME)
    parser.add_argument("--test-cases", nargs="*", default=[])
    parser.add_argument("--t1", choices=("registered", "zeros"), default="registered")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--all-labels", action="store_true", help="all 30 OARs in dataset.json")
    parser.add_argument("--oar-table", type=Path, help="HaN-Seg's OAR_data.csv (default: found under --src)")
    parser.add_argument("--channels", choices=sorted(NAMED_PLANS), default="ct+t1", help=NAMED_PLANS_HELP)
    parser.add_argument("--mr-registration", choices=REGISTRATION_MODES, default=None,
                        help="MR registration written to dataset.json and used here (default rigid; rigid+bspline adds "
                             "the B-spline stage, which did not beat rigid on the synthetic protocol yet)")
    args = parser.parse_args(argv)
    plan = NAMED_PLANS[args.channels]
    if args.mr_registration:
        plan = ChannelPlan(plan.recipes, args.mr_registration)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    convert(args.src, args.out, args.dataset_id, args.name, args.test_cases, args.t1, args.workers, args.all_labels,
            args.oar_table, plan)


if __name__ == "__main__":
    main()

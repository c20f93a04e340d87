"""Convert the shared OpenKBP head-and-neck cases into an nnU-Net v2 raw dataset with HaN-Seg OAR names.

Sources (found beside the repository, ``../shared/data``, or under ``$HANSEG_SHARED_DIR/data``; README in each):
``openkbp_hn_ct`` (34 cases with all 7 OARs) and ``openkbp_hn_ct_partial`` (169 cases with SOME of them). Each has
``cases/pt_N/ct.nii.gz`` (int16 HU, 128^3), ``cases/pt_N/oar_labels.nii.gz`` (1 Brainstem, 2 SpinalCord,
3 RightParotid, 4 LeftParotid, 5 Esophagus, 6 Larynx, 7 Mandible; where masks overlapped the higher OpenKBP label
already won) and ``cases.json`` (split; for partial cases ``oars_present``, the only labels to trust).

**Partial labels.** An OAR a case lacks is NOT CONTOURED there, not "no organ here". The converter writes, per case,
the labels it annotates into ``label_availability.json`` (``training.label_availability``), which the partial-label
trainer reads; a mask not listed in ``oars_present`` is removed from the map. With ``--merge-lr`` Parotid_L/R are one
label ``Parotid`` (dataset.json ``lr_split`` declares the pair; inference splits it by the mid-sagittal plane); the
merged label counts as annotated only when BOTH sides are (else both sides' voxels become unknown background).
Held-out label maps (``labelsTs``) keep the 7 separate OARs in HaN-Seg values (dataset.json ``labelsTs_values``).

Mapping to HaN-Seg names, as the README gives it (approximate: contouring protocols differ): Brainstem, SpinalCord,
RightParotid->Parotid_R, LeftParotid->Parotid_L, Mandible->Bone_Mandible, Esophagus->Esophagus_S (OpenKBP's extends
further down), Larynx->Larynx_SG (OpenKBP's larynx is roughly Larynx_SG + Glottis; Larynx_SG is the closest single
HaN-Seg structure).

THERE IS NO MR FOR THESE PATIENTS. With ``--t1 synthetic`` (the default) the T1 channel is a T1-like image
SYNTHESISED from the CT by ``preprocessing.synthetic_t1`` under a random rigid transform and field of view, then
registered back onto the CT by the inference registration code (see ``training.t1_channel``). ``--t1 zeros`` writes
an all-zero T1 channel instead. dataset.json and conversion_report.json state which.

``--channels`` picks the input layout (:data:`preprocessing.channels.NAMED_PLANS`, built by the inference channel
builder and declared in dataset.json): ``ct+t1`` (default), ``seed`` or ``2.5d`` (CT + T1 plus the CT 5 / 2.5 mm
below and above every slice).

``train-pats`` go to imagesTr/labelsTr (nnU-Net trains and cross-validates on them); ``validation-pats`` go to
imagesTs/labelsTs (held out: never seen in training, used for the model card).

Usage::

    python -m training.convert_openkbp --out work_dirs/nnUNet_raw --dataset-id 502 --name OpenKBPHaNPartial \
        --merge-lr [--t1 synthetic|zeros] [--source DIR ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.labels import LATERAL_PAIRS, hanseg_value
from preprocessing.channels import LEGACY_PLAN, NAMED_PLANS, NAMED_PLANS_HELP, ChannelPlan, channel_images
from training.dataset_labels import (
    dataset_label_table,
    hanseg_to_dataset_lut,
    lr_split_declaration,
)
from training.label_availability import write_availability
from training.raw_dataset import dataset_folder_name, write_case_channels, write_dataset_json, write_report
from training.shared_data import shared_data_dir
from training.t1_channel import T1_MODES, make_t1_channel

log = logging.getLogger(__name__)

SOURCE_NAMES = ("openkbp_hn_ct", "openkbp_hn_ct_partial")
DEFAULT_DATASET_ID = 501
DEFAULT_DATASET_NAME = "OpenKBPHaN"


def default_sources() -> list[Path]:
    """The shared OpenKBP folders that exist (full cases first)."""
    return [p for p in (shared_data_dir() / name for name in SOURCE_NAMES) if (p / "cases.json").is_file()]

OPENKBP_LABELS: dict[int, str] = {
    1: "Brainstem", 2: "SpinalCord", 3: "RightParotid", 4: "LeftParotid", 5: "Esophagus", 6: "Larynx", 7: "Mandible",
}
"""Label values in the shared ``oar_labels.nii.gz`` files."""

OPENKBP_TO_HANSEG: dict[str, str] = {
    "Brainstem": "Brainstem",
    "SpinalCord": "SpinalCord",
    "RightParotid": "Parotid_R",
    "LeftParotid": "Parotid_L",
    "Esophagus": "Esophagus_S",
    "Larynx": "Larynx_SG",
    "Mandible": "Bone_Mandible",
}
"""OpenKBP OAR name -> HaN-Seg OAR name (the shared README's mapping; Larynx -> Larynx_SG is our choice)."""

LABEL_TABLE: dict[str, int] = dataset_label_table(OPENKBP_TO_HANSEG.values())
"""dataset.json labels: background + the 7 HaN-Seg names, consecutive in HaN-Seg order."""


def label_table(merge_lr: bool = False) -> dict[str, int]:
    """dataset.json labels for the 7 OARs, with Parotid_L/R as one ``Parotid`` label when ``merge_lr``."""
    return dataset_label_table(OPENKBP_TO_HANSEG.values(), merge_lr=merge_lr)


def openkbp_to_dataset_lut(table: dict[str, int] | None = None) -> np.ndarray:
    """``lut[openkbp_value] -> dataset value`` (uint8), via the HaN-Seg names (default table: LABEL_TABLE)."""
    to_dataset = hanseg_to_dataset_lut(LABEL_TABLE if table is None else table)
    lut = np.zeros(max(OPENKBP_LABELS) + 1, dtype=np.uint8)
    for value, name in OPENKBP_LABELS.items():
        lut[value] = to_dataset[hanseg_value(OPENKBP_TO_HANSEG[name])]
    return lut


def openkbp_to_hanseg_lut() -> np.ndarray:
    """``lut[openkbp_value] -> HaN-Seg value`` (uint8)."""
    lut = np.zeros(max(OPENKBP_LABELS) + 1, dtype=np.uint8)
    for value, name in OPENKBP_LABELS.items():
        lut[value] = hanseg_value(OPENKBP_TO_HANSEG[name])
    return lut


def annotated_openkbp_names(meta: dict[str, Any]) -> list[str]:
    """OpenKBP OAR names a case annotates: ``oars_present`` of a partial case, else all 7 (full cases)."""
    present = meta.get("oars_present")
    if present is None:
        return list(OPENKBP_LABELS.values())
    unknown = sorted(set(present) - set(OPENKBP_LABELS.values()))
    if unknown:
        raise ValueError(f"unknown OpenKBP OAR names in oars_present: {unknown}")
    return [n for n in OPENKBP_LABELS.values() if n in present]


def annotated_training_labels(present_hanseg: list[str], table: dict[str, int]) -> list[str]:
    """Training label names (keys of ``table``) a case annotates; a merged L/R label only when both sides are."""
    out = []
    for name in table:
        if name == "background":
            continue
        members = LATERAL_PAIRS.get(name, (name,))
        if all(m in present_hanseg for m in members):
            out.append(name)
    return out


def case_seed(case_id: str) -> int:
    """Stable per-case seed for the synthetic T1 (crc32 of the case id)."""
    return zlib.crc32(case_id.encode()) & 0x7FFFFFFF


def convert_case(source: Path, case_id: str, out_dir: Path, test: bool, t1_mode: str,
                 threads: int | None = None, meta: dict[str, Any] | None = None,
                 merge_lr: bool = False, plan: ChannelPlan = LEGACY_PLAN) -> dict[str, Any]:
    """Convert one OpenKBP case; return its conversion record.

    ``meta`` is the case's ``cases.json`` entry (``oars_present`` for partial cases; all 7 OARs when absent).
    Training label maps hold dataset values of :func:`label_table` (``merge_lr``); voxels of an OAR the case does
    not annotate (not in ``oars_present``, or one side of a merged pair that lacks the other) are background there
    and listed as not annotated. Held-out label maps hold HaN-Seg values of the annotated OARs.
    """
    case_dir = source / "cases" / case_id
    ct = sitk.ReadImage(str(case_dir / "ct.nii.gz"))
    lab = sitk.ReadImage(str(case_dir / "oar_labels.nii.gz"))
    lab_arr = sitk.GetArrayFromImage(lab)  # z, y, x
    if lab_arr.max() > max(OPENKBP_LABELS):
        raise ValueError(f"{case_id}: unexpected label value {lab_arr.max()}")
    annotated_kbp = annotated_openkbp_names(meta or {})
    keep = np.zeros(max(OPENKBP_LABELS) + 1, dtype=bool)
    for value, name in OPENKBP_LABELS.items():
        keep[value] = name in annotated_kbp
    dropped = [OPENKBP_LABELS[v] for v in np.unique(lab_arr) if v != 0 and not keep[v]]
    lab_arr = np.where(keep[lab_arr], lab_arr, 0)
    present = [OPENKBP_TO_HANSEG[n] for n in annotated_kbp]
    table = label_table(merge_lr)
    annotated = annotated_training_labels(present, table)
    if test:
        out_arr = openkbp_to_hanseg_lut()[lab_arr]
    else:
        out_arr = openkbp_to_dataset_lut(table)[lab_arr]
        annotated_values = np.zeros(max(table.values()) + 1, dtype=bool)
        annotated_values[[table[n] for n in annotated]] = True
        out_arr = np.where(annotated_values[out_arr], out_arr, 0).astype(np.uint8)
    label = sitk.GetImageFromArray(out_arr)
    label.CopyInformation(ct)
    t1 = make_t1_channel(ct, "zeros" if t1_mode == "zeros" else "synthetic", seed=case_seed(case_id),
                         threads=threads)
    mr_on_ct = None if t1.filled_with_zeros else t1.image
    write_case_channels(out_dir, case_id, channel_images(plan, ct, mr_on_ct), label, test=test)
    record = {
        "case": case_id,
        "source": source.name,
        "split": "test (held out)" if test else "train",
        "oars_present": present,
        "oars_missing": [n for n in OPENKBP_TO_HANSEG.values() if n not in present],
        "labels_annotated": annotated,
        "masks_removed_not_in_oars_present": dropped,
        "overlap_rule": "OpenKBP source map: higher OpenKBP label won where masks overlapped",
        "t1": t1.record(),
    }
    log.info("%s: %s, %d/%d labels annotated, T1 %s (accepted=%s)", case_id, record["split"], len(annotated),
             len(table) - 1, t1.mode, t1.accepted)
    return record


def convert(sources: Path | list[Path], raw_root: Path, dataset_id: int = DEFAULT_DATASET_ID,
            name: str = DEFAULT_DATASET_NAME, t1_mode: str = "synthetic", cases: list[str] | None = None,
            workers: int = 1, include_test: bool = True, merge_lr: bool = False,
            plan: ChannelPlan = LEGACY_PLAN) -> Path:
    """Convert the OpenKBP cases of one or more shared folders into ``raw_root/DatasetXXX_Name``; return it.

    Args:
        sources: shared OpenKBP folders (each with ``cases.json``); a case id may appear in one only.
        raw_root: nnU-Net's ``nnUNet_raw``.
        t1_mode: ``synthetic`` or ``zeros``.
        cases: restrict to these case ids (default: all).
        workers: processes converting cases in parallel.
        include_test: also write the validation-pats into imagesTs/labelsTs.
        merge_lr: train Parotid_L/R as one ``Parotid`` label (declared in dataset.json ``lr_split``).
        plan: the input channels (default CT + T1; written to dataset.json). The MR registration is always rigid
            here (the synthetic T1 is a rigid copy of the CT).
    """
    if t1_mode not in ("synthetic", "zeros"):
        raise ValueError(f"t1_mode must be 'synthetic' or 'zeros' for OpenKBP (no MR exists), got {t1_mode!r}")
    sources = [sources] if isinstance(sources, Path) else list(sources)
    if not sources:
        raise ValueError(f"no OpenKBP source folder found (looked under {shared_data_dir()})")
    meta: dict[str, tuple[Path, dict[str, Any]]] = {}
    for source in sources:
        for case_id, entry in json.loads((source / "cases.json").read_text()).items():
            if case_id in meta:
                raise ValueError(f"case {case_id} is in both {meta[case_id][0]} and {source}")
            meta[case_id] = (source, entry)
    todo = [c for c in meta if cases is None or c in cases]
    out_dir = raw_root / dataset_folder_name(dataset_id, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(c, meta[c][1]["split"] != "train-pats") for c in todo
            if include_test or meta[c][1]["split"] == "train-pats"]
    threads = 1 if workers > 1 else None
    args = [(meta[c][0], c, out_dir, t, t1_mode, threads, meta[c][1], merge_lr, plan) for c, t in jobs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            records = [f.result() for f in [pool.submit(convert_case, *a) for a in args]]
    else:
        records = [convert_case(*a) for a in args]
    table = label_table(merge_lr)
    n_train = sum(1 for r in records if r["split"] == "train")
    n_partial = sum(1 for r in records if r["split"] == "train" and len(r["labels_annotated"]) < len(table) - 1)
    write_availability(out_dir, table, {r["case"]: r["labels_annotated"] for r in records if r["split"] == "train"})
    t1_note = ("T1 channel SYNTHESISED from the CT by preprocessing.synthetic_t1 (random rigid transform and field of "
               "view), then registered back onto the CT by preprocessing.registration; NOT a real MR"
               if t1_mode == "synthetic" else "T1 channel is all zeros (placeholder: no MR)")
    extra: dict[str, Any] = {"t1_channel": t1_mode, "source": [s.name for s in sources],
                             "name_mapping": OPENKBP_TO_HANSEG, "labelsTs_values": "hanseg",
                             "label_availability": "label_availability.json"}
    if merge_lr:
        extra["lr_split"] = lr_split_declaration(table)
    write_dataset_json(
        out_dir, table, n_train,
        description=f"OpenKBP head-and-neck CTs ({n_train} train-pats, {n_partial} of them partially labelled; "
                    f"{len(records) - n_train} validation-pats held out in imagesTs), 7 OARs renamed to HaN-Seg names"
                    f"{' (Parotid_L/R trained as one Parotid label, split at inference)' if merge_lr else ''}. "
                    f"{t1_note}.",
        extra=extra, channel_keys=plan.dataset_json_keys(),
    )
    rejected = [r["case"] for r in records if r["t1"]["registration_accepted"] is False]
    write_report(out_dir, records, {
        "t1_mode": t1_mode, "t1_note": t1_note, "num_training": n_train, "num_test": len(records) - n_train,
        "num_training_partially_labelled": n_partial, "labels": table, "registration_rejected_t1_zeros": rejected,
    })
    log.info("wrote %s: %d training, %d held-out cases; %d registrations rejected", out_dir, n_train,
             len(records) - n_train, len(rejected))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, action="append",
                        help="shared OpenKBP folder (repeatable; default: openkbp_hn_ct and openkbp_hn_ct_partial "
                             "under ../shared/data or $HANSEG_SHARED_DIR/data)")
    parser.add_argument("--out", type=Path, required=True, help="nnUNet_raw folder")
    parser.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID)
    parser.add_argument("--name", default=DEFAULT_DATASET_NAME)
    parser.add_argument("--t1", choices=[m for m in T1_MODES if m != "registered"], default="synthetic")
    parser.add_argument("--cases", nargs="*", help="only these case ids (e.g. pt_4 pt_13)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-test", action="store_true", help="skip the held-out validation-pats")
    parser.add_argument("--merge-lr", action="store_true", help="train Parotid_L/R as one label (split at inference)")
    parser.add_argument("--channels", choices=sorted(NAMED_PLANS), default="ct+t1", help=NAMED_PLANS_HELP)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    convert(args.source or default_sources(), args.out, args.dataset_id, args.name, args.t1, args.cases,
            args.workers, include_test=not args.no_test, merge_lr=args.merge_lr, plan=NAMED_PLANS[args.channels])


if __name__ == "__main__":
    main()

"""Convert the shared OpenKBP head-and-neck cases into an nnU-Net v2 raw dataset with HaN-Seg OAR names.

Source: ``/work/shared/data/openkbp_hn_ct`` (README there): ``cases/pt_N/ct.nii.gz`` (int16 HU, 128^3) and
``cases/pt_N/oar_labels.nii.gz`` (1 Brainstem, 2 SpinalCord, 3 RightParotid, 4 LeftParotid, 5 Esophagus, 6 Larynx,
7 Mandible; where masks overlapped the higher OpenKBP label already won), ``cases.json`` (split).

Mapping to HaN-Seg names, as the README gives it (approximate: contouring protocols differ): Brainstem, SpinalCord,
RightParotid->Parotid_R, LeftParotid->Parotid_L, Mandible->Bone_Mandible, Esophagus->Esophagus_S (OpenKBP's extends
further down), Larynx->Larynx_SG (OpenKBP's larynx is roughly Larynx_SG + Glottis; Larynx_SG is the closest single
HaN-Seg structure).

THERE IS NO MR FOR THESE PATIENTS. With ``--t1 synthetic`` (the default) the T1 channel is a T1-like image
SYNTHESISED from the CT by ``preprocessing.synthetic_t1`` under a random rigid transform and field of view, then
registered back onto the CT by the inference registration code (see ``training.t1_channel``). ``--t1 zeros`` writes
an all-zero T1 channel instead. dataset.json and conversion_report.json state which.

``train-pats`` go to imagesTr/labelsTr (nnU-Net trains and cross-validates on them); ``validation-pats`` go to
imagesTs/labelsTs (held out: never seen in training, used for the model card).

Usage::

    python -m training.convert_openkbp --out work_dirs/nnUNet_raw --dataset-id 501 [--t1 synthetic|zeros]
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

from training.dataset_labels import dataset_label_table, hanseg_to_dataset_lut
from training.raw_dataset import dataset_folder_name, write_case, write_dataset_json, write_report
from training.t1_channel import T1_MODES, make_t1_channel

log = logging.getLogger(__name__)

DEFAULT_SOURCE = Path("/work/shared/data/openkbp_hn_ct")
DEFAULT_DATASET_ID = 501
DEFAULT_DATASET_NAME = "OpenKBPHaN"

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


def openkbp_to_dataset_lut() -> np.ndarray:
    """``lut[openkbp_value] -> dataset value`` (uint8), via the HaN-Seg names."""
    from contract.labels import hanseg_value

    to_dataset = hanseg_to_dataset_lut(LABEL_TABLE)
    lut = np.zeros(max(OPENKBP_LABELS) + 1, dtype=np.uint8)
    for value, name in OPENKBP_LABELS.items():
        lut[value] = to_dataset[hanseg_value(OPENKBP_TO_HANSEG[name])]
    return lut


def case_seed(case_id: str) -> int:
    """Stable per-case seed for the synthetic T1 (crc32 of the case id)."""
    return zlib.crc32(case_id.encode()) & 0x7FFFFFFF


def convert_case(source: Path, case_id: str, out_dir: Path, test: bool, t1_mode: str,
                 threads: int | None = None) -> dict[str, Any]:
    """Convert one OpenKBP case; return its conversion record."""
    case_dir = source / "cases" / case_id
    ct = sitk.ReadImage(str(case_dir / "ct.nii.gz"))
    lab = sitk.ReadImage(str(case_dir / "oar_labels.nii.gz"))
    lab_arr = sitk.GetArrayFromImage(lab)  # z, y, x
    if lab_arr.max() > max(OPENKBP_LABELS):
        raise ValueError(f"{case_id}: unexpected label value {lab_arr.max()}")
    out_arr = openkbp_to_dataset_lut()[lab_arr]
    label = sitk.GetImageFromArray(out_arr)
    label.CopyInformation(ct)
    t1 = make_t1_channel(ct, "zeros" if t1_mode == "zeros" else "synthetic", seed=case_seed(case_id),
                         threads=threads)
    write_case(out_dir, case_id, ct, t1.image, label, test=test)
    present = [OPENKBP_TO_HANSEG[OPENKBP_LABELS[v]] for v in sorted(np.unique(lab_arr)) if v != 0]
    record = {
        "case": case_id,
        "split": "test (held out)" if test else "train",
        "oars_present": present,
        "oars_missing": [n for n in LABEL_TABLE if n != "background" and n not in present],
        "overlap_rule": "OpenKBP source map: higher OpenKBP label won where masks overlapped",
        "t1": t1.record(),
    }
    log.info("%s: %s, T1 %s (accepted=%s)", case_id, record["split"], t1.mode, t1.accepted)
    return record


def convert(source: Path, raw_root: Path, dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_DATASET_NAME,
            t1_mode: str = "synthetic", cases: list[str] | None = None, workers: int = 1,
            include_test: bool = True) -> Path:
    """Convert the OpenKBP cases into ``raw_root/DatasetXXX_Name`` and return that folder.

    Args:
        source: the shared OpenKBP folder (with ``cases.json``).
        raw_root: nnU-Net's ``nnUNet_raw``.
        t1_mode: ``synthetic`` or ``zeros``.
        cases: restrict to these case ids (default: all).
        workers: processes converting cases in parallel.
        include_test: also write the validation-pats into imagesTs/labelsTs.
    """
    if t1_mode not in ("synthetic", "zeros"):
        raise ValueError(f"t1_mode must be 'synthetic' or 'zeros' for OpenKBP (no MR exists), got {t1_mode!r}")
    meta = json.loads((source / "cases.json").read_text())
    todo = [c for c in meta if cases is None or c in cases]
    out_dir = raw_root / dataset_folder_name(dataset_id, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(c, meta[c]["split"] != "train-pats") for c in todo if include_test or meta[c]["split"] == "train-pats"]
    threads = 1 if workers > 1 else None
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(convert_case, source, c, out_dir, t, t1_mode, threads) for c, t in jobs]
            records = [f.result() for f in futures]
    else:
        records = [convert_case(source, c, out_dir, t, t1_mode, threads) for c, t in jobs]
    n_train = sum(1 for r in records if r["split"] == "train")
    t1_note = ("T1 channel SYNTHESISED from the CT by preprocessing.synthetic_t1 (random rigid transform and field of "
               "view), then registered back onto the CT by preprocessing.registration; NOT a real MR"
               if t1_mode == "synthetic" else "T1 channel is all zeros (placeholder: no MR)")
    write_dataset_json(
        out_dir, LABEL_TABLE, n_train,
        description=f"OpenKBP head-and-neck CTs (30 train-pats, 4 validation-pats held out in imagesTs), 7 OARs "
                    f"renamed to HaN-Seg names. {t1_note}.",
        extra={"t1_channel": t1_mode, "source": str(source), "name_mapping": OPENKBP_TO_HANSEG},
    )
    rejected = [r["case"] for r in records if r["t1"]["registration_accepted"] is False]
    write_report(out_dir, records, {
        "t1_mode": t1_mode, "t1_note": t1_note, "num_training": n_train, "num_test": len(records) - n_train,
        "labels": LABEL_TABLE, "registration_rejected_t1_zeros": rejected,
    })
    log.info("wrote %s: %d training, %d held-out cases; %d registrations rejected", out_dir, n_train,
             len(records) - n_train, len(rejected))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, required=True, help="nnUNet_raw folder")
    parser.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID)
    parser.add_argument("--name", default=DEFAULT_DATASET_NAME)
    parser.add_argument("--t1", choices=[m for m in T1_MODES if m != "registered"], default="synthetic")
    parser.add_argument("--cases", nargs="*", help="only these case ids (e.g. pt_4 pt_13)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-test", action="store_true", help="skip the held-out validation-pats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    convert(args.source, args.out, args.dataset_id, args.name, args.t1, args.cases, args.workers,
            include_test=not args.no_test)


if __name__ == "__main__":
    main()

"""Regenerate the bundled sample case (run from the repo root: python -m sample.make_sample).

CT: OpenKBP validation case pt_201 (held out from training), ../shared/data/openkbp_hn_ct/cases/pt_201/ct.nii.gz
(OpenKBP challenge data derived from TCIA; cite Babier et al., Med. Phys. 48:5549-5561, 2021, and TCIA).
T1 MR: SYNTHETIC, made from that CT by preprocessing.synthetic_t1 (T1-like contrast, bias field, noise) on its own
1.8 x 1.8 x 3.0 mm grid covering the head only, under a known rigid motion; there is no real MR of this patient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing.synthetic_t1 import make_t1_like

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "shared" / "data" / "openkbp_hn_ct" / "cases" / "pt_201" / "ct.nii.gz"


def main() -> None:
    ct = sitk.ReadImage(str(SOURCE))
    sitk.WriteImage(ct, str(HERE / "input" / "images" / "ct" / "pt_201_ct.mha"), useCompression=True)
    mr = make_t1_like(ct, rotation_deg=(4.0, -3.0, 2.0), translation_mm=(15.0, -25.0, 10.0),
                      spacing_mm=(1.8, 1.8, 3.0), seed=201).image
    mr_int = sitk.Cast(sitk.Clamp(sitk.Round(mr), sitk.sitkFloat32, 0, 32767), sitk.sitkInt16)
    sitk.WriteImage(mr_int, str(HERE / "input" / "images" / "t1-mri" / "pt_201_t1.mha"), useCompression=True)
    print("sample written; MR size", mr.GetSize(), "range", np.ptp(sitk.GetArrayViewFromImage(mr)))


if __name__ == "__main__":
    main()

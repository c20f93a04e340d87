"""HaN-Seg's OAR_data.csv: the reader (training.hanseg_oar_table) and its use by the converter.

The converter must paint only the masks the table marks delineated, list the others, and report per case only the
OARs that other cases of the dataset have. Registration is the stub of test_training_convert (not under test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from test.test_training_convert import _stub_registration, hanseg_root  # noqa: F401 - fixture
from training import convert_hanseg
from training.hanseg_oar_table import case_id, oar_name, read_oar_table


def test_reader_detects_delimiter_aliases_ids_and_unclear_cells(tmp_path: Path) -> None:
    semicolon = tmp_path / "a.csv"
    semicolon.write_text("ID;Brainstem;eye_l;Lens_R;Glottis;Comment\n1;1;1.0;0;0.5;ok\ncase_02;0;;x;1;\n")
    table = read_oar_table(semicolon)
    assert table.delineated == {"case_01": {"Brainstem", "Eye_AL"}, "case_02": {"Eye_PR", "Glottis"}}
    assert table.unclear == {"case_01": {"Glottis": "0.5"}}  # partial: not delineated, kept for the report
    assert table.ignored_columns == ("Comment",)
    comma = tmp_path / "b.csv"
    comma.write_text("case,SpinalCord,Parotid_L\n07,1,1\n")
    assert read_oar_table(comma).delineated == {"case_07": {"SpinalCord", "Parotid_L"}}
    assert oar_name("OPTICCHIASM") == "OpticChiasm" and oar_name("Nose") is None and case_id(" 3 ") == "case_03"
    bad = tmp_path / "c.csv"
    bad.write_text("ID;Foo;Bar\ncase_01;1;1\n")
    with pytest.raises(ValueError, match="no column names an OAR"):
        read_oar_table(bad)


def test_converter_follows_oar_data_csv(hanseg_root: Path, tmp_path: Path,  # noqa: F811 - fixture
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """case_01 has Larynx_SG, Glottis and Brainstem masks but the table marks Glottis 0; case_02 has a Brainstem
    mask, and the table says Lips is delineated too (no mask file); case_03 is not in the table."""
    _stub_registration(monkeypatch)
    d3 = hanseg_root / "case_03"
    d3.mkdir()
    for name in ("IMG_CT", "OAR_Brainstem"):
        src = hanseg_root / "case_02" / f"case_02_{name}.{'seg.' if name.startswith('OAR') else ''}nrrd"
        sitk.WriteImage(sitk.ReadImage(str(src)), str(d3 / src.name.replace("case_02", "case_03")))
    (hanseg_root / "OAR_data.csv").write_text(
        "ID;Brainstem;Glottis;Larynx_SG;Lips\ncase_01;1;0;1;0\ncase_02;1;0;0;1\n")
    out = convert_hanseg.convert(hanseg_root, tmp_path / "raw", 906)

    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "Brainstem": 1, "Larynx_SG": 2}  # Glottis: in no case (table: 0)
    assert dataset["label_availability"] == "label_availability.json"
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case_01.nii.gz")))
    assert lab[7, 9, 11] == 2 and lab[10, 9, 11] == 0  # Glottis-only voxels are background: its mask was not used
    assert set(np.unique(lab)) == {0, 1, 2}

    report = json.loads((out / "conversion_report.json").read_text())
    rec = {r["case"]: r for r in report["cases"]}
    assert rec["case_01"]["masks_ignored"] == {"Glottis": "0"} and rec["case_01"]["oars_missing"] == []
    assert rec["case_02"]["oars_missing"] == ["Larynx_SG"]  # only OARs that other cases have
    assert rec["case_02"]["delineated_without_mask"] == ["Lips"]
    assert rec["case_03"]["listed_in_oar_table"] is False and rec["case_03"]["oars_present"] == ["Brainstem"]
    assert "Glottis" in report["summary"]["oars_in_no_case"] and len(report["summary"]["oars_in_no_case"]) == 28
    assert report["summary"]["oar_table"].endswith("OAR_data.csv")
    assert report["summary"]["cases_with_masks_ignored"] == {"case_01": {"Glottis": "0"}}

    availability = json.loads((out / "label_availability.json").read_text())
    assert availability["labels"] == dataset["labels"]
    assert availability["cases"] == {"case_01": ["Brainstem", "Larynx_SG"], "case_02": ["Brainstem"],
                                     "case_03": ["Brainstem"]}

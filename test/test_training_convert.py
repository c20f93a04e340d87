"""Fast tests of the training-data converters on tiny cases made here (no real data, no real registration).

The HaN-Seg case has overlapping masks (Glottis inside Larynx_SG), OARs missing (28 of 30), and an MR on another
grid (other size, spacing and origin). Registration is replaced by a stub that returns a known translation, so the
test checks the converter's use of the registration API and the T1 resampling onto the CT grid, not registration.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.labels import HANSEG_LABELS, HANSEG_OAR_NAMES, model_to_hanseg_lookup
from training import convert_hanseg, convert_openkbp
from training.dataset_labels import dataset_label_table, dataset_to_hanseg_lut, hanseg_to_dataset_lut

CT_SIZE = (24, 20, 16)  # x, y, z
CT_SPACING = (2.0, 2.0, 3.0)  # mm, x, y, z
CT_ORIGIN = (-24.0, -20.0, -24.0)


def _image(arr_zyx: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...]) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _box(shape_zyx: tuple[int, ...], z: slice, y: slice, x: slice) -> np.ndarray:
    m = np.zeros(shape_zyx, dtype=np.uint8)
    m[z, y, x] = 1
    return m


@pytest.fixture
def hanseg_root(tmp_path: Path) -> Path:
    """Two HaN-Seg-layout cases: case_01 (MR, overlapping masks), case_02 (no MR, one mask)."""
    shape = CT_SIZE[::-1]
    rng = np.random.default_rng(0)
    root = tmp_path / "HaN-Seg" / "set_1"
    for case in ("case_01", "case_02"):
        d = root / case
        d.mkdir(parents=True)
        ct = (rng.normal(40, 10, shape)).astype(np.int16)
        sitk.WriteImage(_image(ct, CT_SPACING, CT_ORIGIN), str(d / f"{case}_IMG_CT.nrrd"))
    d1, d2 = root / "case_01", root / "case_02"
    larynx = _box(shape, slice(2, 10), slice(4, 14), slice(6, 18))  # 8*10*12 = 960 voxels
    glottis = _box(shape, slice(6, 12), slice(8, 12), slice(10, 14))  # 6*4*4 = 96 voxels; overlaps larynx
    brainstem = _box(shape, slice(12, 15), slice(2, 5), slice(2, 5))
    for name, m in (("Larynx_SG", larynx), ("Glottis", glottis), ("Brainstem", brainstem)):
        sitk.WriteImage(_image(m, CT_SPACING, CT_ORIGIN), str(d1 / f"case_01_OAR_{name}.seg.nrrd"))
    sitk.WriteImage(_image(brainstem, CT_SPACING, CT_ORIGIN), str(d2 / "case_02_OAR_Brainstem.seg.nrrd"))
    # MR on another grid: 1.5 mm isotropic, other origin and size; intensity = its own x index (a ramp)
    mr_shape = (30, 36, 40)  # z, y, x
    mr = np.broadcast_to(np.arange(mr_shape[2], dtype=np.float32), mr_shape).copy() + 1
    sitk.WriteImage(_image(mr, (1.5, 1.5, 1.5), (-30.0, -27.0, -22.5)), str(d1 / "case_01_IMG_MR_T1.nrrd"))
    return root


class _Result:
    def __init__(self, accepted: bool, transform: sitk.Transform):
        self.ct_to_mr = transform
        self.accepted = accepted
        self.reason = "" if accepted else "stub: rejected"
        self.metrics = {"mi": -0.5}


def _stub_registration(monkeypatch: pytest.MonkeyPatch, accepted: bool = True) -> list:
    from preprocessing import registration

    calls = []

    def register(ct: sitk.Image, mr: sitk.Image, threads: int | None = None, **kwargs: object) -> _Result:
        calls.append((ct.GetSize(), mr.GetSize()))
        return _Result(accepted, sitk.TranslationTransform(3, (1.5, 0.0, 0.0)))

    monkeypatch.setattr(registration, "register_mr_to_ct", register)
    return calls


def test_label_table_is_consecutive_in_hanseg_order() -> None:
    table = dataset_label_table(["SpinalCord", "Brainstem", "Glottis", "Brainstem"])
    assert table == {"background": 0, "Brainstem": 1, "Glottis": 2, "SpinalCord": 3}
    assert model_to_hanseg_lookup(table) == [0, HANSEG_LABELS["Brainstem"], HANSEG_LABELS["Glottis"],
                                             HANSEG_LABELS["SpinalCord"]]
    assert list(dataset_to_hanseg_lut(table)) == model_to_hanseg_lookup(table)
    lut = hanseg_to_dataset_lut(table)
    assert lut[HANSEG_LABELS["Glottis"]] == 2 and lut[HANSEG_LABELS["Lips"]] == 0
    assert dataset_label_table(HANSEG_OAR_NAMES) == {"background": 0, **HANSEG_LABELS}
    with pytest.raises(KeyError):
        dataset_label_table(["Larynx"])


def test_hanseg_conversion(hanseg_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub_registration(monkeypatch, accepted=True)
    out = convert_hanseg.convert(hanseg_root.parent, tmp_path / "raw", 901, test_cases=["case_02"])
    assert out.name == "Dataset901_HaNSeg"
    assert calls == [(CT_SIZE, (40, 36, 30))]  # only case_01 has an MR

    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "T1"}
    assert dataset["labels"] == {"background": 0, "Brainstem": 1, "Glottis": 2, "Larynx_SG": 3}
    assert dataset["numTraining"] == 1 and dataset["file_ending"] == ".nii.gz"

    ct = sitk.ReadImage(str(out / "imagesTr" / "case_01_0000.nii.gz"))
    assert ct.GetSize() == CT_SIZE
    t1 = sitk.ReadImage(str(out / "imagesTr" / "case_01_0001.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "case_01.nii.gz"))
    for img in (t1, lab):
        assert img.GetSize() == CT_SIZE
        assert np.allclose(img.GetSpacing(), CT_SPACING) and np.allclose(img.GetOrigin(), CT_ORIGIN)
    assert lab.GetPixelID() == sitk.sitkUInt8 and t1.GetPixelID() == sitk.sitkFloat32

    # T1 = MR resampled through ct_to_mr (x + 1.5 mm): CT voxel x index i -> MR x = -24 + 2 i + 1.5 -> MR index
    t1_arr = sitk.GetArrayFromImage(t1)
    i = 5
    mr_index = (-24.0 + 2.0 * i + 1.5 - (-30.0)) / 1.5
    assert t1_arr[8, 10, i] == pytest.approx(mr_index + 1, abs=1e-3)

    # overlap rule: the smaller OAR (Glottis) wins where it overlaps Larynx_SG
    arr = sitk.GetArrayFromImage(lab)
    assert arr[7, 9, 11] == 2  # inside both
    assert arr[3, 5, 7] == 3  # Larynx_SG only
    assert arr[10, 9, 11] == 2  # Glottis only (z 10-11 is outside Larynx_SG)
    assert arr[13, 3, 3] == 1
    assert set(np.unique(arr)) == {0, 1, 2, 3}

    report = json.loads((out / "conversion_report.json").read_text())
    rec = {r["case"]: r for r in report["cases"]}
    assert rec["case_01"]["overlap_voxels"] == {"Glottis&Larynx_SG": 4 * 4 * 4}
    assert rec["case_01"]["t1"]["registration_accepted"] is True
    # missing = only the dataset's OARs (those some case has): case_01 has all three, case_02 lacks two of them
    assert rec["case_01"]["oars_missing"] == []
    assert rec["case_02"]["oars_missing"] == ["Glottis", "Larynx_SG"]
    assert set(report["summary"]["oars_in_no_case"]) == set(HANSEG_OAR_NAMES) - {"Brainstem", "Glottis", "Larynx_SG"}
    assert report["summary"]["oar_table"] is None and rec["case_01"]["listed_in_oar_table"] is None
    availability = json.loads((out / "label_availability.json").read_text())
    assert availability["cases"] == {"case_01": ["Brainstem", "Glottis", "Larynx_SG"]}  # training cases only
    assert rec["case_02"]["split"].startswith("test")
    assert rec["case_02"]["t1"]["t1_channel_zeros"] is True  # no MR -> zeros, recorded
    assert "Glottis" in report["summary"]["cases_missing_oars"]["case_02"]
    assert (out / "imagesTs" / "case_02_0001.nii.gz").exists() and (out / "labelsTs" / "case_02.nii.gz").exists()
    t1_02 = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTs" / "case_02_0001.nii.gz")))
    assert not t1_02.any()


def test_hanseg_rejected_registration_gives_zeros(hanseg_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_registration(monkeypatch, accepted=False)
    out = convert_hanseg.convert(hanseg_root, tmp_path / "raw", 902)
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "case_01_0001.nii.gz")))
    assert not t1.any()
    report = json.loads((out / "conversion_report.json").read_text())
    rec = {r["case"]: r for r in report["cases"]}["case_01"]
    assert rec["t1"]["registration_accepted"] is False and rec["t1"]["t1_channel_zeros"] is True
    assert rec["t1"]["reason"] == "stub: rejected"
    assert "case_01" in report["summary"]["t1_zeros_cases"]


def test_mask_on_other_grid_is_resampled(hanseg_root: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_registration(monkeypatch)
    d = hanseg_root / "case_02"
    fine = _image(np.ones((32, 40, 48), dtype=np.uint8), (1.0, 1.0, 1.5), CT_ORIGIN)  # half the CT voxel size
    sitk.WriteImage(fine, str(d / "case_02_OAR_Lips.seg.nrrd"))
    out = convert_hanseg.convert(hanseg_root, tmp_path / "raw", 903)
    rec = {r["case"]: r for r in json.loads((out / "conversion_report.json").read_text())["cases"]}["case_02"]
    assert rec["masks_resampled_to_ct_grid"] == ["Lips"]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case_02.nii.gz")))
    lips = json.loads((out / "dataset.json").read_text())["labels"]["Lips"]
    assert (lab == lips).sum() > 0.2 * lab.size


def test_openkbp_conversion_zero_t1(tmp_path: Path) -> None:
    src = tmp_path / "openkbp"
    cases = {"pt_1": "train-pats", "pt_2": "validation-pats"}
    shape = (8, 10, 12)
    for i, case in enumerate(cases):
        d = src / "cases" / case
        d.mkdir(parents=True)
        ct = np.full(shape, -1000, dtype=np.int16)
        lab = np.zeros(shape, dtype=np.uint8)
        for v in range(1, 8):
            lab[v, 2:4, 3 + i: 5 + i] = v  # one small block per OpenKBP label
        sitk.WriteImage(_image(ct, (4.7, 4.7, 2.5), (0, 0, 0)), str(d / "ct.nii.gz"))
        sitk.WriteImage(_image(lab, (4.7, 4.7, 2.5), (0, 0, 0)), str(d / "oar_labels.nii.gz"))
    (src / "cases.json").write_text(json.dumps({c: {"split": s} for c, s in cases.items()}))
    out = convert_openkbp.convert(src, tmp_path / "raw", 904, t1_mode="zeros")
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "T1"}
    assert list(dataset["labels"]) == ["background", "Bone_Mandible", "Brainstem", "Esophagus_S", "Larynx_SG",
                                       "Parotid_L", "Parotid_R", "SpinalCord"]
    assert dataset["numTraining"] == 1 and "zeros" in dataset["description"]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "pt_1.nii.gz")))
    lut = model_to_hanseg_lookup(dataset["labels"])
    # OpenKBP value v sits in slice v: check every mapping through the HaN-Seg names
    for v, name in convert_openkbp.OPENKBP_LABELS.items():
        assert lut[lab[v, 2, 3]] == HANSEG_LABELS[convert_openkbp.OPENKBP_TO_HANSEG[name]]
    assert (out / "labelsTs" / "pt_2.nii.gz").exists()
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "pt_1_0001.nii.gz"))).any()


def test_openkbp_converter_writes_the_z_context_channels_inference_builds(tmp_path: Path) -> None:
    """``--channels 2.5d``: six channel files, declared in dataset.json, each equal to what inference builds from
    the written CT (one builder); the context channels are the CT 5 / 2.5 mm below and above (2.5 mm slices)."""
    from preprocessing.channels import Z_CONTEXT_PLAN, channel_arrays, parse_channel_plan

    src = tmp_path / "openkbp"
    d = src / "cases" / "pt_1"
    d.mkdir(parents=True)
    ct = (np.arange(8, dtype=np.int16)[:, None, None] * 100 - 500 + np.zeros((8, 10, 12), np.int16)).astype(np.int16)
    lab = np.zeros(ct.shape, dtype=np.uint8)
    lab[3, 2:4, 3:5] = 1
    sitk.WriteImage(_image(ct, (4.7, 4.7, 2.5), (0, 0, 0)), str(d / "ct.nii.gz"))
    sitk.WriteImage(_image(lab, (4.7, 4.7, 2.5), (0, 0, 0)), str(d / "oar_labels.nii.gz"))
    (src / "cases.json").write_text(json.dumps({"pt_1": {"split": "train-pats"}}))
    out = convert_openkbp.convert(src, tmp_path / "raw", 906, t1_mode="zeros", plan=Z_CONTEXT_PLAN)
    assert parse_channel_plan(json.loads((out / "dataset.json").read_text())) == Z_CONTEXT_PLAN
    written = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / f"pt_1_{i:04d}.nii.gz")))
               for i in range(6)]
    assert not (out / "imagesTr" / "pt_1_0006.nii.gz").exists()
    written_ct = sitk.ReadImage(str(out / "imagesTr" / "pt_1_0000.nii.gz"))
    for i, (a, b) in enumerate(zip(written, channel_arrays(Z_CONTEXT_PLAN, written_ct, None))):
        assert np.array_equal(a, b), f"channel {i} differs from inference's"
    z = written[0][:, 0, 0].astype(float)  # -500, -400, ... one slice = 2.5 mm = 100 HU up the ramp
    np.testing.assert_array_equal(written[3][:, 0, 0], np.r_[z[0], z[:-1]])  # 2.5 mm toward the feet
    np.testing.assert_array_equal(written[5][:, 0, 0], np.r_[z[2:], z[-1], z[-1]])  # 5 mm toward the head
    assert not written[1].any()  # T1 zeros


def test_modality_dropout_zeroes_whole_channels() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    from training.trainers import nnUNetTrainerModalityDropout

    trainer = object.__new__(nnUNetTrainerModalityDropout)
    trainer._dropout_rng = np.random.default_rng(0)
    data = torch.ones(400, 2, 4, 4)
    trainer.apply_modality_dropout(data)
    mr_dropped = (data[:, 1] == 0).flatten(1).all(1)
    ct_dropped = (data[:, 0] == 0).flatten(1).all(1)
    untouched = (data == 1).flatten(1).all(1)
    assert not (mr_dropped & ct_dropped).any()
    assert bool((mr_dropped | ct_dropped | untouched).all())
    assert 0.2 < mr_dropped.float().mean() < 0.4 and 0.0 < ct_dropped.float().mean() < 0.12


def test_case_stored_with_flipped_axes_is_written_in_the_training_orientation(hanseg_root: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A case whose CT and masks are stored with x and y reversed (direction diag(-1, -1, 1), "RAS") is written
    with the identity direction, every voxel in the same physical place, and dataset.json states "LPS"."""
    _stub_registration(monkeypatch)
    d = hanseg_root / "case_02"
    for path in [d / "case_02_IMG_CT.nrrd", d / "case_02_OAR_Brainstem.seg.nrrd"]:
        image = sitk.ReadImage(str(path))
        flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, ::-1, ::-1].copy())
        flipped.SetSpacing(image.GetSpacing())
        flipped.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        flipped.SetOrigin(image.TransformIndexToPhysicalPoint([s - 1 for s in image.GetSize()[:2]] + [0]))
        sitk.WriteImage(flipped, str(path))
    out = convert_hanseg.convert(hanseg_root, tmp_path / "raw", 905)
    assert json.loads((out / "dataset.json").read_text())["orientation"] == "LPS"
    ct = sitk.ReadImage(str(out / "imagesTr" / "case_02_0000.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "case_02.nii.gz"))
    for img in (ct, lab):
        assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert np.allclose(img.GetOrigin(), CT_ORIGIN)
    stored_ct = sitk.ReadImage(str(d / "case_02_IMG_CT.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(stored_ct)[:, ::-1, ::-1])
    brainstem = json.loads((out / "dataset.json").read_text())["labels"]["Brainstem"]
    assert (sitk.GetArrayFromImage(lab)[12:15, 2:5, 2:5] == brainstem).all()  # where the fixture drew it


def _partial_openkbp_source(tmp_path: Path) -> Path:
    """Two OpenKBP-layout cases: pt_1 fully labelled (no ``oars_present``), pt_3 annotating only Brainstem,
    SpinalCord and the RIGHT parotid, with a stray Mandible mask that ``oars_present`` does not list."""
    src = tmp_path / "openkbp_partial"
    shape = (8, 10, 12)
    meta = {"pt_1": {"split": "train-pats"},
            "pt_3": {"split": "train-pats", "oars_present": ["Brainstem", "SpinalCord", "RightParotid"]},
            "pt_9": {"split": "validation-pats", "oars_present": ["Brainstem", "LeftParotid"]}}
    for case in meta:
        d = src / "cases" / case
        d.mkdir(parents=True)
        lab = np.zeros(shape, dtype=np.uint8)
        for v in range(1, 8):
            lab[v, 2:4, 3:5] = v
        sitk.WriteImage(_image(np.full(shape, -1000, np.int16), (4.7, 4.7, 2.5), (0, 0, 0)), str(d / "ct.nii.gz"))
        sitk.WriteImage(_image(lab, (4.7, 4.7, 2.5), (0, 0, 0)), str(d / "oar_labels.nii.gz"))
    (src / "cases.json").write_text(json.dumps(meta))
    return src


def test_partial_cases_get_an_availability_record_that_the_trainer_reads_back(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from training.trainers import read_availability_masks

    out = convert_openkbp.convert(_partial_openkbp_source(tmp_path), tmp_path / "raw", 905, t1_mode="zeros",
                                  merge_lr=True)
    dataset = json.loads((out / "dataset.json").read_text())
    labels = dataset["labels"]
    assert list(labels) == ["background", "Bone_Mandible", "Brainstem", "Esophagus_S", "Larynx_SG", "Parotid",
                            "SpinalCord"]
    assert dataset["lr_split"] == {"Parotid": ["Parotid_L", "Parotid_R"]}
    masks = read_availability_masks(str(out / dataset["label_availability"]), labels)
    assert set(masks) == {"pt_1", "pt_3"}  # training cases only
    assert masks["pt_1"].all()
    # pt_3: only one parotid side annotated -> the merged Parotid is unknown there, like the unlisted OARs
    assert [n for n, v in labels.items() if masks["pt_3"][v]] == ["background", "Brainstem", "SpinalCord"]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "pt_3.nii.gz")))
    assert set(np.unique(lab)) == {0, labels["Brainstem"], labels["SpinalCord"]}  # the stray Mandible is gone
    # held out: HaN-Seg values of the annotated OARs only, left and right kept apart for scoring
    held_out = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTs" / "pt_9.nii.gz")))
    assert dataset["labelsTs_values"] == "hanseg"
    assert set(np.unique(held_out)) == {0, HANSEG_LABELS["Brainstem"], HANSEG_LABELS["Parotid_L"]}


def test_an_availability_record_of_another_label_table_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from training.label_availability import write_availability
    from training.trainers import read_availability_masks

    path = write_availability(tmp_path, {"background": 0, "Brainstem": 1}, {"pt_1": ["Brainstem"]})
    with pytest.raises(RuntimeError, match="label_availability.json"):
        read_availability_masks(str(path), {"background": 0, "Brainstem": 1, "SpinalCord": 2})
    with pytest.raises(ValueError, match="not foreground labels"):
        write_availability(tmp_path, {"background": 0, "Brainstem": 1}, {"pt_1": ["Mandible"]})

"""The public in-memory API (hanseg.segment) against the command line, and the run record.

Real parts: a real OpenKBP CT, a T1-like MR made from it under a known rigid motion (registered for real), a
random-weight nnU-Net model folder, the real ``process.py`` in a fresh interpreter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import hanseg
from contract.imageio import write_image_atomic
from hanseg.record import read_record
from test.test_process import make_case, run_process

pytestmark = pytest.mark.usefixtures("one_thread")


def two_cases(real_ct: sitk.Image, tmp_path: Path) -> list[tuple[Path, sitk.Image, sitk.Image | None]]:
    """Case A: CT + T1-like MR; case B: another field of view of the CT, without MR. Written as platform-layout
    folders; returns (folder, CT, MR) with the images as read back from the files."""
    cases = []
    for name, ct, with_mr in (("case_a", real_ct[:, :, 30:110], True), ("case_b", real_ct[:, :, 50:90], False)):
        root = make_case(tmp_path / name, ct, with_mr=with_mr, name=name)
        mr_files = sorted((root / "images" / "t1-mri").glob("*.mha")) if with_mr else []
        mr = sitk.ReadImage(str(mr_files[0])) if mr_files else None
        cases.append((root, sitk.ReadImage(str(root / "images" / "ct" / f"{name}.mha")), mr))
    return cases


@pytest.mark.slow
def test_segment_with_one_loaded_model_equals_two_command_line_runs(real_ct, small_model, tmp_path, monkeypatch):
    cases = two_cases(real_ct, tmp_path)
    expected = []
    for root, _, _ in cases:
        out = tmp_path / f"out_{root.name}"  # outside the input folder (refused inside it: contract.output_state)
        result = run_process("--input", root, "--output", out, "--model", small_model, "--folds", "0",
                             "--no-tta", env={"HANSEG_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        (written,) = (out / "images" / "head_neck_oar").iterdir()
        expected.append(sitk.ReadImage(str(written)))

    model = hanseg.Model.load(small_model, hanseg.Settings(folds=("0",), use_mirroring=False, progress=False))

    def no_files(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("segment() touched a file")

    monkeypatch.setattr(sitk, "ReadImage", no_files)
    monkeypatch.setattr(sitk, "WriteImage", no_files)
    results = [hanseg.segment(ct, mr, model, case_id=root.name) for root, ct, mr in cases]
    monkeypatch.undo()

    for result, want, (_, ct, mr) in zip(results, expected, cases):
        assert isinstance(result.labels, sitk.Image)
        assert result.labels.GetSize() == ct.GetSize() and result.labels.GetDirection() == ct.GetDirection()
        assert result.labels.GetOrigin() == ct.GetOrigin() and result.labels.GetSpacing() == ct.GetSpacing()
        got_array, want_array = sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(want)
        assert len(np.unique(got_array)) > 1
        np.testing.assert_array_equal(got_array, want_array)
        assert result.mr.status == ("used" if mr is not None else "absent")


def test_segment_refuses_a_2d_image_in_memory(small_model):
    from contract.errors import InputError

    model = hanseg.Model.load(small_model, hanseg.Settings(folds=("0",), use_mirroring=False, progress=False))
    with pytest.raises(InputError, match="CT must be a 3-D image"):
        hanseg.segment(sitk.Image([64, 64], sitk.sitkInt16), None, model)


def files_sha256(folder: Path, fold_names: list[str]) -> str:
    digest = hashlib.sha256()
    for path in [folder / "plans.json", folder / "dataset.json",
                 *(folder / f"fold_{f}" / "checkpoint_final.pth" for f in fold_names)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_the_run_record_names_the_model_and_reproduces_the_label_map(real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct[:, :, 30:110], with_mr=True)
    records = tmp_path / "records"
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--folds", "1",
                         "--tile-step", "0.75", "--record", records, env={"HANSEG_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in records.iterdir()) == ["case_a.ct_to_mr.tfm", "case_a.record.json"]
    (label_file,) = (tmp_path / "out" / "images" / "head_neck_oar").iterdir()  # nothing else in the platform folder

    record = read_record(records / "case_a.record.json")
    assert record["model"]["weights_sha256"] == files_sha256(small_model, ["1"])
    assert record["model"]["folds"] == ["1"] and record["ran"]["folds"] == ["1"]
    assert record["mr"]["decision"] == "used" and record["mr"]["registration_metrics"]
    assert record["settings"]["tile_step"] == 0.75 and record["settings"]["use_mirroring"] is True
    assert record["software"]["version"] == hanseg.__version__
    assert set(record["volumes_ml"]) and all(v > 0 for v in record["volumes_ml"].values())
    assert set(record["timings_s"]) >= {"mr_channel", "preprocess", "predict_and_export", "total"}
    transform = sitk.ReadTransform(str(records / "case_a.ct_to_mr.tfm"))
    np.testing.assert_allclose(transform.GetParameters(), record["mr"]["ct_to_mr"]["parameters"])

    settings = hanseg.Settings(progress=False).with_inference(record["settings"])
    model = hanseg.Model.load(small_model, settings)
    ct = sitk.ReadImage(str(root / "images" / "ct" / "case_a.mha"))
    mr = sitk.ReadImage(str(next((root / "images" / "t1-mri").iterdir())))
    rerun = hanseg.segment(ct, mr, model)
    assert rerun.record["model"] == record["model"]
    assert json.dumps(rerun.record["mr"]["ct_to_mr"]) == json.dumps(record["mr"]["ct_to_mr"])
    again = tmp_path / "again" / label_file.name
    write_image_atomic(rerun.labels, again)
    assert again.read_bytes() == label_file.read_bytes()

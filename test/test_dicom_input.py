"""DICOM input: series read with the right HU and geometry, series choice, and bad DICOM refused (exit 2, one line
naming the series or file, nothing written). Series are written from a real OpenKBP CT by SimpleITK's series
writer (test/dicom_series.py), not by our own writer."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate

from contract.errors import InputError
from dicom_io.discovery import choose_series, scan_series
from dicom_io.reader import read_series
from test.conftest import HEAD_MR, openkbp_ct_path
from test.dicom_series import EXIT_INPUT, coronal, run_process, write_series


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    """OpenKBP pt_4 cut to 40 slices (128 x 128 x 40, HU): quick to write, still a 3-D head-and-neck CT."""
    return sitk.ReadImage(str(openkbp_ct_path("pt_4")))[:, :, 40:80]


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    return run_process(*args)


@pytest.mark.parametrize("variant", ["axial_reversed_intercept", "coronal"])
def test_series_reads_back_with_hu_and_geometry(ct: sitk.Image, tmp_path: Path, variant: str) -> None:
    image = coronal(ct) if variant == "coronal" else ct
    paths = write_series(image, tmp_path / "s", intercept=-1024 if variant != "coronal" else 0,
                         reverse_order=variant != "coronal")
    if variant != "coronal":  # the stored values really are shifted, and the files run head to feet
        first = pydicom.dcmread(paths[0])
        assert float(first.RescaleIntercept) == -1024 and first.pixel_array.min() >= 0
        assert int(first.InstanceNumber) == image.GetSize()[2]
    study = choose_series(scan_series(tmp_path / "s"), tmp_path / "s")
    back = read_series(study.ct)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    assert study.mr is None


def test_ct_series_option_chooses_between_two(ct: sitk.Image, tmp_path: Path) -> None:
    study_uid = pydicom.uid.generate_uid()
    write_series(ct, tmp_path / "a", description="CT plain", study_uid=study_uid)
    second = write_series(ct[:, :, 5:35], tmp_path / "b", description="CT contrast", study_uid=study_uid)
    uid = str(pydicom.dcmread(second[0]).SeriesInstanceUID)
    series = scan_series(tmp_path)
    with pytest.raises(InputError, match="2 CT series.*--ct-series"):
        choose_series(series, tmp_path)
    assert choose_series(series, tmp_path, ct_uid=uid).ct.uid == uid
    with pytest.raises(InputError, match="no such image series"):
        choose_series(series, tmp_path, ct_uid="1.2.3.4")


def test_t1_mr_series_chosen_by_description(ct: sitk.Image, tmp_path: Path) -> None:
    mr = sitk.ReadImage(str(HEAD_MR / "visible_male_head_mri.mha"))
    study_uid = pydicom.uid.generate_uid()
    write_series(ct, tmp_path / "ct", study_uid=study_uid)
    write_series(mr, tmp_path / "t2", modality="MR", description="AX T2 FSE", study_uid=study_uid)
    t1 = write_series(mr, tmp_path / "t1", modality="MR", description="AX T1 SE", study_uid=study_uid)
    study = choose_series(scan_series(tmp_path), tmp_path)
    assert study.mr is not None and study.mr.uid == str(pydicom.dcmread(t1[0]).SeriesInstanceUID)
    assert np.array_equal(sitk.GetArrayFromImage(read_series(study.mr, "T1 MR")), sitk.GetArrayFromImage(mr))


def _tilted(ct: sitk.Image, root: Path) -> str:
    return str(pydicom.dcmread(write_series(ct, root / "ct", tilt_deg=15)[0]).SeriesInstanceUID)


def _missing_slice(ct: sitk.Image, root: Path) -> str:
    return str(pydicom.dcmread(write_series(ct, root / "ct", drop=[17])[0]).SeriesInstanceUID)


def _two_ct_series(ct: sitk.Image, root: Path) -> str:
    study_uid = pydicom.uid.generate_uid()
    write_series(ct, root / "plain", study_uid=study_uid)
    write_series(ct, root / "contrast", study_uid=study_uid, description="CT contrast")
    return "choose one with --ct-series"


def _mr_only(ct: sitk.Image, root: Path) -> str:
    mr = sitk.ReadImage(str(HEAD_MR / "visible_male_head_mri.mha"))
    uid = pydicom.dcmread(write_series(mr, root / "mr", modality="MR", description="T1")[0]).SeriesInstanceUID
    return f"no CT series found (found: series {uid}"


def _truncated_file(ct: sitk.Image, root: Path) -> str:
    paths = write_series(ct, root / "ct")
    data = paths[20].read_bytes()
    paths[20].write_bytes(data[: len(data) // 2])
    return paths[20].name


def _garbage_file(ct: sitk.Image, root: Path) -> str:
    write_series(ct, root / "ct")
    (root / "ct" / "IM9999.dcm").write_bytes(b"\x00\x01not a dicom file" * 64)
    return "IM9999.dcm"


@pytest.mark.parametrize("make, problem", [
    (_tilted, "gantry tilt"), (_missing_slice, "missing slice"), (_two_ct_series, "2 CT series"),
    (_mr_only, "no CT series"), (_truncated_file, "truncated pixel data"), (_garbage_file, "corrupt"),
], ids=["tilt", "missing-slice", "two-ct-series", "mr-only", "truncated-file", "garbage-file"])
def test_bad_dicom_is_refused(make, problem: str, ct: sitk.Image, tmp_path: Path,  # noqa: ANN001
                              capsys: pytest.CaptureFixture[str]) -> None:
    names = make(ct, tmp_path / "in")
    out = tmp_path / "out"
    code, errors = _run_cli(["--input", str(tmp_path / "in"), "--output", str(out),
                             "--output-type", "mha,rtstruct,dicom-seg"], capsys)
    assert code == EXIT_INPUT
    assert len(errors) == 1, errors
    assert problem in errors[0] and names in errors[0], errors[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def _edit(paths: list[Path], index: int, **values: object) -> None:
    ds = pydicom.dcmread(paths[index])
    for keyword, value in values.items():
        if keyword == "TransferSyntaxUID":  # a compressed syntax: the (unchanged) bytes encapsulated as one frame
            ds.file_meta.TransferSyntaxUID = value
            ds.PixelData = encapsulate([ds.PixelData])
        else:
            setattr(ds, keyword, value)
    ds.save_as(paths[index])


def _duplicated_slice(ct: sitk.Image, root: Path) -> str:
    paths = write_series(ct, root / "ct")
    _edit(paths, 11, ImagePositionPatient=pydicom.dcmread(paths[10]).ImagePositionPatient)
    return paths[10].name


def _uneven_spacing(ct: sitk.Image, root: Path) -> str:
    paths = write_series(ct, root / "ct")
    position = [float(v) for v in pydicom.dcmread(paths[10]).ImagePositionPatient]
    _edit(paths, 10, ImagePositionPatient=[position[0], position[1], position[2] + 0.4])
    return "gaps from 2.100 to 2.900 mm"


def _mixed_orientation(ct: sitk.Image, root: Path) -> str:
    paths = write_series(ct, root / "ct")
    _edit(paths, 5, ImageOrientationPatient=[1, 0, 0, 0, 0.9998, 0.02])
    return paths[5].name


def _undecodable_syntax(ct: sitk.Image, root: Path) -> str:
    paths = write_series(ct, root / "ct")
    _edit(paths, 3, TransferSyntaxUID="1.2.840.10008.1.2.4.201")
    return "1.2.840.10008.1.2.4.201 (High-Throughput JPEG 2000"


@pytest.mark.parametrize("make, problem", [
    (_duplicated_slice, "duplicated slice"), (_uneven_spacing, "non-uniform slice spacing"),
    (_mixed_orientation, "mixed orientations"), (_undecodable_syntax, "cannot be decoded"),
], ids=["duplicated-slice", "uneven-spacing", "mixed-orientation", "undecodable-syntax"])
def test_more_bad_series_are_refused(make, problem: str, ct: sitk.Image, tmp_path: Path,  # noqa: ANN001
                                     capsys: pytest.CaptureFixture[str]) -> None:
    detail = make(ct, tmp_path / "in")
    code, errors = _run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")], capsys)
    assert code == EXIT_INPUT and len(errors) == 1
    assert problem in errors[0] and detail in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


def test_zip_member_outside_the_archive_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.dcm", b"x")
    code, errors = _run_cli(["--input", str(archive), "--output", str(tmp_path / "out")], capsys)
    assert code == EXIT_INPUT and "outside the archive root" in errors[0]
    assert not (tmp_path / "escape.dcm").exists() and not (tmp_path / "out").exists()


def test_unknown_output_type_is_a_usage_error(tmp_path: Path) -> None:
    code, _ = run_process("--input", tmp_path, "--output", tmp_path / "out", "--output-type", "mha,rtss")
    assert code == 2 and not (tmp_path / "out").exists()


def test_dicom_writers_leave_the_text_encoding_alone(ct: sitk.Image, tmp_path: Path) -> None:
    """SimpleITK's GDCM writer sets LC_CTYPE to "C"; both writers restore it (else later UTF-8 reads fail)."""
    import locale

    from dicom_io.ct_writer import write_ct_series

    before = locale.getpreferredencoding(False)
    write_ct_series(ct[:, :, :3], tmp_path / "ours", "pt_4")
    write_series(ct[:, :, :3], tmp_path / "test_writer")
    assert locale.getpreferredencoding(False) == before

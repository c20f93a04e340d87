"""The input root is a boundary (issue 13, part 2): no read outside it, only regular files, inputs.json checked,
image headers and the model grid checked before memory is spent.

End-to-end tests run the real command line and check exit 2 with one ``error:`` line and nothing written.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.errors import InputError
from contract.inputs import find_folder_case
from devkit.make_test_model import make_test_model
from test.conftest import REPO
from test.test_process import assert_failed_cleanly, make_case, run_process


def _outside_ct(tmp_path: Path, real_ct: sitk.Image) -> Path:
    path = tmp_path / "outside" / "secret.mha"
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(real_ct[:, :, 60:70], str(path))
    return path


def _ct_folder(root: Path) -> Path:
    folder = root / "images" / "ct"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _mhd(folder: Path, data_file: str, name: str = "ct.mhd") -> Path:
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "ElementSpacing = 3 3 3\nDimSize = 16 16 8\nElementType = MET_SHORT\n"
              f"ElementDataFile = {data_file}\n")
    path = folder / name
    path.write_text(header)
    return path


def _raw_pixels(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(-1000, 1000, 16 * 16 * 8, dtype=np.int16).tobytes())
    return path


def _nhdr(folder: Path, data_file: str) -> Path:
    path = folder / "ct.nrrd"  # a .nrrd may be a detached header too
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 16 16 8\nspacings: 3 3 3\nencoding: raw\n"
                    f"endian: little\ndata file: {data_file}\n\n")
    return path


# --- reads outside the input root: exit 2, nothing written ---------------------------------------------------------

def _symlinked_file(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    (_ct_folder(root) / "ct.mha").symlink_to(_outside_ct(tmp_path, real_ct))
    return "outside the input folder"


def _symlinked_folder(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    (root / "images").mkdir(parents=True)
    (root / "images" / "ct").symlink_to(_outside_ct(tmp_path, real_ct).parent, target_is_directory=True)
    return "outside the input folder"


def _mhd_absolute(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    _mhd(_ct_folder(root), "/etc/passwd")
    return "data file resolves to /etc/passwd"


def _mhd_relative(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    _raw_pixels(tmp_path / "outside" / "pixels.raw")
    _mhd(_ct_folder(root), "../../../outside/pixels.raw")
    return "outside the input folder"


def _mha_with_external_data(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    _raw_pixels(tmp_path / "outside" / "pixels.raw")
    _mhd(_ct_folder(root), str(tmp_path / "outside" / "pixels.raw"), name="ct.mha")
    return "outside the input folder"


def _nrrd_detached(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    _raw_pixels(tmp_path / "outside" / "pixels.raw")
    _nhdr(_ct_folder(root), "../../../outside/pixels.raw")
    return "outside the input folder"


def _inputs_json_escape(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    _outside_ct(tmp_path, real_ct)
    root.mkdir(parents=True)
    (root / "inputs.json").write_text(json.dumps([{"interface": {"slug": "ct", "relative_path": "../outside"}}]))
    return "must stay inside the input folder"


def _inputs_json_absolute(root: Path, tmp_path: Path, real_ct: sitk.Image) -> str:
    folder = _outside_ct(tmp_path, real_ct).parent
    root.mkdir(parents=True)
    (root / "inputs.json").write_text(json.dumps([{"interface": {"slug": "ct", "relative_path": str(folder)}}]))
    return "must stay inside the input folder"


OUTSIDE_CASES = {f.__name__.lstrip("_"): f for f in (
    _symlinked_file, _symlinked_folder, _mhd_absolute, _mhd_relative, _mha_with_external_data, _nrrd_detached,
    _inputs_json_escape, _inputs_json_absolute)}


@pytest.mark.parametrize("case", OUTSIDE_CASES, ids=list(OUTSIDE_CASES))
def test_reads_outside_the_input_root_are_refused(case, real_ct, small_model, tmp_path, cli):
    root = tmp_path / "in"
    message = OUTSIDE_CASES[case](root, tmp_path, real_ct)
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_failed_cleanly(result, tmp_path / "out", message)


def test_a_data_file_inside_the_root_is_still_read(tmp_path):
    """The boundary does not refuse the legitimate detached layouts (.mhd + .raw, .nhdr + .raw beside it)."""
    root = tmp_path / "in"
    _raw_pixels(_ct_folder(root) / "pixels.raw")
    _mhd(_ct_folder(root), "pixels.raw")
    case = find_folder_case(root)
    assert case.ct_path.name == "ct.mhd"
    assert sitk.ReadImage(str(case.ct_path)).GetSize() == (16, 16, 8)


def test_a_fifo_as_data_file_ends_within_seconds(small_model, tmp_path, cli):
    """Reading a FIFO blocks forever; it is refused before it is opened."""
    root = tmp_path / "in"
    os.mkfifo(_ct_folder(root) / "pixels.raw")
    _mhd(_ct_folder(root), "pixels.raw")
    start = time.monotonic()
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert time.monotonic() - start < 60
    assert result.returncode == 2
    assert_failed_cleanly(result, tmp_path / "out", "pixels.raw", "is a FIFO")


def test_a_fifo_named_like_an_image_is_refused(tmp_path):
    root = tmp_path / "in"
    os.mkfifo(_ct_folder(root) / "ct.mha")
    with pytest.raises(InputError, match="is a FIFO"):
        find_folder_case(root)


def test_a_pattern_of_data_files_is_refused(tmp_path):
    root = tmp_path / "in"
    _mhd(_ct_folder(root), "slice_%03d.raw 1 8 1")
    with pytest.raises(InputError, match="list or pattern of data files"):
        find_folder_case(root)


# --- inputs.json schema: one-line input errors ----------------------------------------------------------------------

INPUTS_JSON_CASES = {
    "not-a-list": ({"interface": "ct"}, "expected a list"),
    "interface-string": ([{"interface": "ct"}], "interface is str"),
    "relative-path-number": ([{"interface": {"slug": "ct", "relative_path": 3}}], "relative_path must be"),
    "relative-path-list": ([{"interface": {"slug": "ct", "relative_path": ["images/ct"]}}], "relative_path must be"),
    "slug-number": ([{"interface": {"slug": 1, "relative_path": "images/ct"}}], "slug is int"),
    "entry-string": (["images/ct"], "entry 0 is str"),
}


@pytest.mark.parametrize("case", INPUTS_JSON_CASES, ids=list(INPUTS_JSON_CASES))
def test_inputs_json_outside_the_schema_is_an_input_error(case, tmp_path):
    content, message = INPUTS_JSON_CASES[case]
    root = tmp_path / "in"
    root.mkdir()
    (root / "inputs.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=message) as err:
        find_folder_case(root)
    assert "inputs.json" in str(err.value)


def test_deeply_nested_inputs_json_is_one_line_exit_2(small_model, tmp_path, cli):
    root = tmp_path / "in"
    root.mkdir()
    (root / "inputs.json").write_text("[" * 100_000 + "]" * 100_000)
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert_failed_cleanly(result, tmp_path / "out", "inputs.json", "nested too deeply")


def test_unlistable_ct_folder_is_an_input_error(tmp_path, monkeypatch):
    """(Root ignores permission bits, so the refusal of the listing is simulated at the system call.)"""
    root = tmp_path / "in"
    folder = _ct_folder(root)
    real_iterdir = Path.iterdir

    def iterdir(self: Path):  # noqa: ANN202
        if self == folder:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(InputError, match="cannot list folder.*Permission denied"):
        find_folder_case(root)


# --- memory: header and model grid checked before pixels are read or resampled -------------------------------------

def _nifti_bomb(path: Path, size_xyz: tuple[int, int, int]) -> Path:
    """A NIfTI-1 int16 image of zeros whose header claims ``size_xyz``: gzip members of 64 MiB of zeros,
    repeated, so the file is a few MB however large the image."""
    header = bytearray(352)
    header[0:4] = np.int32(348).tobytes()
    header[40:56] = np.array([3, *size_xyz, 1, 1, 1, 1], np.int16).tobytes()
    header[70:72] = np.int16(4).tobytes()  # datatype: int16
    header[72:74] = np.int16(16).tobytes()  # bitpix
    header[76:108] = np.array([1, 1, 1, 1, 1, 1, 1, 1], np.float32).tobytes()  # pixdim
    header[108:112] = np.float32(352).tobytes()  # vox_offset
    header[344:348] = b"n+1\0"
    block = 64 * 2**20
    member = gzip.compress(b"\0" * block, compresslevel=9)
    total = int(np.prod(size_xyz)) * 2
    with open(path, "wb") as fh:
        fh.write(gzip.compress(bytes(header)))
        for _ in range(total // block):
            fh.write(member)
    return path


def test_header_bomb_is_refused_below_1_gb_of_rss(small_model, tmp_path):
    """A ~4 MB .nii.gz claiming 2048 x 2048 x 512 int16 voxels (4 GiB): refused from its header; the whole run's
    peak RSS (measured by the kernel for the child) stays under 1 GB."""
    path = _nifti_bomb(_ct_folder(tmp_path / "in") / "ct.nii.gz", (2048, 2048, 512))
    assert path.stat().st_size < 5 * 2**20
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(p.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "print(p.stderr.strip().splitlines()[-1])")
    command = [sys.executable, str(REPO / "process.py"), "--input", str(tmp_path / "in"), "--output",
               str(tmp_path / "out"), "--model", str(small_model), "--no-progress"]
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    code_line, rss_kb, last = result.stdout.strip().splitlines()[:3]
    assert int(code_line) == 2, result.stdout
    assert "header claims 2048 x 2048 x 512" in last, last
    assert int(rss_kb) * 1024 < 1e9, f"peak RSS {int(rss_kb) / 1024:.0f} MB"
    assert not (tmp_path / "out").exists()


def test_model_grid_too_large_is_refused_before_resampling(real_ct, tmp_path, cli):
    """A legal CT and a model planned at 0.1 mm: the model-grid working set is refused from the header geometry,
    with the numbers, before any resampling (seconds, not a 20 GiB allocation)."""
    model = make_test_model(tmp_path / "fine", folds=1, spacing_zyx=(0.1, 0.1, 0.1), patch_size=(16, 16, 16),
                            features=(4, 8))
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    result = cli("--input", root, "--output", tmp_path / "out", "--model", model)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_failed_cleanly(result, tmp_path / "out", "on the model's grid", "GiB")


# --- case-insensitive extensions and a DICOM MR folder ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["CT.MHA", "ct.Nii.gz", "CT.NRRD"])
def test_upper_and_mixed_case_extensions_are_read(name, real_ct, tmp_path):
    from contract.imageio import read_scan

    ct = real_ct[:, :, 60:70]
    path = _ct_folder(tmp_path / "in") / name
    tmp = tmp_path / ("tmp" + name.lower()[name.index("."):])
    sitk.WriteImage(ct, str(tmp))
    tmp.rename(path)
    case = find_folder_case(tmp_path / "in")
    assert case.ct_path == path and case.case_id == name.split(".")[0]
    read = read_scan(case.ct_path, "CT")
    assert read.GetSize() == ct.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(ct))


def test_upper_case_ct_runs_end_to_end(real_ct, small_model, tmp_path):
    root = tmp_path / "in"
    sitk.WriteImage(real_ct[:, :, 60:70], str(_ct_folder(root) / "tmp.mha"))
    (_ct_folder(root) / "tmp.mha").rename(_ct_folder(root) / "CT.MHA")
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "images" / "head_neck_oar" / "CT.mha").is_file()


def _dicom_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return path


def test_dicom_files_in_the_mr_folder_get_a_message_saying_so(real_ct, tmp_path, caplog):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    for i in range(3):
        _dicom_file(root / "images" / "t1-mri" / f"IM{i:04d}")
    with caplog.at_level("WARNING"):
        case = find_folder_case(root)
    assert case.mr_path is None
    assert "3 DICOM file(s)" in caplog.text and "convert the T1 MR series" in caplog.text


def test_dicom_files_in_the_ct_folder_are_an_input_error_saying_so(tmp_path):
    _dicom_file(tmp_path / "in" / "images" / "ct" / "slice1.dcm")
    with pytest.raises(InputError, match="DICOM file"):
        find_folder_case(tmp_path / "in")

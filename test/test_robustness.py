"""Defined behaviour under bad input and the platform's conditions (issue 7 rows that run without Docker).

Each end-to-end test runs the real command line (test_process.run_process) and asserts the exit code, the message
and the exact state of the output folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contract.imageio import read_image
from preprocessing.synthetic_t1 import make_t1_like
from test.conftest import REPO
from test.test_process import MR_SPACING, assert_contract_output, assert_failed_cleanly, make_case, run_process


def _nibabel():
    return pytest.importorskip("nibabel", reason="nibabel writes NIfTI rescale fields (test-only dependency)")


def test_uint16_ct_with_a_rescale_offset_reads_as_hounsfield_units(real_ct, tmp_path):
    """A NIfTI stored as uint16 with scl_inter = -1024 must give the same HU as the int16 original."""
    nib = _nibabel()
    hu = sitk.GetArrayFromImage(real_ct)[60:70].astype(np.int16)  # z, y, x
    stored = (hu.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    image = nib.Nifti1Image(stored.transpose(2, 1, 0), affine=np.diag([-3.9, -3.9, 2.5, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / "ct_uint16.nii.gz"
    nib.save(image, str(path))
    read = sitk.GetArrayFromImage(read_image(path, "CT"))
    np.testing.assert_array_equal(read, hu.astype(read.dtype))


def test_float_ct_and_float_mr_are_accepted(real_ct, tmp_path):
    ct = sitk.Cast(real_ct[:, :, 60:70], sitk.sitkFloat32)
    sitk.WriteImage(ct, str(tmp_path / "ct.mha"))
    assert read_image(tmp_path / "ct.mha", "CT").GetPixelID() == sitk.sitkFloat32


@pytest.mark.slow
def test_two_runs_give_byte_identical_outputs(real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct)
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        result = run_process("--input", root, "--output", out, "--model", small_model, "--no-tta")
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append((out / "images" / "head_neck_oar" / "case_a.mha").read_bytes())
    assert outputs[0] == outputs[1]


def test_output_root_that_cannot_be_created_is_refused(real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    result = run_process("--input", root, "--output", blocker, "--model", small_model, "--no-tta", "--folds", "0")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "cannot create output folder" in result.stderr.strip().splitlines()[-1]
    assert blocker.read_text() == "a file where the output folder should be"


def _root_with_unshare() -> None:
    import os

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (mount/network namespaces)")


def test_full_disk_leaves_no_partial_file(real_ct, small_model, tmp_path):
    """The output folder is an 8 KiB tmpfs: the write fails, the error names the file, nothing is left."""
    _root_with_unshare()
    root = make_case(tmp_path / "in", real_ct[:, :, 40:100], with_mr=False)
    out = tmp_path / "out"
    out.mkdir()
    script = (
        f"mount -t tmpfs -o size=8k tmpfs {out} && "
        f"PYTHONPATH={REPO} {sys.executable} {REPO / 'process.py'} --input {root} --output {out} "
        f"--model {small_model} --no-tta --folds 0 --no-progress; rc=$?; "
        f"echo FILES: $(find {out} -type f | wc -l); exit $rc"
    )
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=900)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "FILES: 0" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot write output image" in last and "head_neck_oar" in last


@pytest.mark.slow
def test_runs_without_network(real_ct, small_model, tmp_path):
    _root_with_unshare()
    root = make_case(tmp_path / "in", real_ct)
    command = [sys.executable, str(REPO / "process.py"), "--input", str(root), "--output", str(tmp_path / "out"),
               "--model", str(small_model), "--no-tta", "--no-progress"]
    result = subprocess.run(["unshare", "--net", *command], capture_output=True, text=True, timeout=900,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_contract_output(tmp_path / "out", real_ct)


def test_tiny_ct_smaller_than_the_patch_is_padded(small_model, tmp_path):
    """A 20x20x6 CT is far smaller than the model's patch: it is zero-padded and still gets a full-size map."""
    rng = np.random.default_rng(0)
    ct = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(6, 20, 20)).astype(np.int16))
    ct.SetSpacing((3.0, 3.0, 5.0))
    root = make_case(tmp_path / "in", ct, with_mr=False)
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta")
    assert result.returncode == 0, result.stderr[-3000:]
    files = list((tmp_path / "out" / "images" / "head_neck_oar").iterdir())
    assert len(files) == 1 and sitk.ReadImage(str(files[0])).GetSize() == (20, 20, 6)


def _meta_image(path: Path, spacing: tuple[float, float, float], size: tuple[int, int, int]) -> Path:
    """A MetaImage written by hand, so that any spacing (0, negative) can be stored."""
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"ElementSpacing = {' '.join(map(str, spacing))}\nDimSize = {' '.join(map(str, size))}\n"
              "ElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + rng.integers(-1000, 1000, size=int(np.prod(size)), dtype=np.int16).tobytes())
    return path


def test_zero_spacing_is_refused(small_model, tmp_path):
    """ITK itself refuses a zero spacing while reading; the message says so and names the file."""
    path = _meta_image(tmp_path / "in" / "images" / "ct" / "ct.mha", (1.0, 1.0, 0.0), (16, 16, 8))
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(path), "cannot read CT image", "spacing")


def test_absurd_spacing_is_refused(small_model, tmp_path):
    path = _meta_image(tmp_path / "in" / "images" / "ct" / "ct.mha", (1.0, 1.0, 50.0), (16, 16, 8))
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(path), "invalid voxel spacing")


def test_negative_spacing_is_read_as_a_flipped_axis(small_model, tmp_path):
    """ITK turns a negative spacing into a positive one with a flipped direction: a valid geometry, kept as is."""
    path = _meta_image(tmp_path / "in" / "images" / "ct" / "ct.mha", (3.0, -3.0, 5.0), (16, 16, 8))
    ct = sitk.ReadImage(str(path))
    assert ct.GetSpacing() == (3.0, 3.0, 5.0) and ct.GetDirection()[4] == -1.0
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model,
                         "--no-tta", "--folds", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_contract_output(tmp_path / "out", ct)


def test_image_covering_a_few_millimetres_is_refused(small_model, tmp_path):
    path = _meta_image(tmp_path / "in" / "images" / "ct" / "ct.mha", (1.0, 1.0, 2.0), (4, 4, 4))
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(path), "covers only")


def test_constant_ct_is_refused(small_model, tmp_path):
    path = tmp_path / "in" / "images" / "ct" / "ct.nrrd"
    path.parent.mkdir(parents=True)
    constant = sitk.Image([16, 16, 8], sitk.sitkInt16)
    constant.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(constant, str(path))
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model)
    assert_failed_cleanly(result, tmp_path / "out", str(path), "constant")


def _far_and_upside_down_mr(ct: sitk.Image) -> sitk.Image:
    mr = make_t1_like(ct, translation_mm=(0.0, 0.0, 0.0), spacing_mm=MR_SPACING, seed=2).image
    mr.SetOrigin(tuple(o + 2000.0 for o in mr.GetOrigin()))  # 2 m away: nothing in common
    mr.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, -1))  # and upside down
    return mr


def _other_body_part_mr(ct: sitk.Image) -> sitk.Image:
    """A T1-like image of the neck and shoulders only (the lower half of the CT), seen against the whole head CT."""
    size = list(ct.GetSize())
    lower = sitk.RegionOfInterest(ct, [size[0], size[1], size[2] // 2], [0, 0, 0])
    return make_t1_like(lower, translation_mm=(15.0, -10.0, 5.0), spacing_mm=MR_SPACING, seed=51).image


def _constant_mr(ct: sitk.Image) -> sitk.Image:
    blank = sitk.Image([64, 64, 20], sitk.sitkFloat32)
    blank.SetSpacing((3.0, 3.0, 3.0))
    return blank


@pytest.mark.parametrize(
    ("make_mr", "crop", "reason"),
    [
        pytest.param(_far_and_upside_down_mr, False, "failed its quality check", marks=pytest.mark.slow,
                     id="no-overlap-upside-down"),
        pytest.param(_other_body_part_mr, False, "failed its quality check", marks=pytest.mark.slow,
                     id="other-body-part"),
        pytest.param(_constant_mr, True, "T1 MR is constant", id="constant"),
    ],
)
def test_unusable_mr_falls_back_to_ct_only(real_ct, small_model, tmp_path, make_mr, crop, reason):
    """An MR that cannot be used: a warning naming the reason, exit 0, one contract-conforming map."""
    ct = real_ct[:, :, 50:62] if crop else real_ct
    root = make_case(tmp_path / "in", ct, with_mr=False)
    (root / "images" / "t1-mri").mkdir(parents=True)
    sitk.WriteImage(make_mr(ct), str(root / "images" / "t1-mri" / "mr.mha"))
    result = run_process("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert reason in result.stderr and "predicting from the CT alone" in result.stderr
    assert_contract_output(tmp_path / "out", ct)


@pytest.mark.slow
def test_large_ct_under_a_memory_limit_is_not_killed(tmp_path):
    """A 1024 x 1024 x 300 CT + T1 MR, full run with the shipped model (2 folds) inside an 8 GB cgroup (the
    platform's kind of limit): exit 0, one output of the CT's size, and a peak RSS with 2 GB to spare. The same
    harness at 0.3 GB is killed (exit -9), which shows the limit is real."""
    from benchmarks import large_ct_memory

    if not (REPO / "weights" / "plans.json").is_file():
        pytest.skip("needs the shipped weights")
    try:
        with large_ct_memory.memory_cgroup(8.0):
            pass
    except (PermissionError, OSError) as err:
        pytest.skip(f"cannot create a memory cgroup here: {err}")
    root = large_ct_memory.make_input(tmp_path / "in")
    # without mirroring: half the network passes, the same accumulators and export (the memory this pins)
    code, _, peak_gb, last = large_ct_memory.run_process(root, tmp_path / "out", REPO / "weights", 8.0, ["--no-tta"])
    assert code == 0, last
    written = list((tmp_path / "out" / "images" / "head_neck_oar").iterdir())
    assert len(written) == 1 and sitk.ReadImage(str(written[0])).GetSize() == large_ct_memory.LARGE_SIZE_XYZ
    # a margin, not only "not killed": the 3-D model's run once passed at 7.71 GB, and CI's run of it was killed
    assert peak_gb < 6.0, f"peak RSS {peak_gb:.2f} GB leaves < 2 GB under the limit (4.28 GB measured 2026-12-04)"
    code, _, _, _ = large_ct_memory.run_process(root, tmp_path / "out_small", REPO / "weights", 0.3)
    assert code == -9
    assert not (tmp_path / "out_small").exists() or not any(p.is_file() for p in (tmp_path / "out_small").rglob("*"))

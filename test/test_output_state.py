"""Output folder state is deliberate (issue 13, part 4): permissions, stale files, signals, long names, output
inside input, other images in the platform output folder, an empty HANSEG_OUTPUT_DIR.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import contract.imageio as imageio
from contract.errors import OutputError
from contract.output_state import Interrupted, check_output_name, install_signal_handlers
from test.conftest import REPO
from test.test_process import assert_failed_cleanly, make_case

OUT = Path("images") / "head_neck_oar"


def _small_image() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(6 * 8 * 8, dtype=np.uint8).reshape(6, 8, 8) % 31)
    image.SetSpacing((3.0, 3.0, 3.0))
    return image


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_map_has_the_umask_permissions(umask, mode, tmp_path):
    before = os.umask(umask)
    try:
        imageio.write_image_atomic(_small_image(), tmp_path / "map.mha")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "map.mha").stat().st_mode) == mode


def test_sigterm_during_the_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A real SIGTERM to this process while the writer is inside sitk.WriteImage: the handler raises Interrupted,
    the temporary file is removed and nothing is left in the folder."""
    real_write = sitk.WriteImage
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def write_then_signal(image, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_write(image, name, *args, **kwargs)
        assert Path(name).is_file()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here

    monkeypatch.setattr(imageio.sitk, "WriteImage", write_then_signal)
    install_signal_handlers()
    try:
        with pytest.raises(Interrupted):
            imageio.write_image_atomic(_small_image(), tmp_path / "map.mha")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_inference_exits_cleanly(signum, real_ct, small_model, tmp_path):
    root = make_case(tmp_path / "in", real_ct, with_mr=False)
    proc = subprocess.Popen([sys.executable, str(REPO / "process.py"), "--input", str(root), "--output",
                             str(tmp_path / "out"), "--model", str(small_model), "--no-progress"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "predicting:" in line:
            break
    proc.send_signal(signum)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signum, "".join(lines) + rest
    assert rest.strip().splitlines()[-1] == (f"error: interrupted by {signal.Signals(signum).name}; no partial "
                                             "output left")
    assert "Traceback" not in rest
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_stale_partial_of_a_killed_run_is_removed_and_stale_result_replaced(real_ct, small_model, tmp_path, cli):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    folder = tmp_path / "out" / OUT
    folder.mkdir(parents=True)
    (folder / ".hanseg-abc123.partial.mha").write_bytes(b"left by SIGKILL")
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == ["case_a.mha"]
    assert "stale temporary file" in result.stderr


def test_failed_run_removes_the_previous_result_of_the_same_name(small_model, tmp_path, cli):
    constant = sitk.Image([32, 32, 8], sitk.sitkInt16)
    constant.SetSpacing((3.0, 3.0, 3.0))
    root = make_case(tmp_path / "in", constant, with_mr=False)
    folder = tmp_path / "out" / OUT
    folder.mkdir(parents=True)
    (folder / "case_a.mha").write_bytes(b"yesterday's result")
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert result.returncode == 2
    assert_failed_cleanly(result, tmp_path / "out", "constant")


def test_other_image_in_the_platform_output_folder_is_an_error(real_ct, small_model, tmp_path, cli):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    folder = tmp_path / "out" / OUT
    folder.mkdir(parents=True)
    (folder / "other_case.mha").write_bytes(b"someone else's map")
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model)
    assert result.returncode == 3, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "already holds other_case.mha" in last and "exactly one" in last, last
    assert "predicting" not in result.stderr, "refused before inference"
    assert (folder / "other_case.mha").read_bytes() == b"someone else's map"
    assert sorted(p.name for p in folder.iterdir()) == ["other_case.mha"]


def test_a_230_character_ct_name_is_written(real_ct, small_model, tmp_path, cli):
    """The temporary name no longer grows with the case name: a 230-character CT name gets its map."""
    name = "c" * 230
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False, name=name)
    result = cli("--input", root, "--output", tmp_path / "out", "--model", small_model, "--no-tta",
                         "--folds", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in (tmp_path / "out" / OUT).iterdir()] == [f"{name}.mha"]


def test_an_output_name_the_file_system_cannot_hold_is_refused_up_front(tmp_path):
    with pytest.raises(OutputError, match="output file name is 300 bytes"):
        check_output_name(tmp_path / ("x" * 296 + ".mha"))


def test_output_inside_the_input_is_refused(real_ct, small_model, tmp_path, cli):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    result = cli("--input", root, "--output", root / "results", "--model", small_model)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "inside the input folder" in result.stderr.strip().splitlines()[-1]
    assert not (root / "results").exists()


def test_empty_hanseg_output_dir_is_refused(real_ct, small_model, tmp_path, cli):
    root = make_case(tmp_path / "in", real_ct[:, :, 60:70], with_mr=False)
    env = {"HANSEG_INPUT_DIR": str(root), "HANSEG_OUTPUT_DIR": ""}
    before = sorted(REPO.iterdir())
    result = cli("--model", small_model, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: HANSEG_OUTPUT_DIR is set but empty")
    assert sorted(REPO.iterdir()) == before


def test_a_case_removes_only_its_own_stale_temporary_files(tmp_path):
    """Dataset mode: Ray actors and shards write other cases into the same folder at the same time; one case's
    clean-up must not delete another case's live temporary file (it did: 'cannot write output image')."""
    from cohort.case_files import prepare_output
    from contract.output_state import partial_prefix

    own = tmp_path / f"{partial_prefix('case_a.mha')}x1.partial.mha"
    other = tmp_path / f"{partial_prefix('case_b.mha')}x2.partial.mha"
    for p in (own, other):
        p.write_bytes(b"partial")
    prepare_output(tmp_path / "case_a.mha")
    assert not own.exists() and other.exists()

"""``benchmarks/gpu_check.py --device cpu --quick``: a dry run of every step, so the GPU script cannot rot."""

from __future__ import annotations

import re

import pytest

from benchmarks import gpu_check
from test.conftest import openkbp_ct_path


@pytest.mark.usefixtures("one_thread")
def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path, capsys):
    openkbp_ct_path("pt_201")
    pytest.importorskip("nnunetv2", reason="nnunetv2 2.8.1 is installed for tests only (requirements-test.txt)")
    assert gpu_check.main(["--device", "cpu", "--quick", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("ours: preprocessing", "ours: sliding window", "ours: export", "nnU-Net: whole run"):
        assert re.search(rf"^\| {stage} \| \d+\.\d \|", out, re.M), stage
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"RATIOS cpu/cpu wall [\d.]+x, min Dice ([\d.]+) \| hanseg ours/nnU-Net wall [\d.]+x, "
                         r"peak GPU n/a, peak RSS [\d.]+x, min Dice ([\d.]+)", last)
    assert match, last
    assert float(match[1]) == 1.0  # the same device twice: identical labels
    assert float(match[2]) >= 0.999  # ours against nnU-Net's predictor on the 31-class model


def test_a_missing_cuda_device_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --device:")

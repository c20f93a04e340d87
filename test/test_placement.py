"""The memory-aware device path, tested on the CPU by forcing it.

No GPU here (nor in CI): ``torch.cuda.mem_get_info`` is patched to play a GPU of a given size, CUDA out-of-memory
errors are raised from the forward pass, and the host-accumulation path is compared with the on-device path on
the same case (on the CPU both paths run the same code as on a GPU, only without the copies between devices).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import model.sliding_window as sliding_window_module
from model.model_folder import load_model_folder
from model.placement import GB, Placement, choose_placement, estimate_need, host_placement, next_placement
from model.predictor import Predictor, PredictorOptions
from model.sliding_window import gaussian_importance_map, pad_to_patch, sliding_window_logits, tile_slicers
from test.conftest import random_ct_and_t1

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
PATCH = (16, 16, 16)
HANSEG_3D_FULLRES = {"input_shape": (2, 200, 1024, 1024), "num_classes": 31, "patch_size": (40, 224, 192),
                     "output_shape": (200, 1024, 1024), "weights": 120 * 1024**2, "activations": 3 * GB}


def fake_gpu(monkeypatch: pytest.MonkeyPatch, free_gb: float) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gb * GB), int(80 * GB)))


# --- choosing the path ---------------------------------------------------------------------------------------------


def test_a_hanseg_sized_31_class_case_does_not_fit_a_t4_and_accumulates_on_the_host(monkeypatch):
    need = estimate_need(**HANSEG_3D_FULLRES)
    assert 12e9 < need.ensemble_sum < 14e9  # the "fp16 logits alone are ~13 GB" (decimal GB)
    fake_gpu(monkeypatch, 14.5)  # a 16 GB T4 after the CUDA context
    placement = choose_placement(CUDA, need)
    assert (placement.path, placement.network_device, placement.results_device) == ("host", CUDA, CPU)
    assert placement.pin_host_memory and not placement.export_on_device
    assert "does not fit" in placement.reason


def test_a_big_gpu_keeps_everything_on_the_device_and_exports_there(monkeypatch):
    need = estimate_need(**HANSEG_3D_FULLRES)
    fake_gpu(monkeypatch, 139)
    placement = choose_placement(CUDA, need)
    assert (placement.path, placement.results_device, placement.export_on_device) == ("device", CUDA, True)
    assert not placement.pin_host_memory


def test_the_export_goes_to_the_host_when_only_the_sliding_window_fits(monkeypatch):
    """A coarser model grid (1.1 x 1.1 x 4 mm) than the CT's: the export's output buffers dominate."""
    need = estimate_need(**{**HANSEG_3D_FULLRES, "input_shape": (2, 100, 512, 512), "activations": GB})
    assert need.with_export > need.sliding_window
    fake_gpu(monkeypatch, (need.sliding_window * 1.15 + 0.6 * GB) / GB)
    placement = choose_placement(CUDA, need)
    assert placement.path == "device" and not placement.export_on_device


def test_not_even_one_tile_batch_fitting_runs_on_the_cpu(monkeypatch):
    need = estimate_need(**{**HANSEG_3D_FULLRES, "activations": 20 * GB})
    fake_gpu(monkeypatch, 14.5)
    assert choose_placement(CUDA, need).path == "cpu"


def test_a_cpu_device_never_asks_cuda(monkeypatch):
    def no_cuda(device=None):
        raise AssertionError("mem_get_info called for a CPU run")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda)
    assert choose_placement(CPU, estimate_need(**HANSEG_3D_FULLRES)).path == "cpu"


def test_out_of_memory_steps_down_device_host_cpu():
    device = Placement("device", CUDA, CUDA, True, "test")
    host = next_placement(device)
    assert (host.path, host.network_device, host.results_device) == ("host", CUDA, CPU)
    assert next_placement(host).path == "cpu" and next_placement(host).network_device == CPU


# --- the streaming accumulator against a whole-volume reference ---------------------------------------------------


def whole_volume_reference(network, data, patch, classes, step):
    """nnU-Net's loop: whole-volume fp16 logits and weight sums, one division at the end."""
    data, unpad = pad_to_patch(data, patch)
    logits = torch.zeros((classes, *data.shape[1:]), dtype=torch.half)
    weights = torch.zeros(data.shape[1:], dtype=torch.half)
    gaussian = gaussian_importance_map(tuple(patch), "cpu")
    for slicer in tile_slicers(data.shape[1:], patch, step):
        prediction = network(data[slicer][None])[0]
        prediction *= gaussian
        logits[slicer] += prediction
        weights[slicer[1:]] += gaussian
    torch.div(logits, weights, out=logits)
    return logits[unpad]


@pytest.mark.parametrize(("shape", "patch", "step"), [
    ((2, 37, 30, 41), (16, 16, 16), 0.5),   # 3-D, uneven steps
    ((2, 11, 30, 29), (16, 16, 16), 0.35),  # 3-D, padded on the first axis, small steps
    ((2, 5, 40, 33), (16, 16), 0.5),        # 2-D patch over slices
])
def test_ring_accumulation_is_bit_identical_to_whole_volume_accumulation(shape, patch, step):
    torch.manual_seed(0)
    dims = len(patch)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(2, 5, 3, padding=1)
    network = torch.nn.Sequential(conv, torch.nn.InstanceNorm3d(5) if dims == 3 else torch.nn.InstanceNorm2d(5))
    data = torch.randn(shape)
    with torch.inference_mode():
        ours = sliding_window_logits(network, data, patch, 5, step_fraction=step)
        reference = whole_volume_reference(network, data, patch, 5, step)
        assert torch.equal(ours, reference)
        twice = sliding_window_logits(network, data, patch, 5, step_fraction=step, out=ours.clone(), first=False)
        assert torch.equal(twice, reference + reference)  # second fold: fp16-added into the ensemble sum


# --- the predictor's paths ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_31(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devkit.make_test_model import make_test_model

    return make_test_model(tmp_path_factory.mktemp("placement") / "model", folds=2, spacing_zyx=(6.0, 8.0, 8.0),
                           patch_size=PATCH, features=(4, 8), mirror_axes=(2,))


def run(model_dir: Path, placement: Placement | None = None, seed: int = 3):
    predictor = Predictor(load_model_folder(model_dir), CPU, PredictorOptions(progress=False))
    case = predictor.preprocess(random_ct_and_t1((30, 34, 28), seed), (7.0, 7.0, 5.0))  # resampled: real export
    if placement is not None:
        predictor.placement = lambda _case: placement  # type: ignore[method-assign]
    labels = predictor.predict_preprocessed(case)
    return labels, predictor


DEVICE_ON_CPU = Placement("device", CPU, CPU, True, "the on-device path, forced on the CPU")
HOST_ON_CPU = host_placement(CPU, "the host path, forced on the CPU")


@pytest.mark.usefixtures("one_thread")
def test_the_host_path_gives_the_labels_of_the_device_path(model_31):
    device_labels, device_predictor = run(model_31, DEVICE_ON_CPU)
    host_labels, host_predictor = run(model_31, HOST_ON_CPU)
    assert device_predictor.last_placement.export_on_device and not host_predictor.last_placement.export_on_device
    assert len(np.unique(host_labels)) > 10
    np.testing.assert_array_equal(device_labels, host_labels)


class OutOfMemoryOnCall:
    """``predict_tile`` that raises a CUDA out-of-memory error on chosen calls (counted from 1)."""

    def __init__(self, fail_on: set[int]):
        self.fail_on, self.calls, self.real = fail_on, 0, sliding_window_module.predict_tile

    def __call__(self, network, tiles, mirror_axes):
        self.calls += 1
        if self.calls in self.fail_on:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.real(network, tiles, mirror_axes)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("which", "retried"), [
    ("first tile of fold 0", "this fold"),  # nothing written yet
    ("first tile of fold 1", "this fold"),  # fold 0's sum is kept (moved to the host)
    ("last tile of fold 1", "all folds"),   # fold 1 had written rows of the ensemble sum: start again
])
def test_a_cuda_out_of_memory_retries_on_the_host_path_with_the_same_labels(model_31, monkeypatch, caplog,
                                                                             which, retried):
    counting = OutOfMemoryOnCall(set())
    monkeypatch.setattr(sliding_window_module, "predict_tile", counting)
    expected, _ = run(model_31, DEVICE_ON_CPU)
    tiles = counting.calls // 2
    assert tiles > 4
    fail_on = {"first tile of fold 0": {1}, "first tile of fold 1": {tiles + 1},
               "last tile of fold 1": {2 * tiles}}[which]
    failing = OutOfMemoryOnCall(fail_on)
    monkeypatch.setattr(sliding_window_module, "predict_tile", failing)
    with caplog.at_level(logging.WARNING, logger="model.predictor"):
        labels, predictor = run(model_31, DEVICE_ON_CPU)
    assert failing.calls > max(fail_on)
    assert predictor.last_placement.path == "host"
    assert any("CUDA out of memory" in r.message and f"retrying {retried} on the host path" in r.message
               for r in caplog.records)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.usefixtures("one_thread")
def test_a_second_out_of_memory_on_the_host_path_falls_back_to_the_cpu(model_31, monkeypatch, caplog):
    expected, _ = run(model_31, DEVICE_ON_CPU)
    monkeypatch.setattr(sliding_window_module, "predict_tile", OutOfMemoryOnCall({1, 2}))
    with caplog.at_level(logging.WARNING, logger="model.predictor"):
        labels, predictor = run(model_31, DEVICE_ON_CPU)
    assert predictor.last_placement.path == "cpu"
    assert sum("CUDA out of memory" in r.message for r in caplog.records) == 2
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.usefixtures("one_thread")
def test_out_of_memory_on_the_cpu_path_is_not_swallowed(model_31, monkeypatch):
    monkeypatch.setattr(sliding_window_module, "predict_tile", OutOfMemoryOnCall({1}))
    with pytest.raises(torch.OutOfMemoryError):
        run(model_31)

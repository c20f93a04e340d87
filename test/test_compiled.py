"""Compiled fast mode (OpenVINO): same logits as torch to float32 rounding, a cache that is built once and never
reused for another model, and the predictor running it with the exact mode's Gaussian-weighted arithmetic."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import model.compiled as compiled
from model import fast
from model.model_folder import load_model_folder
from model.network import build_network, load_fold_weights
from model.predictor import Predictor, PredictorOptions
from test.conftest import random_ct_and_t1

CPU = torch.device("cpu")
PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devkit.make_test_model import make_test_model

    return make_test_model(tmp_path_factory.mktemp("compiled") / "model", folds=2, spacing_zyx=(6.0, 8.0, 8.0),
                           patch_size=PATCH, features=(4, 8), mirror_axes=(2,))


def fold_network(model_dir: Path, fold: int = 0):
    model = load_model_folder(model_dir)
    network = build_network(model)
    load_fold_weights(network, model.folds[fold].weights, "fold")
    return model, network


@pytest.mark.parametrize("n_tiles", [3, 8, 11], ids=["padded batch", "full batch", "two batches"])
def test_f32_compiled_logits_match_torch(tiny_model, n_tiles):
    model, network = fold_network(tiny_model)
    net = compiled.compile_fold(model, model.folds[0], network, threads=1, bf16=False, cache=Path("/nonexistent"))
    tiles = torch.randn(n_tiles, 2, *PATCH, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = network(tiles)
    ours = net(tiles)
    assert ours.shape == reference.shape and ours.dtype == torch.float32
    assert reference.abs().mean() > 0.5
    assert (ours - reference).abs().max() < 1e-3


def test_the_cache_is_built_once_read_back_and_keyed_by_the_weights(tiny_model, tmp_path, caplog):
    model = load_model_folder(tiny_model)
    written = compiled.build_cache(model, tmp_path / "cache")
    assert len(written) == 2 and len(set(written)) == 2  # two folds, two different weight sets
    assert all(p.is_file() and p.with_suffix(".bin").is_file() for p in written)
    assert not list((tmp_path / "cache").glob("*partial*"))
    _, network = fold_network(tiny_model)
    with caplog.at_level(logging.INFO, logger="model.compiled"):
        compiled.compile_fold(model, model.folds[0], network, threads=1, cache=tmp_path / "cache")
    assert "from the compiled cache" in caplog.text and "converted in memory" not in caplog.text
    changed = dict(model.folds[0].weights)
    first = next(iter(changed))
    changed[first] = changed[first] + 1
    other = type(model.folds[0])(model.folds[0].name, model.folds[0].path, changed)
    assert compiled.cache_key(model, other) != compiled.cache_key(model, model.folds[0])


def test_a_missing_cache_converts_in_memory_with_a_warning_and_writes_nothing(tiny_model, tmp_path, caplog):
    model, network = fold_network(tiny_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="model.compiled"):
        compiled.compile_fold(model, model.folds[0], network, threads=1, cache=empty)
    assert "converted in memory" in caplog.text and "python -m model.compiled" in caplog.text
    assert list(empty.iterdir()) == []


@pytest.mark.usefixtures("one_thread")
def test_fast_mode_runs_the_compiled_folds_through_the_gaussian_sliding_window(tiny_model, tmp_path, monkeypatch):
    """f32 compiled fast mode against exact mode: same passes (the model mirrors over the last axis only), same
    tiles and Gaussian weighting, only the forward pass in OpenVINO: the labels agree to float32 rounding."""
    import model.predictor as predictor_module

    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "none"))
    model = load_model_folder(tiny_model)
    channels = random_ct_and_t1((20, 36, 32))
    exact = Predictor(model, CPU, PredictorOptions(progress=False)).predict(channels, (8.0, 8.0, 6.0))
    networks = []
    real = predictor_module.sliding_window_logits

    def spy(network, *args, **kwargs):
        networks.append(network)
        return real(network, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "sliding_window_logits", spy)
    predictor = Predictor(model, CPU, PredictorOptions(progress=False, fast=True))
    assert predictor.fast.compiled
    labels = predictor.predict(channels, (8.0, 8.0, 6.0))
    assert [type(n).__name__ for n in networks] == ["CompiledNetwork"] * 2
    assert len(np.unique(exact)) > 5
    assert (labels == exact).mean() > 0.999


def test_the_cli_builds_the_cache_and_rejects_a_bad_model_folder(tiny_model, tmp_path, capsys):
    assert compiled.main(["--model", str(tiny_model), "--cache", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*.xml"))) == 2
    assert compiled.main(["--model", str(tmp_path / "missing"), "--cache", str(tmp_path / "c")]) == 4
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")

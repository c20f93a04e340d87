"""model/fast.py and the predictor's fast path: which settings fast mode picks, and how close bf16 stays to fp32.

The tolerances below were measured on 16^3-patch random-weight models like the one built here (seeds 0-3) on
random inputs (seeds 0-2); agreement on real held-out cases is measured by ``python -m benchmarks.fast_mode``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import fast
from model.fast import BATCH_TILES, FastSettings, cpu_has_native_bf16, fast_settings
from model.sliding_window import gaussian_importance_map, sliding_window_logits, tile_slicers
from test.conftest import random_ct_and_t1

CPU = torch.device("cpu")
PATCH = (16, 16, 16)
SHAPE_ZYX = (20, 36, 32)
SPACING_XYZ = (8.0, 8.0, 6.0)


def cpu_flags(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    """Pretend the CPU does (not) have native bf16 instructions."""
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: has_bf16)


# --- fast_settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_axes", "use_mirroring", "expected"),
    [
        ((0, 1, 2), True, (2,)),
        ((0, 1), True, (1,)),
        ((1,), True, (1,)),
        ((2, 0, 1), True, (2,)),  # the last spatial axis, whatever order the checkpoint lists them in
        ((0, 1, 2), False, ()),
        ((), True, ()),
        ((), False, ()),
    ],
)
def test_fast_mode_keeps_only_the_last_mirror_axis(
    model_axes: tuple[int, ...], use_mirroring: bool, expected: tuple[int, ...]
) -> None:
    settings = fast_settings(CPU, model_axes, use_mirroring, bf16=False)
    assert settings.mirror_axes == expected
    assert settings.batch_tiles == BATCH_TILES


@pytest.mark.parametrize(("has_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_bf16_by_default_only_on_cpus_that_have_it(
    monkeypatch: pytest.MonkeyPatch, has_bf16: bool, expected: torch.dtype | None
) -> None:
    cpu_flags(monkeypatch, has_bf16)
    assert fast_settings(CPU, (0, 1, 2), compiled=False).autocast_dtype == expected


@pytest.mark.parametrize("has_bf16", [True, False])
def test_an_explicit_bf16_choice_overrides_the_cpu_flags(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    cpu_flags(monkeypatch, has_bf16)
    assert fast_settings(CPU, (0, 1, 2), bf16=True, compiled=False).autocast_dtype == torch.bfloat16
    assert fast_settings(CPU, (0, 1, 2), bf16=False, compiled=False).autocast_dtype is None


@pytest.mark.parametrize("bf16", [None, True, False])
def test_the_compiled_runtime_replaces_torch_autocast_on_the_cpu_only(monkeypatch: pytest.MonkeyPatch,
                                                                     bf16: bool | None) -> None:
    cpu_flags(monkeypatch, True)
    on_cpu = fast_settings(CPU, (0, 1, 2), bf16=bf16, compiled=True)
    assert on_cpu.compiled and on_cpu.autocast_dtype is None and on_cpu.mirror_axes == (2,)
    assert on_cpu.describe().startswith("OpenVINO bf16,")
    assert not fast_settings(torch.device("cuda"), (0, 1, 2), bf16=bf16, compiled=True).compiled


def test_compiled_is_the_default_where_openvino_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import model.fast

    for installed in (True, False):
        monkeypatch.setattr(model.fast, "openvino_available", lambda installed=installed: installed)
        assert fast_settings(CPU, (0, 1, 2)).compiled is installed


@pytest.mark.parametrize("bf16", [None, True, False])
def test_never_bf16_on_a_cuda_device(monkeypatch: pytest.MonkeyPatch, bf16: bool | None) -> None:
    """CUDA keeps its own fp16 autocast; the device object is only inspected, never used."""
    cpu_flags(monkeypatch, True)
    settings = fast_settings(torch.device("cuda"), (0, 1, 2), bf16=bf16)
    assert settings.autocast_dtype is None
    assert settings.mirror_axes == (2,)


def test_the_settings_are_described_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="model.fast"):
        bf16 = fast_settings(CPU, (0, 1, 2), bf16=True, compiled=False)
    assert bf16.describe() == f"bf16 autocast, mirror axes (2,), {BATCH_TILES} tiles per forward pass"
    assert f"fast mode: {bf16.describe()}" in caplog.text
    assert FastSettings(None, (), 3).describe() == "fp32, mirror axes (), 3 tiles per forward pass"


# --- cpu_has_native_bf16 ---------------------------------------------------------------------------------------------

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Some CPU
flags\t\t: {flags}
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: {flags}
"""


def fake_cpuinfo(monkeypatch: pytest.MonkeyPatch, text: str | None) -> list[str]:
    """Serve ``text`` as /proc/cpuinfo to model.fast's ``open`` (None: the file does not exist). Returns the paths
    that were opened."""
    opened: list[str] = []

    def fake_open(path: str, *args: Any, **kwargs: Any) -> io.StringIO:
        opened.append(path)
        if text is None:
            raise FileNotFoundError(path)
        return io.StringIO(text)

    monkeypatch.setattr(fast, "open", fake_open, raising=False)
    return opened


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu sse avx2 amx_bf16 amx_tile", True),
        ("fpu sse avx2 avx512f avx512_vnni", False),
        ("fpu sse avx2 avx512_bf16x", False),  # whole flags only, not substrings
        ("", False),
    ],
)
def test_bf16_support_is_read_from_the_cpuinfo_flags(monkeypatch: pytest.MonkeyPatch, flags: str,
                                                     expected: bool) -> None:
    opened = fake_cpuinfo(monkeypatch, CPUINFO.format(flags=flags))
    assert cpu_has_native_bf16() is expected
    assert opened == ["/proc/cpuinfo"]


def test_a_cpuinfo_without_flags_means_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """e.g. arm64, whose cpuinfo lists ``Features`` (even one naming bf16)."""
    fake_cpuinfo(monkeypatch, "processor\t: 0\nFeatures\t: fp asimd bf16 avx512_bf16\n")
    assert cpu_has_native_bf16() is False


def test_no_cpuinfo_means_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(monkeypatch, None)
    assert cpu_has_native_bf16() is False


# --- a tiny random model --------------------------------------------------------------------------------------------


def build_tiny_model(out: Path, mirror_axes: tuple[int, ...], folds: int = 2, seed: int = 0) -> Path:
    """A random-weight model folder: 16^3 patch, 4/8 features, 31 classes, on the input's own grid."""
    from devkit.make_test_model import make_test_model

    return make_test_model(out, folds=folds, spacing_zyx=(6.0, 8.0, 8.0), patch_size=PATCH, features=(4, 8),
                           mirror_axes=mirror_axes, seed=seed)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds that allow mirroring over the last axis only: exact and fast mode then run the same passes."""
    return build_tiny_model(tmp_path_factory.mktemp("fast") / "model", mirror_axes=(2,))


@pytest.fixture(scope="module")
def tiny_model_3_axes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("fast3") / "model", mirror_axes=(0, 1, 2), folds=1)


# --- the predictor's fast path ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("fast_mode", "use_mirroring", "has_bf16", "axes", "dtype"),
    [
        (False, True, True, (0, 1, 2), None),  # exact mode: every allowed axis, fp32 even on a bf16 CPU
        (True, True, True, (2,), torch.bfloat16),
        (True, True, False, (2,), None),
        (True, False, True, (), torch.bfloat16),
    ],
)
def test_the_predictor_takes_its_mirroring_and_precision_from_fast_mode(
    tiny_model_3_axes: Path, monkeypatch: pytest.MonkeyPatch, fast_mode: bool, use_mirroring: bool, has_bf16: bool,
    axes: tuple[int, ...], dtype: torch.dtype | None,
) -> None:
    import model.fast
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    cpu_flags(monkeypatch, has_bf16)
    monkeypatch.setattr(model.fast, "openvino_available", lambda: False)  # the torch fallback of fast mode
    options = PredictorOptions(progress=False, fast=fast_mode, use_mirroring=use_mirroring)
    predictor = Predictor(load_model_folder(tiny_model_3_axes), CPU, options)
    assert predictor.mirror_axes == axes
    assert predictor.autocast_dtype == dtype
    assert (predictor.fast is not None) is fast_mode


@pytest.mark.usefixtures("one_thread")
def test_fast_mode_with_bf16_keeps_the_shape_and_almost_every_label(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast mode (bf16 autocast forced, 8 tiles per forward pass) against exact mode (fp32, one tile per pass).

    The model mirrors over the last axis only, so both modes run the same passes and only precision and batching
    differ. Measured voxel agreement 0.989-0.992 (4 model seeds x 3 inputs; this case: 0.991): random weights leave
    many voxels near a tie between two of the 31 classes, which bf16's 8-bit mantissa flips. 0.97 allows ~3x the
    measured disagreement.
    """
    import model.fast
    import model.predictor as predictor_module
    from model.model_folder import load_model_folder
    from model.predictor import Predictor, PredictorOptions

    cpu_flags(monkeypatch, True)
    monkeypatch.setattr(model.fast, "openvino_available", lambda: False)  # the torch fallback of fast mode
    model = load_model_folder(tiny_model)
    channels = random_ct_and_t1(SHAPE_ZYX)
    exact = Predictor(model, CPU, PredictorOptions(progress=False)).predict(channels, SPACING_XYZ)

    calls: list[dict[str, Any]] = []
    real = predictor_module.sliding_window_logits

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "sliding_window_logits", spy)
    labels = Predictor(model, CPU, PredictorOptions(progress=False, fast=True)).predict(channels, SPACING_XYZ)

    assert labels.shape == exact.shape == SHAPE_ZYX and labels.dtype == np.uint8
    assert [(c["autocast_dtype"], c["batch_tiles"], c["mirror_axes"]) for c in calls] == \
        [(torch.bfloat16, BATCH_TILES, (2,))] * 2  # all folds kept
    agreement = float((labels == exact).mean())
    print(f"fast (bf16) vs exact voxel agreement: {agreement:.4f}")
    assert agreement > 0.97
    assert len(np.unique(exact)) > 5  # not a trivial map where any precision would agree


# --- bf16 logits against fp32 ----------------------------------------------------------------------------------------


def tiny_network(model_dir: Path) -> torch.nn.Module:
    """Fold 0 of a model folder as an eval-mode network."""
    from model.model_folder import load_model_folder
    from model.network import build_network, load_fold_weights

    model = load_model_folder(model_dir)
    network = build_network(model)
    load_fold_weights(network, model.folds[0].weights, "fold_0")
    return network.eval()


def total_gaussian_weight(spatial: tuple[int, ...], step: float = 0.5) -> torch.Tensor:
    """Per voxel, the summed Gaussian weight of the tiles covering it (the sliding window's divisor)."""
    weights = torch.zeros(spatial)
    gaussian = gaussian_importance_map(PATCH).float()
    for slicer in tile_slicers(spatial, PATCH, step):
        weights[slicer[1:]] += gaussian
    return weights


def test_bf16_sliding_window_logits_stay_close_to_fp32(tiny_model: Path) -> None:
    """Tolerances measured on 12 model x input seeds (logits: mean |value| ~2.6, spread over classes ~3):

    - mean |difference| 0.019-0.022: bound 0.05. It must also be > 1e-3, else bf16 was not used (fp32 twice is
      bit-identical).
    - 99.9th percentile 0.13-0.15: bound 0.3.
    - max on voxels with a total Gaussian weight >= 1 (10 % of a tile's peak; 30 % of this image) 0.20-0.31:
      bound 0.6.
    - max anywhere: exactly 1.0, at tile corners: their Gaussian weight is fp16's smallest subnormal (6e-8), so the
      fp16 accumulation (nnU-Net's arithmetic, the same in both modes) rounds their logits to whole numbers and a
      small bf16 change moves one by a full step. Bound 1.5: one step, not two.
    - argmax agreement 0.988-0.991: bound 0.97.
    """
    network = tiny_network(tiny_model)
    data = torch.randn((2, *SHAPE_ZYX), generator=torch.Generator().manual_seed(0))
    exact = sliding_window_logits(network, data, PATCH, 31).float()
    bf16_fp16 = sliding_window_logits(network, data, PATCH, 31, autocast_dtype=torch.bfloat16)
    assert bf16_fp16.dtype == torch.float16  # accumulated as in exact mode, whatever the network's precision
    bf16 = bf16_fp16.float()
    assert bf16.shape == exact.shape == (31, *SHAPE_ZYX)
    assert torch.isfinite(bf16).all()

    diff = (bf16 - exact).abs()
    well_weighted = total_gaussian_weight(SHAPE_ZYX) >= 1.0
    stats = {
        "mean": diff.mean().item(),
        "p99.9": torch.quantile(diff.flatten()[::7], 0.999).item(),
        "max_weighted": diff[:, well_weighted].max().item(),
        "max": diff.max().item(),
        "argmax": (bf16.argmax(0) == exact.argmax(0)).float().mean().item(),
    }
    print("bf16 vs fp32 logits:", {k: round(v, 4) for k, v in stats.items()})
    assert 1e-3 < stats["mean"] < 0.05
    assert stats["p99.9"] < 0.3
    assert stats["max_weighted"] < 0.6
    assert stats["max"] < 1.5
    assert stats["argmax"] > 0.97



def test_several_tiles_per_forward_pass_give_the_same_logits_as_one() -> None:
    """Batching changes only how many tiles share a forward pass: same tiles, same weights, same Gaussian
    weighting; in fp32 the logits agree to the fp16 accumulation's granularity."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.InstanceNorm2d(8, affine=True), torch.nn.LeakyReLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()
    data = torch.randn(2, 6, 40, 44)
    one = sliding_window_logits(network, data, (32, 32), 4, batch_tiles=1)
    batched = sliding_window_logits(network, data, (32, 32), 4, batch_tiles=BATCH_TILES)
    assert one.shape == batched.shape == (4, 6, 40, 44)
    torch.testing.assert_close(batched.float(), one.float(), atol=2e-3, rtol=0)

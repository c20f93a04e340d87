"""Compiled fast mode: each fold's network as an OpenVINO model, converted once and cached, compiled for the CPU.

Only the network's forward pass changes: tiles, mirroring and the Gaussian-weighted fp16 accumulation stay
:mod:`model.sliding_window`'s. The network is converted with ``openvino.convert_model`` (from the torch module,
no ONNX step) at a fixed input shape ``(BATCH_TILES, C, *patch)`` (a last, smaller batch is zero-padded) and
saved as OpenVINO IR (``.xml`` + ``.bin``) under the cache folder, named by a hash of the fold's weights, the
network class and kwargs, the input shape and the OpenVINO version: a changed model never reuses a stale file.
It is compiled for the CPU with bf16 inference precision where the CPU has native bf16
(:func:`model.fast.cpu_has_native_bf16`), else f32.

The cache is filled at build time (the Docker image runs ``python -m model.compiled --model weights``), never at
run time: a model folder without cached files (e.g. a platform model tarball) is converted in memory for that run,
with a warning saying how long it took.

Measured (shipped 2-D model, 8 tiles of 128 x 128 per pass, 1 thread, a busy 2-core EPYC with avx512_bf16): torch
fp32 261, torch bf16 168, OpenVINO f32 191, OpenVINO bf16 91, ONNX Runtime 1.31 fp32 164 ms per tile
(``benchmarks/README.md``). OpenVINO bf16 is the fastest, and converts without an ONNX export: chosen.

    python -m model.compiled --model weights [--cache compiled]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import fast
from model.fast import BATCH_TILES
from model.model_folder import Fold, ModelFolder

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "compiled"
CACHE_ENV = "HANSEG_COMPILED_DIR"


available = fast.openvino_available
"""Whether OpenVINO is installed (``model.fast.openvino_available``)."""


def cache_dir() -> Path:
    """``$HANSEG_COMPILED_DIR``, else ``compiled/`` beside the code."""
    return Path(os.environ.get(CACHE_ENV, "")) if os.environ.get(CACHE_ENV) else DEFAULT_CACHE


def input_shape(model: ModelFolder, batch: int = BATCH_TILES) -> tuple[int, ...]:
    return (batch, model.num_input_channels, *model.configuration.patch_size)


def cache_key(model: ModelFolder, fold: Fold, batch: int = BATCH_TILES) -> str:
    """Hex digest naming one fold's converted model (weights, architecture, input shape, OpenVINO version)."""
    import openvino

    digest = hashlib.sha256()
    config = model.configuration
    digest.update(json.dumps([config.network_class_name, config.arch_kwargs, input_shape(model, batch),
                              model.num_classes, openvino.__version__], sort_keys=True, default=str).encode())
    for name in sorted(fold.weights):
        tensor = fold.weights[name]
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:32]


def convert(network: nn.Module, shape: Sequence[int]):  # noqa: ANN201 - openvino.Model, imported lazily
    import openvino as ov

    with torch.inference_mode():
        return ov.convert_model(network.eval(), example_input=torch.zeros(tuple(shape)), input=[tuple(shape)])


class CompiledNetwork:
    """A fold's network compiled by OpenVINO; called like the torch module on ``(B, C, *patch)`` tiles, returns
    float32 ``(B, K, *patch)`` torch logits. Batches smaller than the compiled one are zero-padded."""

    def __init__(self, compiled, batch: int, precision: str):  # noqa: ANN001 - openvino.CompiledModel
        self.request = compiled.create_infer_request()
        self.batch = batch
        self.precision = precision

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        n = tiles.shape[0]
        if n > self.batch:
            return torch.cat([self(tiles[i:i + self.batch]) for i in range(0, n, self.batch)])
        array = tiles.detach().to("cpu", torch.float32).contiguous().numpy()
        if n < self.batch:
            array = np.concatenate([array, np.zeros((self.batch - n, *array.shape[1:]), np.float32)])
        out = self.request.infer({0: array})[0]
        return torch.from_numpy(np.array(out[:n], copy=True))


def compile_fold(model: ModelFolder, fold: Fold, network: nn.Module, threads: int, bf16: bool | None = None,
                 cache: Path | None = None, batch: int = BATCH_TILES) -> CompiledNetwork:
    """The compiled network of ``fold`` (``network`` must already hold its weights): from the cache if converted
    there, else converted now in memory (logged as a warning; nothing is written)."""
    import openvino as ov

    cache = cache or cache_dir()
    path = cache / f"{cache_key(model, fold, batch)}.xml"
    core = ov.Core()
    if path.is_file():
        ov_model = core.read_model(str(path))
        log.info("fast mode: fold %s from the compiled cache %s", fold.name, path)
    else:
        start = time.perf_counter()
        ov_model = convert(network, input_shape(model, batch))
        log.warning("fast mode: fold %s has no compiled model in %s: converted in memory (%.1f s); build it once "
                    "with `python -m model.compiled --model %s`", fold.name, cache, time.perf_counter() - start,
                    model.path)
    bf16 = fast.cpu_has_native_bf16() if bf16 is None else bf16
    precision = "bf16" if bf16 else "f32"
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                    "INFERENCE_NUM_THREADS": max(1, int(threads)),
                                                    "PERFORMANCE_HINT": "LATENCY"})
    return CompiledNetwork(compiled, batch, precision)


def build_cache(model: ModelFolder, cache: Path, batch: int = BATCH_TILES) -> list[Path]:
    """Convert every fold of ``model`` into ``cache`` (build time). Returns the IR files written."""
    import openvino as ov

    from model.network import build_network, load_fold_weights

    cache.mkdir(parents=True, exist_ok=True)
    network = build_network(model)
    written = []
    for fold in model.folds:
        load_fold_weights(network, fold.weights, str(fold.path))
        path = cache / f"{cache_key(model, fold, batch)}.xml"
        tmp = path.with_name(path.stem + ".partial.xml")
        ov.save_model(convert(network, input_shape(model, batch)), str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
        tmp.replace(path)
        written.append(path)
        log.info("fold %s -> %s", fold.name, path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="nnU-Net v2 model folder")
    parser.add_argument("--cache", type=Path, default=None, help=f"output folder (default ${CACHE_ENV} or compiled/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    from contract.errors import ModelFolderError
    from model.model_folder import load_model_folder

    try:
        model = load_model_folder(args.model)
    except ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 4
    for path in build_cache(model, args.cache or cache_dir()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which ONNX Runtime execution providers a session asks for, and with which options.

ONNX Runtime takes providers as (name, options) pairs; the options that matter for a scoring
graph live here once, so that `xgal serve`, `xgal score` and `xgal bench` open the same session:
- CUDA: the device, and the pixels copied once per batch into a buffer that stays on the GPU
  (see OnnxRuntimeEngine's IO binding);
- TensorRT: FP16 kernels when asked, and the engines it builds kept on disk under a key made of
  the model's SHA-256, the GPU and the library versions (xgal.scorer.engines.engine_cache), so
  that a replica restarted on the same GPU does not spend minutes rebuilding them, and one
  moved to another GPU or library version does not trust them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# Best first; only the installed ones are used when none is named.
PROVIDER_PREFERENCE = (TENSORRT, CUDA, CPU)

GPU_PROVIDERS = frozenset(
    {
        CUDA,
        TENSORRT,
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)


@dataclass(frozen=True)
class ProviderSettings:
    """What a replica is told about its GPU, beyond the providers' names."""

    device_id: int = 0
    # TensorRT builds FP16 kernels where they are faster (the graph itself stays fp32; for an
    # fp16 graph on CUDA, convert it with `xgal model fp16`).
    fp16: bool = False
    # Where TensorRT keeps the engines it builds; None = a folder beside the model.
    engine_cache: Path | None = None
    # The largest batch TensorRT's engine is built for (the scorer's --max-batch).
    max_batch: int = 64
    # CUDA: let convolutions and matrix products round to TF32 on tensor cores (ONNX Runtime's
    # default). Off for parity checks against the CPU, where TF32's 10-bit mantissa shows.
    tf32: bool = True


def _nvinfer() -> Any:
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def tensorrt_loadable() -> bool:
    """onnxruntime-gpu lists the TensorRT provider whether or not TensorRT's libraries are
    installed; without them the provider fails at each session start, so it is not a default."""
    return _nvinfer() is not None


def tensorrt_version() -> str | None:
    """The version of the TensorRT library ONNX Runtime's provider would load (its engines are
    valid for that version only), as the library encodes it (getInferLibVersion); None where
    none loads."""
    lib = _nvinfer()
    return None if lib is None else str(int(lib.getInferLibVersion()))


def device_type(provider: str) -> str:
    """The OrtValue device name of a provider's memory ("cuda" or "cpu")."""
    return "cuda" if provider in (CUDA, TENSORRT) else "cpu"


def provider_options(
    providers: Sequence[str],
    settings: ProviderSettings,
    model: str | os.PathLike[str] | bytes,
    input_shapes: dict[str, Sequence[int]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) for each provider. `input_shapes` are the graph's inputs without their
    batch dimension, for TensorRT's batch profile (read from the graph when not given)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in providers:
        if name == CUDA:
            cuda: dict[str, Any] = {"device_id": settings.device_id}
            if not settings.tf32:
                cuda["use_tf32"] = 0
            out.append((name, cuda))
        elif name == TENSORRT:
            out.append((name, tensorrt_options(settings, model, input_shapes)))
        else:
            out.append((name, {}))
    return out


def tensorrt_options(
    settings: ProviderSettings,
    model: str | os.PathLike[str] | bytes,
    input_shapes: dict[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    import hashlib

    import onnxruntime as ort

    from xgal.core.checksum import sha256_file
    from xgal.scorer.engines.engine_cache import EngineCache, cache_key, default_root, gpu_identity

    opts: dict[str, Any] = {"device_id": settings.device_id, "trt_fp16_enable": settings.fp16}
    gpu = gpu_identity(settings.device_id)
    if gpu is None:
        # Without the GPU's identity a cached engine could be loaded on another kind of GPU:
        # build them anew in each session rather than trust them.
        log.warning("no GPU identity (nvidia-smi): TensorRT engines are not cached")
    else:
        sha = hashlib.sha256(model).hexdigest() if isinstance(model, bytes) else sha256_file(model)
        root = Path(settings.engine_cache) if settings.engine_cache is not None else default_root(model)
        versions = {
            "onnxruntime": ort.__version__,
            "tensorrt": tensorrt_version() or "unknown",
            "max_batch": str(settings.max_batch),
        }
        precision = "fp16" if settings.fp16 else "fp32"
        folder = os.fspath(
            EngineCache(root).folder(cache_key(sha, gpu=gpu, precision=precision, versions=versions))
        )
        opts.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=folder,
            trt_timing_cache_enable=True,
            trt_timing_cache_path=folder,
        )
    input_shapes = input_shapes or _graph_input_shapes(model)
    if input_shapes:
        # One profile over the batch dimension: without it TensorRT builds an engine per batch
        # size it meets, each taking seconds to minutes on the first call of that size.
        def shapes(n: int) -> str:
            return ",".join(f"{k}:{'x'.join(str(d) for d in (n, *v))}" for k, v in input_shapes.items())

        opts["trt_profile_min_shapes"] = shapes(1)
        opts["trt_profile_opt_shapes"] = shapes(settings.max_batch)
        opts["trt_profile_max_shapes"] = shapes(settings.max_batch)
    return opts


def _graph_input_shapes(model: str | os.PathLike[str] | bytes) -> dict[str, list[int]]:
    """Each input's shape without its batch dimension, read from the ONNX file (TensorRT needs
    them before a session exists); {} where a dimension other than the batch is symbolic."""
    import onnx

    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(os.fspath(model))
    shapes: dict[str, list[int]] = {}
    constants = {t.name for t in proto.graph.initializer}  # inputs with a default, not fed
    for value in proto.graph.input:
        if value.name in constants:
            continue
        dims = value.type.tensor_type.shape.dim[1:]
        if any(not d.HasField("dim_value") for d in dims):
            return {}
        shapes[value.name] = [d.dim_value for d in dims]
    return shapes

"""Which ONNX Runtime execution providers a session asks for, and with which options.

ONNX Runtime takes providers as (name, options) pairs; the options that matter for a scoring
graph live here once, so that `xgal serve`, `xgal score` and `xgal bench` open the same session:
- CUDA: the device, and the pixels copied once per batch into a buffer that stays on the GPU
  (see OnnxRuntimeEngine's IO binding);
- TensorRT: FP16 kernels when asked, one optimisation profile over the batch, and the engines
  it builds kept on disk in one folder per key (`cache_key`: the model's SHA-256, the GPU as
  `gpu_identity` names it, the precision and the library versions), so that a replica restarted
  on the same GPU does not spend minutes rebuilding them, and one moved to another GPU or
  library version does not trust them. The provider writes and reads its own files there.

ONNX Runtime's TensorRT provider is xgal's only TensorRT path. No torch and no tensorrt here:
the scorer imports this without either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
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
    # CUDA: capture the graph's launches once and replay them (ONNX Runtime's enable_cuda_graph);
    # needs a fixed-batch graph (`xgal model fixed-batch`).
    cuda_graph: bool = False


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
            if settings.cuda_graph:
                cuda["enable_cuda_graph"] = "1"
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
    import onnxruntime as ort

    from xgal.core.checksum import sha256_file

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
        folder = root / cache_key(sha, gpu=gpu, precision=precision, versions=versions)
        folder.mkdir(parents=True, exist_ok=True)  # one folder per key, the provider's files in it
        opts.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=os.fspath(folder),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=os.fspath(folder),
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


# --- the TensorRT provider's engine cache key -------------------------------------------------

NVIDIA_SMI_TIMEOUT_S = 5.0


def default_root(model: str | os.PathLike[str] | bytes) -> Path:
    """Where built engines go when no folder is given: `.engines` beside a model file (in a
    model repository on a shared volume, replicas on the same kind of GPU share them; the key
    keeps other GPUs apart), the user's cache folder for a model given as bytes."""
    if not isinstance(model, bytes):
        return Path(model).parent / ".engines"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xgal" / "engines"


def gpu_identity(device_id: int = 0) -> str | None:
    """What a cached engine is valid for, e.g. "NVIDIA H200, compute 9.0, driver 580.159.04";
    None when nvidia-smi is absent, fails or does not list `device_id`.

    `device_id` is nvidia-smi's index (PCI bus order), which is CUDA's order only when
    CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES is unset."""
    cmd = ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # absent, not executable, or hung
        return None
    if done.returncode != 0:
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if not 0 <= device_id < len(lines):
        return None
    # A GPU's name could hold a comma; the last two fields cannot.
    parts = [p.strip() for p in lines[device_id].rsplit(",", 2)]
    if len(parts) != 3 or not all(parts):
        return None
    name, compute, driver = parts
    return f"{name}, compute {compute}, driver {driver}"


def key_inputs(
    model_sha256: str, *, gpu: str, precision: str, versions: Mapping[str, str]
) -> dict[str, object]:
    """The inputs of `cache_key` as a JSON-ready dict."""
    return {
        "model_sha256": str(model_sha256),
        "gpu": str(gpu),
        "precision": str(precision),
        "versions": {str(k): str(v) for k, v in versions.items()},
    }


def cache_key(model_sha256: str, *, gpu: str, precision: str, versions: Mapping[str, str]) -> str:
    """A folder-safe key that changes when any input changes: the first 12 characters of the
    model's hash (so a person can tell entries apart) and a digest of all inputs. An engine is
    only valid for the model, GPU (model, compute capability, driver), precision and library
    versions that built it."""
    if not model_sha256:
        raise ValueError("model_sha256 is empty")
    if not gpu:
        raise ValueError("gpu is empty; an engine is only valid for the GPU that built it")
    if not precision:
        raise ValueError("precision is empty")
    inputs = key_inputs(model_sha256, gpu=gpu, precision=precision, versions=versions)
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:24]
    prefix = re.sub(r"[^A-Za-z0-9]", "", model_sha256)[:12] or "model"
    return f"{prefix}-{digest}"

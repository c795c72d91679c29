"""The native TensorRT engine: the scoring graph built into a TensorRT plan, cached on disk.

Building a plan takes seconds to minutes, so plans are kept in an `EngineCache` keyed by the
model file's SHA-256, the GPU, the precision and the TensorRT version; a replica that restarts
on the same GPU loads its plan instead. A cached plan that TensorRT refuses is deleted and
rebuilt, never retried.

Two rewrites of the graph before TensorRT parses it, neither changing what it computes:
- TensorRT's ONNX parser turns a graph input that also has an initializer into a constant, so
  the exporter's optional `target` (default [-1]) would be frozen at "predicted class". The
  initializer is dropped and `target` always fed, -1 per sample when the caller gives none, with
  its length tied to the batch dimension's name so TensorRT knows the two agree.
- TensorRT has no uint16 tensors: a uint16 `image` input becomes int32 (exact for every uint16
  value); its only consumers, Shape and Cast to float, read it the same way.

TensorRT and PyTorch (its CUDA buffers and streams) are imported on first use: the scorer loads
neither at module level (docs/design.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from xgal.core.contract import (
    EMBEDDING,
    SCORE_OUTPUTS,
    VIEW_PROBS,
    NotAScoringGraphError,
    check_signature,
    read_metadata,
)
from xgal.core.errors import InvalidArgument
from xgal.scorer.engines.base import BatchScores, Engine, cam_range, no_embedding, no_views
from xgal.scorer.engines.engine_cache import EngineCache, cache_key, default_root, gpu_identity, key_inputs
from xgal.scorer.engines.ort import ProviderUnavailableError

log = logging.getLogger(__name__)

# Part of every cache key: bump it when the rewrite or the build settings change, so plans
# built the old way become misses instead of being trusted.
BUILD_REVISION = "1"
DEFAULT_MAX_BATCH = 64


class TensorRTUnavailableError(ProviderUnavailableError, ImportError):
    """TensorRT, or a CUDA GPU for it, is not there."""


class TensorRTBuildError(InvalidArgument):
    """TensorRT cannot parse or build this scoring graph (an unsupported op, say)."""


def import_tensorrt() -> Any:
    """The `tensorrt` module, or TensorRTUnavailableError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"the TensorRT engine needs the tensorrt package (pip install tensorrt): {exc}"
        ) from None
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 10:
        # 8.x and 9.x have implicit-batch networks and binding indices, not named tensors.
        raise TensorRTUnavailableError(
            f"the TensorRT engine needs TensorRT 10 or later (pip install -U tensorrt), "
            f"found {getattr(trt, '__version__', 'an unknown version')}"
        )
    return trt


_LOGGER: Any = None


def _trt_logger(trt: Any) -> Any:
    # TensorRT warns when builders and runtimes of one process are given different loggers.
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _onnx_inputs(model: onnx.ModelProto) -> list[tuple[str, str, list[object]]]:
    """(name, "tensor(uint8)", dims) per graph input, as ONNX Runtime reports them, for
    `check_signature`."""
    out = []
    for value in model.graph.input:
        tensor = value.type.tensor_type
        typ = f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})"
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        out.append((value.name, typ, dims))
    return out


def _for_tensorrt(model: onnx.ModelProto, where: str) -> bytes:
    """The graph as TensorRT must see it (module docstring); `model` is changed in place."""
    graph = model.graph
    inputs = {v.name: v for v in graph.input}
    batch = inputs["image"].type.tensor_type.shape.dim[0]
    if "target" in inputs:
        at = [i for i, t in enumerate(graph.initializer) if t.name == "target"]
        for i in reversed(at):
            del graph.initializer[i]
        dim = inputs["target"].type.tensor_type.shape.dim[0]
        dim.Clear()
        if batch.dim_param:
            dim.dim_param = batch.dim_param
        else:
            dim.dim_value = batch.dim_value
    image = inputs["image"].type.tensor_type
    if image.elem_type == onnx.TensorProto.UINT16:
        users = {n.op_type for n in graph.node if "image" in n.input}
        if not users <= {"Shape", "Cast"}:
            raise TensorRTBuildError(
                f"{where}: TensorRT has no uint16 tensors and the graph reads 'image' with "
                f"{sorted(users - {'Shape', 'Cast'})}, so it cannot be widened to int32"
            )
        image.elem_type = onnx.TensorProto.INT32
    return model.SerializeToString()


def _gpu(torch: Any, device: int) -> str:
    """The GPU identity for the cache key. nvidia-smi numbers GPUs in PCI order and CUDA by
    CUDA_VISIBLE_DEVICES, so its answer is used only when it names the GPU that CUDA gives us."""
    props = torch.cuda.get_device_properties(device)
    smi = gpu_identity(device)
    if smi and smi.startswith(f"{props.name}, compute {props.major}.{props.minor},"):
        return smi
    return f"{props.name}, compute {props.major}.{props.minor}, driver unknown"


class TensorRTEngine(Engine):
    """Runs a scoring graph as a TensorRT plan on one CUDA GPU. `built` says whether this
    construction built the plan (False: it came from the cache); `cache_key` names its entry
    in `cache`."""

    name = "tensorrt"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        fp16: bool = False,
        device: int = 0,
        max_batch: int = DEFAULT_MAX_BATCH,
        opt_batch: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """`model` is a scoring graph's path or bytes. `fp16` lets TensorRT pick half-precision
        kernels (TensorRT 10; TensorRT 11 removed that flag: give it a graph from
        `xgal.scorer.precision.fp16.half_scoring_graph` instead). The plan serves batches of 1
        to `max_batch` and is tuned for `opt_batch` (default: `max_batch`); `run` splits larger
        batches. `cache_dir` (default: `.engines` beside the model, as for ONNX Runtime's TensorRT
        provider) holds the built plans."""
        where = "model bytes" if isinstance(model, bytes) else str(model)
        self.where = where
        if not 1 <= (opt_batch or max_batch) <= max_batch:
            raise InvalidArgument(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
        if not isinstance(model, bytes) and not os.path.isfile(model):
            raise FileNotFoundError(f"model file not found: {model}")
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf raises its own types for bytes that are no model
            raise NotAScoringGraphError(f"{where} is not a loadable ONNX model: {exc}") from None
        self.info = read_metadata(proto, where)
        inputs = _onnx_inputs(proto)
        check_signature(inputs, [o.name for o in proto.graph.output], self.info, where)

        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailableError("the TensorRT engine needs a CUDA GPU; PyTorch sees none")
        if fp16 and not hasattr(trt.BuilderFlag, "FP16"):
            raise InvalidArgument(
                f"TensorRT {trt.__version__} has no FP16 builder flag (strong typing only): build "
                "the graph from xgal.scorer.precision.fp16.half_scoring_graph with fp16=False"
            )
        self._trt, self._torch = trt, torch
        self.device = torch.device("cuda", device)
        self.max_batch = int(max_batch)
        self.opt_batch = int(opt_batch or max_batch)
        self.precision = "fp16" if fp16 else "fp32"
        self._lock = threading.Lock()

        versions = {
            "tensorrt": str(trt.__version__),
            "xgal.tensorrt": f"rev {BUILD_REVISION}, batch 1/{self.opt_batch}/{self.max_batch}",
        }
        sha = hashlib.sha256(data).hexdigest()
        gpu = _gpu(torch, device)
        self.cache = EngineCache(cache_dir if cache_dir is not None else default_root(model))
        self.cache_key = cache_key(sha, gpu=gpu, precision=self.precision, versions=versions)
        meta = {
            **key_inputs(sha, gpu=gpu, precision=self.precision, versions=versions),
            "graph_sha256": self.info.graph_sha256,
            "source": where,
        }
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(_trt_logger(trt))
            self.built = False
            engine = None
            blob = self.cache.load(self.cache_key)
            if blob is not None:
                engine = self._deserialize(blob)
                if engine is None:
                    log.warning(
                        "cached TensorRT plan %s was refused by TensorRT %s; rebuilding it",
                        self.cache_key,
                        trt.__version__,
                    )
                    self.cache.discard(self.cache_key)
            if engine is None:
                blob = self._build(_for_tensorrt(proto, where), fp16, where)
                engine = self._deserialize(blob)
                if engine is None:
                    raise TensorRTBuildError(f"{where}: TensorRT cannot load the plan it has just built")
                self.built = True
                try:
                    self.cache.store(self.cache_key, blob, meta)
                except OSError as exc:  # a read-only or full disk costs a rebuild next time, no more
                    log.warning("could not cache the TensorRT plan in %s: %s", self.cache.root, exc)
            self._engine = engine
            self._context = engine.create_execution_context()
            if self._context is None:
                raise TensorRTBuildError(f"{where}: TensorRT could not create an execution context")
            self._stream = torch.cuda.Stream(self.device)
        names = self._io_names(engine)
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        # numpy dtypes of what the plan reads (after the uint16 -> int32 rewrite), torch
        # dtypes of what it writes.
        self._host_dtypes = {
            n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names if is_input[n]
        }
        self._out_dtypes = {
            n: torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(n)))).dtype
            for n in names
            if not is_input[n]
        }

    def _io_names(self, engine: Any) -> list[str]:
        return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]

    def _deserialize(self, blob: bytes) -> Any:
        """The engine, or None when TensorRT refuses the plan or it lacks the scoring tensors."""
        try:
            engine = self._runtime.deserialize_cuda_engine(blob)
        except Exception as exc:  # some versions raise rather than return None
            log.warning("TensorRT could not deserialize a plan: %s", exc)
            return None
        if engine is None:
            return None
        names = set(self._io_names(engine))
        if not {"image", "roi", *SCORE_OUTPUTS} <= names:
            return None
        return engine

    def _build(self, onnx_bytes: bytes, fp16: bool, where: str) -> bytes:
        trt = self._trt
        logger = _trt_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TensorRTBuildError(f"TensorRT cannot parse {where}: {errors or 'no reason given'}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            # Only batch dimensions are dynamic in a scoring graph; the rest are fixed sizes.
            shapes = [tuple(b if d < 0 else d for d in dims) for b in (1, self.opt_batch, self.max_batch)]
            profile.set_shape(tensor.name, *shapes)
        config.add_optimization_profile(profile)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        elif hasattr(trt.BuilderFlag, "TF32"):
            # TF32 is on by default and rounds matmul and conv inputs to 10-bit mantissas;
            # "fp32" here means what ONNX Runtime computes on the CPU.
            config.clear_flag(trt.BuilderFlag.TF32)
        log.info(
            "building a TensorRT %s plan for %s (takes a while; cached afterwards)", self.precision, where
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TensorRTBuildError(f"TensorRT could not build {where}; its log above says why")
        return bytes(serialized)

    def run(
        self,
        image: np.ndarray,
        roi: np.ndarray,
        target: np.ndarray | None = None,
        *,
        want_cam: bool = False,
        want_embedding: bool = False,
        want_views: bool = False,
    ) -> BatchScores:
        self.check_batch(image, roi, target)
        if want_embedding and EMBEDDING not in self._out_dtypes:
            raise no_embedding(self.where)
        if want_views and VIEW_PROBS not in self._out_dtypes:
            raise no_views(self.where)
        n = image.shape[0]
        if target is None:
            target = np.full(n, -1, dtype=np.int64)
        if n == 0:
            h, w = self.info.cam_shape
            cam = np.zeros((0, h, w), dtype=np.float32)
            empty = np.zeros(0, dtype=np.float32)
            probs = np.zeros((0, self.info.num_classes), dtype=np.float32)
            emb = np.zeros((0, 0), dtype=np.float32) if want_embedding else None
            views = np.zeros((0, 0, self.info.num_classes), dtype=np.float32) if want_views else None
            return BatchScores(
                probs, empty, empty, empty, cam if want_cam else None, cam_range(cam), emb, views
            )
        feed = {"image": image, "roi": roi, "target": target}
        parts = [
            self._run_slice({k: v[lo : lo + self.max_batch] for k, v in feed.items()})
            for lo in range(0, n, self.max_batch)
        ]
        out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return BatchScores(
            probs=out["probs"],
            entropy=out["entropy"],
            dice=out["dice"],
            roi_area=out["roi_area"],
            cam=out["cam"] if want_cam else None,
            cam_range=cam_range(out["cam"]),
            embedding=out[EMBEDDING] if want_embedding else None,
            view_probs=out[VIEW_PROBS] if want_views else None,
        )

    def _run_slice(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            ctx = self._context
            if ctx is None:
                raise RuntimeError("the TensorRT engine is closed")
            held = []  # the input buffers must outlive the enqueued work
            for name, dtype in self._host_dtypes.items():
                host = np.ascontiguousarray(feed[name], dtype=dtype)
                buf = torch.from_numpy(host).to(self.device)
                if not ctx.set_input_shape(name, tuple(host.shape)):
                    raise InvalidArgument(f"TensorRT refuses shape {list(host.shape)} for input {name!r}")
                ctx.set_tensor_address(name, buf.data_ptr())
                held.append(buf)
            outs = {}
            for name, dtype in self._out_dtypes.items():
                outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device=self.device)
                ctx.set_tensor_address(name, outs[name].data_ptr())
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the batch; its log above says why")
            # .cpu() copies on the current stream (ours) and waits for it.
            return {name: out.cpu().numpy() for name, out in outs.items()}

    def close(self) -> None:
        with self._lock:
            self._context = None
            self._engine = None

"""A scoring graph as an entry of a Triton Inference Server model repository.

Ops who run Triton can serve per-image scoring with Triton's own health, metrics, dynamic
batching and perf_analyzer: `<repo>/<name>/<version>/model.onnx` and `<repo>/<name>/config.pbtxt`
for Triton's ONNX Runtime backend. The config is written from the graph itself (its inputs,
outputs, types and shapes), so it cannot drift from what was exported. The ranking (the
acquisition over a pool, its top-k and shard merge) stays with xgal's scorer and client: Triton
returns each batch's raw outputs.

Written from Triton's model configuration reference (protobuf text format); no Triton server
ran where this was written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xgal.core.contract import INPUT_NAMES, read_metadata
from xgal.core.errors import InvalidArgument

# ONNX element types (onnx.TensorProto) to Triton's data types.
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 4: "TYPE_UINT16", 7: "TYPE_INT64", 10: "TYPE_FP16"}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False


def graph_tensors(model: object) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs (those fed: an input with an initializer is optional) and outputs, as
    Triton sees them: the batch dimension (the first, symbolic) left out."""
    graph = model.graph  # type: ignore[attr-defined]
    defaults = {t.name for t in graph.initializer}

    def tensor(value: object, optional: bool = False) -> Tensor:
        t = value.type.tensor_type  # type: ignore[attr-defined]
        dims = t.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise InvalidArgument(f"{value.name}: the first dimension must be the (symbolic) batch")  # type: ignore[attr-defined]
        rest = []
        for d in dims[1:]:
            if not d.HasField("dim_value"):
                raise InvalidArgument(f"{value.name}: only the batch dimension may be symbolic")  # type: ignore[attr-defined]
            rest.append(int(d.dim_value))
        if t.elem_type not in TRITON_TYPES:
            raise InvalidArgument(f"{value.name}: ONNX element type {t.elem_type} has no Triton type here")  # type: ignore[attr-defined]
        return Tensor(value.name, TRITON_TYPES[t.elem_type], tuple(rest), optional)  # type: ignore[attr-defined]

    inputs = [tensor(v, v.name in defaults) for v in graph.input if v.name in INPUT_NAMES]
    outputs = [tensor(v) for v in graph.output]
    return inputs, outputs


def config_text(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    *,
    max_batch: int,
    max_delay_us: int,
    gpu: bool,
    instances: int = 1,
) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend. A per-sample scalar ([N] in the graph) is
    dims [1] reshaped to [] (Triton's dims never name the batch and are never empty)."""

    def block(t: Tensor) -> str:
        dims = t.dims or (1,)
        lines = [
            f'    name: "{t.name}"',
            f"    data_type: {t.data_type}",
            f"    dims: [ {', '.join(map(str, dims))} ]",
        ]
        if not t.dims:
            lines.append("    reshape: { shape: [ ] }")
        if t.optional:
            lines.append("    optional: true")
        return "  {\n" + "\n".join(lines) + "\n  }"

    preferred = sorted({b for b in (max_batch // 4, max_batch // 2, max_batch) if b >= 1})
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch}\n"
        "input [\n" + ",\n".join(block(t) for t in inputs) + "\n]\n"
        "output [\n" + ",\n".join(block(t) for t in outputs) + "\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {max_delay_us}\n"
        "}\n"
        f"instance_group [\n  {{\n    kind: {kind}\n    count: {instances}\n  }}\n]\n"
    )


def write_triton_entry(
    model: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: int = 1,
    max_batch: int = 64,
    max_delay_us: int = 5000,
    gpu: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write `model` (a scoring graph) into the Triton model repository `repo` as `name`
    (default: the file's stem) version `version`; returns the entry's folder."""
    import onnx

    src = Path(model)
    if not src.is_file():
        raise FileNotFoundError(f"model file not found: {src}")
    proto = onnx.load(os.fspath(src), load_external_data=False)
    read_metadata(proto, str(src))  # an xgal scoring graph, or NotAScoringGraphError
    name = src.stem if name is None else name
    if not name or set(name) - _NAME_CHARS or name in (".", ".."):
        raise InvalidArgument(f"model name {name!r}: use letters, digits, '_', '-' and '.'")
    if version < 1 or max_batch < 1 or max_delay_us < 0:
        raise InvalidArgument("version and max_batch must be >= 1 and max_delay_us >= 0")
    inputs, outputs = graph_tensors(proto)
    entry = Path(repo) / name
    target = entry / str(version) / "model.onnx"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    text = config_text(name, inputs, outputs, max_batch=max_batch, max_delay_us=max_delay_us, gpu=gpu)
    (entry / "config.pbtxt").write_text(text)
    return entry

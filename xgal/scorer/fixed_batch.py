"""A scoring graph with a fixed batch, beside the dynamic one the exporter writes.

CUDA graphs (ONNX Runtime's `enable_cuda_graph`) replay one captured launch sequence, so every
input and output must keep its shape and its address from run to run. This makes that graph
from any exported one: the batch dimension of its inputs and outputs set to `batch`, the other
shapes inferred through it; the engine pads a short batch (the pool's last) with zero images and
drops their rows (`OnnxRuntimeEngine`). The metadata is the dynamic graph's (it scores the same),
but for the graph's own SHA-256 (`xgal.graph_sha256`), computed again.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import shape_inference

from xgal.core.contract import read_metadata, write_metadata
from xgal.core.errors import InvalidArgument


def fixed_batch_graph(model: str | os.PathLike[str] | onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """`model` with its batch dimension fixed at `batch`, every output's shape inferred."""
    if batch < 1:
        raise InvalidArgument(f"a fixed batch must be at least 1, got {batch}")
    src = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    m = onnx.ModelProto()
    m.CopyFrom(src)
    init = {i.name for i in m.graph.initializer}
    for value in list(m.graph.input) + list(m.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        if value.name in init:  # an overridable initializer-input (`target`): fed or not, any length
            continue
        if dims[0].dim_param or dims[0].dim_value in (0, batch):
            dims[0].Clear()
            dims[0].dim_value = batch
        else:
            raise InvalidArgument(
                f"{value.name} has a fixed batch of {dims[0].dim_value} already, not {batch}"
            )
    del m.graph.value_info[:]  # inferred again through the fixed batch
    fixed = shape_inference.infer_shapes(m, data_prop=True)
    if any(prop.key.startswith("xgal.") for prop in fixed.metadata_props):
        write_metadata(fixed, read_metadata(fixed))  # the graph's own SHA-256, as it is now
    return fixed


def write_fixed_batch_graph(
    model: str | os.PathLike[str], output: str | os.PathLike[str], batch: int
) -> Path:
    """Write `fixed_batch_graph(model, batch)` to `output`; returns its path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(fixed_batch_graph(model, batch), os.fspath(output))
    return output


def fixed_batch_of(input_shape: list) -> int | None:
    """The fixed batch of a session input's shape (ONNX Runtime's list), None if dynamic."""
    first = input_shape[0] if input_shape else None
    return first if isinstance(first, int) and first > 0 else None

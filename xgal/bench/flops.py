"""Count the multiply-adds of an ONNX graph, so throughput can be read as GFLOP/s.

Convolutions (and transposed ones), Gemm and MatMul are counted from shapes inferred for a
fixed batch; everything else (element-wise, pooling, reductions) is a small fraction on CNNs
and is left out, so the figure is a slight under-count, the usual convention (ResNet-18 at
224x224: 1.82 G multiply-adds = 3.63 GFLOP per image).
"""

from __future__ import annotations

import os

import numpy as np
import onnx

from xgal.scorer.fixed_batch import fixed_batch_graph


def count_flops(model: str | os.PathLike[str] | onnx.ModelProto, batch: int = 1) -> float:
    """FLOPs (2 x multiply-adds) of one forward call at `batch` images."""
    proto = onnx.load(model) if not isinstance(model, onnx.ModelProto) else model
    inferred = fixed_batch_graph(proto, batch)
    g = inferred.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0.0
    for node in g.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            # For Conv every output element costs C_in/groups * k*k MACs; for ConvTranspose
            # every *input* element scatters into C_out/groups * k*k outputs.
            ref = shapes.get(node.output[0] if node.op_type == "Conv" else node.input[0])
            if not w or not ref or min(ref) < 0:
                continue
            macs += float(np.prod(ref)) * w[1] * int(np.prod(w[2:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not a or not b or not out or min(out) < 0:
                continue
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            inner = a[-2] if trans_a and len(a) >= 2 else a[-1]
            macs += float(np.prod(out)) * inner
    return 2.0 * macs

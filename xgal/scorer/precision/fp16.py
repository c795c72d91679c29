"""FP16 scoring graphs for GPUs: the network in half precision, the explanation math in float.

The convolutions, their activations and the classifier head (every Conv, Relu, Add, pooling,
BatchNormalization, Concat and Gemm that `probs` depends on) run in FP16, which is where a GPU's
tensor cores pay. Everything else stays float32: softmax and entropy, the Grad-CAM gradient
path, the CAM, its upsampling and the Dice sums over up to H*W pixels, which FP16 cannot hold
exactly (its spacing is 32 between 32768 and 65504). One Cast enters the half region per tensor
and one leaves it.

onnxruntime.transformers.float16 was tried first: it types every tensor FP16 and wraps the
nodes it keeps in float with casts, so the float tail still rounds to FP16 between any two
nodes (roi_area was off by 1 pixel in about 3000 on the synthetic scans); this module casts at
the region's edge only.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xgal.scorer.precision.graphs import load_fp32_graph, save_converted

HALF_OPS = frozenset(
    {
        "Conv",
        "Relu",
        "Add",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "BatchNormalization",
        "Concat",
        "Gemm",
    }
)


def ancestors(graph: onnx.GraphProto, output: str) -> set[int]:
    """Indices of the nodes `output` depends on."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    seen: set[int] = set()
    stack = [output]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(graph.node[i].input)
    return seen


def half_scoring_graph(model: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the FP16 version of an fp32 scoring graph (same inputs and outputs); its metadata
    records precision "fp16" and the SHA-256 of the FP16 graph."""
    m, info = load_fp32_graph(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    typed = onnx.shape_inference.infer_shapes(m).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input, *typed.output)}
    types.update({name: t.data_type for name, t in inits.items()})
    # Float nodes only: shape arithmetic (int64 Concat, Add) stays as it is, and so does a node
    # with an input whose type shape inference could not tell (it could not be cast safely).
    half = {
        i
        for i in ancestors(g, "probs")
        if g.node[i].op_type in HALF_OPS
        and all(types.get(name) == TensorProto.FLOAT for name in g.node[i].output)
        and all(types.get(name) is not None for name in g.node[i].input if name)
    }
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(g.node):
        for name in node.input:
            consumers[name].append(i)
    produced_half = {name for i in half for name in g.node[i].output}
    graph_outputs = {o.name for o in g.output}

    # Float weights of half nodes become FP16 (a copy when a float node reads them too).
    renamed: dict[str, str] = {}
    for name, t in inits.items():
        users = consumers.get(name, [])
        if t.data_type != TensorProto.FLOAT or not any(i in half for i in users):
            continue
        value = numpy_helper.to_array(t).astype(np.float16)
        if all(i in half for i in users):
            t.CopyFrom(numpy_helper.from_array(value, name))
        else:
            renamed[name] = f"{name}__fp16"
            g.initializer.append(numpy_helper.from_array(value, renamed[name]))

    new_nodes: list[onnx.NodeProto] = []
    into_half: dict[str, str] = {}  # float tensor -> its FP16 cast, made once
    out_of_half = {name: f"{name}__fp16" for name in produced_half}
    for i, node in enumerate(g.node):
        if i not in half:
            new_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
            elif name in produced_half:
                node.input[k] = out_of_half[name]
            elif types.get(name) == TensorProto.FLOAT and name not in inits:
                if name not in into_half:
                    into_half[name] = f"{name}__to_fp16"
                    new_nodes.append(
                        helper.make_node("Cast", [name], [into_half[name]], to=TensorProto.FLOAT16)
                    )
                node.input[k] = into_half[name]
        originals = list(node.output)
        del node.output[:]
        node.output.extend(out_of_half[name] for name in originals)
        new_nodes.append(node)
        # Float readers and graph outputs keep reading the original name, now a cast back.
        for name in originals:
            if name in graph_outputs or any(j not in half for j in consumers.get(name, [])):
                new_nodes.append(helper.make_node("Cast", [out_of_half[name]], [name], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    # Shapes and types of the renamed tensors are inferred again.
    del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m)
    return save_converted(m, info, "fp16", out)

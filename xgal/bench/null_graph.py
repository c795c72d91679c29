"""A scoring graph of negligible cost, for measuring the serving path's own ceiling (as Triton's
performance analysis serves an identity model): a real ONNX graph, built with `onnx.helper`
(no torch), with the contract's inputs and outputs and xgal's metadata, so the scorer (the ONNX
Runtime engine, the pipeline, the gRPC service) serves it unchanged.

What it computes, per image, touching few pixels:
- `cam` [N, h, w]: the first channel sampled every (H // h)-th row and (W // w)-th column,
  scaled to [0, 1] (not a Grad-CAM);
- `probs` [N, 2], `entropy` [N]: a softmax of two logits made from the mean of that sample;
- `dice` [N]: that mean, in [0, 1] (not a Dice);
- `roi_area` [N]: Σroi, exact (the contract's meaning; `Engine.self_check` checks it): the
  ROI's rows times a column of ones (MatMulInteger, uint8 by int8, which ONNX Runtime's AVX2
  kernels run fastest: no float copy of the ROI), then the row sums added;
- `embedding` [N, h·w]: the sampled map, flattened (so diversity requests run too);
- `target` (optional, default −1) is accepted and changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xgal.core.contract import PIXEL_SCALE, ScoringGraphInfo, write_metadata

CLASS_NAMES = ("low", "high")
OPSET = 17


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def null_scoring_graph(
    image_shape: tuple[int, int, int], pixel_dtype: str = "uint8", cam_side: int = 7
) -> onnx.ModelProto:
    """The negligible-cost scoring graph for images of `image_shape` (C, H, W), with its
    metadata written (`ScoringGraphInfo`, arch and head "null")."""
    import xgal

    c, h, w = (int(s) for s in image_shape)
    if pixel_dtype not in PIXEL_SCALE:
        raise ValueError(f"pixel_dtype must be one of {sorted(PIXEL_SCALE)}, got {pixel_dtype!r}")
    ch, cw = min(cam_side, h), min(cam_side, w)
    sh, sw = h // ch, w // cw
    pixel = TensorProto.UINT8 if pixel_dtype == "uint8" else TensorProto.UINT16
    inits = [
        _const("starts", np.array([0, 0, 0], np.int64)),
        _const("ends", np.array([1, sh * ch, sw * cw], np.int64)),
        _const("axes", np.array([1, 2, 3], np.int64)),
        _const("steps", np.array([1, sh, sw], np.int64)),
        _const("scale", np.array(1.0 / PIXEL_SCALE[pixel_dtype], np.float32)),
        _const("cam_shape", np.array([0, ch, cw], np.int64)),
        _const("emb_shape", np.array([0, ch * cw], np.int64)),
        _const("roi_shape", np.array([-1, w], np.int64)),
        _const("rows_shape", np.array([-1, h], np.int64)),
        _const("flat", np.array([-1], np.int64)),
        _const("ones", np.ones((w, 1), np.int8)),
        _const("slope", np.array([4.0, -4.0], np.float32)),
        _const("offset", np.array([-2.0, 2.0], np.float32)),
        _const("axis_1", np.array([1], np.int64)),
        _const("zero", np.array(0.0, np.float32)),
        _const("target", np.array([-1], np.int64)),  # the default: an overridable initializer
    ]
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes", "steps"], ["sampled"]),
        helper.make_node("Cast", ["sampled"], ["sampled_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sampled_f", "scale"], ["map"]),
        helper.make_node("Reshape", ["map", "cam_shape"], ["cam"]),
        helper.make_node("Reshape", ["map", "emb_shape"], ["embedding"]),
        helper.make_node("ReduceMean", ["embedding"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "slope"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Log", ["probs"], ["log_probs"]),
        helper.make_node("Mul", ["probs", "log_probs"], ["plogp"]),
        helper.make_node("ReduceSum", ["plogp", "axis_1"], ["neg_entropy"], keepdims=0),
        # `target` is taken (so a call with one runs) and adds 0 to the entropy.
        helper.make_node("Cast", ["target"], ["target_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["target_f", "zero"], ["target_0"]),
        helper.make_node("Sub", ["target_0", "neg_entropy"], ["entropy"]),
        helper.make_node("Reshape", ["mean", "flat"], ["dice"]),
        helper.make_node("Reshape", ["roi", "roi_shape"], ["roi_rows"]),
        helper.make_node("MatMulInteger", ["roi_rows", "ones"], ["row_sums"]),
        helper.make_node("Reshape", ["row_sums", "rows_shape"], ["per_image"]),
        helper.make_node("ReduceSum", ["per_image", "axis_1"], ["area_i"], keepdims=0),
        helper.make_node("Cast", ["area_i"], ["roi_area"], to=TensorProto.FLOAT),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "xgal-null-scoring-graph",
        [
            vi("image", pixel, ["N", c, h, w]),
            vi("roi", TensorProto.UINT8, ["N", h, w]),
            vi("target", TensorProto.INT64, ["T"]),
        ],
        [
            vi("probs", TensorProto.FLOAT, ["N", len(CLASS_NAMES)]),
            vi("entropy", TensorProto.FLOAT, ["N"]),
            vi("cam", TensorProto.FLOAT, ["N", ch, cw]),
            vi("dice", TensorProto.FLOAT, ["N"]),
            vi("roi_area", TensorProto.FLOAT, ["N"]),
            vi("embedding", TensorProto.FLOAT, ["N", ch * cw]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what ONNX Runtimes from 1.10 on read
    model.producer_name = "xgal"
    model.doc_string = "xgal null scoring graph: the contract's inputs and outputs at negligible cost"
    onnx.checker.check_model(model)
    info = ScoringGraphInfo(
        class_names=CLASS_NAMES,
        input_shape=(c, h, w),
        pixel_dtype=pixel_dtype,
        cam_shape=(ch, cw),
        target_layer="null",
        head="null",
        arch="null",
        version=xgal.__version__,
    )
    write_metadata(model, info)
    return model


def write_null_graph(
    path: str | os.PathLike[str], image_shape: tuple[int, int, int], pixel_dtype: str = "uint8"
) -> Path:
    """Write `null_scoring_graph(image_shape, pixel_dtype)` to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(null_scoring_graph(image_shape, pixel_dtype), path)
    return path

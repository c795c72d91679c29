"""FP16 scoring graphs: the network in half precision, the explanation math in float32.
Run here on ONNX Runtime's CPU kernels, which is enough to check the graph and its numbers;
its speed belongs to a GPU (`xgal bench --provider CUDAExecutionProvider`). Refusing what is not
an fp32 scoring graph, and serving the result, are tested in test_precision.py."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.ranking import ranking_agreement
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision.fp16 import half_scoring_graph
from xgal.train.nets import build_model, default_target_layer


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return synth_pool(tmp_path_factory.mktemp("scans") / "p", 64, image_size=32, channels=3, split="test")


@pytest.mark.parametrize(
    "arch,head",
    [
        ("small_cnn", "linear"),
        ("small_cnn", "prototypical"),
        pytest.param("resnet18", "mlp", marks=pytest.mark.slow),
        pytest.param("densenet121", "linear", marks=pytest.mark.slow),
    ],
)
def test_half_graph_matches_float(arch, head, scans, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, head, 3, in_channels=3).eval()
    layer = default_target_layer(arch)
    fp32 = export_scoring_graph(model, layer, tmp_path / "m.onnx", image_shape=(3, 32, 32))
    fp16 = half_scoring_graph(fp32, tmp_path / "m16.onnx")

    g = onnx.load(fp16)
    meta = {p.key: p.value for p in g.metadata_props}
    assert meta["xgal.precision"] == "fp16" and meta["xgal.target_layer"] == layer
    weights = {t.name: t.data_type for t in g.graph.initializer}
    convs = [n for n in g.graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]] == TensorProto.FLOAT16 for n in convs)

    a = OnnxRuntimeEngine(fp32)
    b = OnnxRuntimeEngine(fp16)  # the signature check accepts it
    data = scans.read(0, 32)
    x = a.run(data["images"], data["rois"], want_cam=True)
    y = b.run(data["images"], data["rois"], want_cam=True)
    for name in ("probs", "entropy", "dice", "cam"):
        assert getattr(y, name).dtype == np.float32
        np.testing.assert_allclose(getattr(y, name), getattr(x, name), atol=2e-3, err_msg=name)
    # Pixel counts never pass through FP16 (it cannot hold 2049).
    np.testing.assert_array_equal(y.roi_area, x.roi_area)
    cfg = AcquisitionConfig()
    r32 = score_pool(a, scans, cfg, 10, return_all=True).all
    r16 = score_pool(b, scans, cfg, 10, return_all=True).all
    assert ranking_agreement(r32.ids, r32.score, r16.ids, r16.score, 10)["spearman"] > 0.99


def test_half_graph_keeps_the_float_tail_float(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    fp32 = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
    g = onnx.shape_inference.infer_shapes(onnx.load(half_scoring_graph(fp32, tmp_path / "h.onnx"))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.output)}
    producer = {o: n for n in g.node for o in n.output}
    # Walk back from dice: everything on its way is float32 until the one cast out of the half region.
    stack, seen = ["dice"], set()
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type == "Cast" and types.get(node.input[0]) == TensorProto.FLOAT16:
            continue
        assert types.get(name) != TensorProto.FLOAT16, (node.op_type, name)
        stack.extend(node.input)

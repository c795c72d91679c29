"""Bad input to the exporter and to the engine gets an error that names what is wrong;
degenerate inputs (a constant image, no ROI) give finite, documented values."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from xgal.core.contract import NotAScoringGraphError
from xgal.export import export_scoring_graph
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.train.nets import build_model

SHAPE = (1, 32, 32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small_cnn", "linear", 3, in_channels=1).eval()


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "m.onnx"
    return export_scoring_graph(
        model, "features.stage4.0", path, image_shape=SHAPE, class_names=["a", "b", "c"]
    )


def test_unknown_target_layer(model, tmp_path):
    with pytest.raises(ValueError, match="unknown target layer 'features.nope'.*last convolutions"):
        export_scoring_graph(model, "features.nope", tmp_path / "m.onnx", image_shape=SHAPE)


def test_target_layer_without_feature_map(model, tmp_path):
    with pytest.raises(ValueError, match="outputs a 2-D tensor; Grad-CAM needs a 4-D feature map"):
        export_scoring_graph(model, "head.fc", tmp_path / "m.onnx", image_shape=SHAPE)


def test_target_layer_never_called(tmp_path):
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    model.features.unused = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="never called"):
        export_scoring_graph(model, "features.unused", tmp_path / "m.onnx", image_shape=SHAPE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pixel_dtype": "float32"}, "pixel_dtype must be one of"),
        ({"image_shape": (32, 32)}, r"image_shape must be \(C, H, W\)"),
        ({"mean": [0.5, 0.5]}, "one value per channel"),
        ({"std": [0.0]}, "std must be positive"),
        ({"class_names": ["only-one"]}, "class_names has 1 names but the model scores 3"),
    ],
)
def test_bad_export_arguments(model, tmp_path, kwargs, message):
    args = {"image_shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=message):
        export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", **args)
    assert not (tmp_path / "m.onnx").exists()


def test_graph_passes_checker_and_carries_metadata(graph):
    proto = onnx.load(graph)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in (
        "class_names",
        "input_shape",
        "pixel_dtype",
        "normalisation",
        "target_layer",
        "head",
        "round",
        "version",
        "graph_sha256",
        "cam_shape",
    ):
        assert f"xgal.{key}" in meta
    assert [i.name for i in proto.graph.input] == ["image", "roi", "target"]
    outputs = ["probs", "entropy", "cam", "dice", "roi_area", "embedding"]
    assert [o.name for o in proto.graph.output] == outputs


def test_constant_image_and_empty_roi_are_finite(graph):
    engine = OnnxRuntimeEngine(graph)
    images = np.stack([np.full(SHAPE, v, dtype=np.uint8) for v in (0, 128, 255)])
    rois = np.zeros((3, 32, 32), dtype=np.uint8)
    rois[1, 4:20, 4:20] = 1
    out = engine.run(images, rois, want_cam=True)
    for arr in (out.probs, out.entropy, out.dice, out.roi_area, out.cam):
        assert np.isfinite(arr).all()
    # No ROI: Dice 0 whatever the map (misalignment 1, the authors' fallback).
    assert out.dice[0] == 0.0 and out.dice[2] == 0.0
    assert 0.0 <= out.dice[1] <= 1.0


def test_forward_only_graph_is_not_a_scoring_graph(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    path = tmp_path / "forward.onnx"
    onnx.save(model, path)
    with pytest.raises(NotAScoringGraphError, match="not an xgal scoring graph"):
        OnnxRuntimeEngine(path)


def test_scoring_graph_with_wrong_signature(graph, tmp_path):
    proto = onnx.load(graph)
    for prop in proto.metadata_props:
        if prop.key == "xgal.input_shape":
            prop.value = "[3, 32, 32]"
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    with pytest.raises(NotAScoringGraphError, match="input 'image' has shape"):
        OnnxRuntimeEngine(bad)


def test_garbage_file_and_missing_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    with pytest.raises(NotAScoringGraphError, match="not a loadable ONNX model"):
        OnnxRuntimeEngine(junk)
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeEngine(tmp_path / "missing.onnx")


def test_engine_rejects_malformed_batches(graph):
    engine = OnnxRuntimeEngine(graph)
    img = np.zeros((2, *SHAPE), dtype=np.uint8)
    roi = np.zeros((2, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match="image batch has shape"):
        engine.run(np.zeros((2, 1, 16, 16), dtype=np.uint8), roi)
    with pytest.raises(ValueError, match="image dtype is uint16"):
        engine.run(img.astype(np.uint16), roi)
    with pytest.raises(ValueError, match="roi batch has shape"):
        engine.run(img, roi[:1])
    with pytest.raises(ValueError, match="target class 5 >= 3 classes"):
        engine.run(img, roi, np.array([5, 0]))


def test_unknown_provider(graph):
    with pytest.raises(ValueError, match="not installed"):
        OnnxRuntimeEngine(graph, providers=["NoSuchExecutionProvider"])


def test_io_binding_gives_the_same_scores(graph):
    images = np.random.default_rng(0).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    rois = np.zeros((5, 32, 32), dtype=np.uint8)
    rois[:, 8:20, 8:20] = 1
    plain = OnnxRuntimeEngine(graph, io_binding=False).run(images, rois, want_cam=True)
    bound = OnnxRuntimeEngine(graph, io_binding=True).run(images, rois, want_cam=True)
    for a, b in zip((plain.probs, plain.dice, plain.cam), (bound.probs, bound.dice, bound.cam), strict=True):
        np.testing.assert_array_equal(a, b)


def test_io_binding_buffers_follow_each_batch(graph):
    """The bound engine reuses its input buffers while the batch shape holds: each batch's
    scores must still be that batch's, across sizes and from threads running at once."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    plain = OnnxRuntimeEngine(graph, io_binding=False)
    bound = OnnxRuntimeEngine(graph, io_binding=True)
    batches = []
    for n in (4, 4, 3, 4, 4):
        rois = np.zeros((n, 32, 32), dtype=np.uint8)
        rois[:, rng.integers(0, 16) :, : rng.integers(8, 32)] = 1
        batches.append((rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rois))
    want = [plain.run(i, r) for i, r in batches]
    with ThreadPoolExecutor(3) as pool:
        for _ in range(2):
            got = list(pool.map(lambda b: bound.run(*b), batches))
            for a, b in zip(want, got, strict=True):
                np.testing.assert_array_equal(a.probs, b.probs)
                np.testing.assert_array_equal(a.dice, b.dice)

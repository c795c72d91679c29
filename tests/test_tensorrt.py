"""The native TensorRT engine: its plan scores as ONNX Runtime does on the CPU, its FP16 plan
ranks a pool as fp32 does, and its plans are cached, reloaded, and rebuilt when the cache cannot
be trusted.

The GPU tests need the `tensorrt` package (10 or later) and a CUDA GPU; elsewhere they are
skipped with a reason that names what is missing. The refusals that come before TensorRT is
needed (a file that is no scoring graph, no tensorrt to import) run everywhere.
"""

import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import NotAScoringGraphError
from xgal.core.ranking import ranking_agreement
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.engine_cache import BLOB, SIDECAR, EngineCache
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.tensorrt import TensorRTEngine, TensorRTUnavailableError
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision.fp16 import half_scoring_graph
from xgal.train.nets import build_model


def _missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"needs the tensorrt package (pip install tensorrt) and a CUDA GPU; tensorrt: {exc}"
    if not torch.cuda.is_available():
        return "needs the tensorrt package and a CUDA GPU; tensorrt imports but torch sees no CUDA GPU"
    return None


MISSING = _missing()
needs_trt = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
CPU = ["CPUExecutionProvider"]


def _small_graph(path, pixel_dtype="uint8"):
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    return export_scoring_graph(
        model, "features.stage4.0", path, image_shape=(1, 32, 32), pixel_dtype=pixel_dtype
    )


def _batch(n, c, size, dtype, seed=0):
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    image = rng.integers(0, hi, (n, c, size, size), dtype=np.int64).astype(dtype)
    roi = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if i % 5:  # every fifth sample has no ROI
            y, x = rng.integers(0, size // 2, 2)
            roi[i, y : y + size // 3, x : x + size // 3] = 1
    return image, roi


def _assert_same_scores(got, want, atol=1e-3):
    for name in ("probs", "entropy", "dice", "cam", "cam_range"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=atol, err_msg=name)
    np.testing.assert_array_equal(got.roi_area, want.roi_area)


# --- everywhere: refusals before TensorRT is needed -------------------------------------------


def test_a_plain_onnx_model_is_refused(tmp_path):
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", io[:1], io[1:])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(NotAScoringGraphError, match="not an xgal scoring graph"):
        TensorRTEngine(path, cache_dir=tmp_path / "cache")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 8)
    with pytest.raises(NotAScoringGraphError, match="not a loadable ONNX model"):
        TensorRTEngine(tmp_path / "junk.onnx", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        TensorRTEngine(tmp_path / "absent.onnx", cache_dir=tmp_path / "cache")


def test_xgal_metadata_on_another_graph_is_refused(tmp_path):
    # The metadata says "scoring graph" but the inputs and outputs are not one's.
    meta = onnx.load(_small_graph(tmp_path / "m.onnx")).metadata_props
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "impostor", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.extend(meta)
    with pytest.raises(NotAScoringGraphError, match="missing inputs"):
        TensorRTEngine(model.SerializeToString(), cache_dir=tmp_path / "cache")


def test_without_tensorrt_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    graph = _small_graph(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now fails
    with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt") as err:
        TensorRTEngine(graph, cache_dir=tmp_path / "cache")
    assert isinstance(err.value, ImportError) and isinstance(err.value, ValueError)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(TensorRTUnavailableError, match="TensorRT 10 or later"):
        TensorRTEngine(graph, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# --- with TensorRT and a GPU ------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if MISSING:
        pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    model = build_model("resnet18", "linear", 3, in_channels=3).eval()
    fp32 = export_scoring_graph(model, "features.layer4.1.conv2", root / "m.onnx", image_shape=(3, 64, 64))
    scans = synth_pool(root / "scans", 256, image_size=64, channels=3, split="test")
    return root, fp32, scans


@needs_trt
def test_fp32_plan_scores_as_onnx_runtime_on_the_cpu(setup):
    root, fp32, scans = setup
    cpu = OnnxRuntimeEngine(fp32, providers=CPU)
    # max_batch 32 under a 64-sample batch: `run` splits it and joins the slices.
    trt = TensorRTEngine(fp32, max_batch=32, cache_dir=root / "cache")
    data = scans.read(0, 64)
    _assert_same_scores(
        trt.run(data["images"], data["rois"], want_cam=True),
        cpu.run(data["images"], data["rois"], want_cam=True),
    )
    # An explicit target (the exporter's optional input) is honoured, -1 still meaning predicted.
    target = np.arange(64, dtype=np.int64) % 4 - 1
    _assert_same_scores(
        trt.run(data["images"], data["rois"], target, want_cam=True),
        cpu.run(data["images"], data["rois"], target, want_cam=True),
    )
    plain = trt.run(data["images"][:3], data["rois"][:3])
    assert plain.cam is None and plain.cam_range.shape == (3,)
    empty = trt.run(data["images"][:0], data["rois"][:0], want_cam=True)
    assert len(empty) == 0 and empty.probs.shape == (0, 3) and empty.cam.shape[0] == 0
    trt.self_check()
    trt.close()


@needs_trt
def test_uint16_graph_runs_widened_to_int32(tmp_path):
    graph = _small_graph(tmp_path / "m16.onnx", pixel_dtype="uint16")
    image, roi = _batch(16, 1, 32, np.uint16)
    trt = TensorRTEngine(graph, max_batch=16, cache_dir=tmp_path / "cache")
    _assert_same_scores(
        trt.run(image, roi, want_cam=True),
        OnnxRuntimeEngine(graph, providers=CPU).run(image, roi, want_cam=True),
    )


@needs_trt
def test_fp16_plan_ranks_as_fp32(setup, tmp_path):
    import tensorrt

    root, fp32, scans = setup
    if hasattr(tensorrt.BuilderFlag, "FP16"):
        half = TensorRTEngine(fp32, fp16=True, cache_dir=root / "cache")
    else:  # TensorRT 11: strong typing only, so the FP16 graph itself is built
        half = TensorRTEngine(half_scoring_graph(fp32, tmp_path / "h.onnx"), cache_dir=root / "cache")
    ref = OnnxRuntimeEngine(fp32, providers=CPU)
    cfg = AcquisitionConfig()
    a = score_pool(ref, scans, cfg, 50, return_all=True).all
    b = score_pool(half, scans, cfg, 50, return_all=True).all
    agree = ranking_agreement(a.ids, a.score, b.ids, b.score, 50)
    assert agree["spearman"] > 0.99 and agree["topk_overlap"] >= 0.9, agree


def _entry(cache_dir, engine):
    return cache_dir / engine.cache_key


@needs_trt
def test_second_construction_loads_the_cached_plan(tmp_path):
    graph = _small_graph(tmp_path / "m.onnx")
    cache_dir = tmp_path / "cache"
    image, roi = _batch(8, 1, 32, np.uint8)
    first = TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir)
    assert first.built
    assert (_entry(cache_dir, first) / BLOB).is_file() and (_entry(cache_dir, first) / SIDECAR).is_file()
    second = TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir)
    assert not second.built and second.cache_key == first.cache_key
    _assert_same_scores(second.run(image, roi, want_cam=True), first.run(image, roi, want_cam=True), 1e-6)
    # Another profile is another plan: a plan for batches of 8 cannot serve 16.
    other = TensorRTEngine(graph, max_batch=16, cache_dir=cache_dir)
    assert other.built and other.cache_key != first.cache_key


@needs_trt
def test_corrupted_cached_plan_is_rebuilt(tmp_path):
    graph = _small_graph(tmp_path / "m.onnx")
    cache_dir = tmp_path / "cache"
    first = TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir)
    blob = _entry(cache_dir, first) / BLOB
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    again = TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir)
    assert again.built
    assert EngineCache(cache_dir).load(first.cache_key) is not None  # the rebuilt entry is trusted
    assert not TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir).built


@needs_trt
def test_plan_that_tensorrt_refuses_is_deleted_and_rebuilt(tmp_path):
    graph = _small_graph(tmp_path / "m.onnx")
    cache_dir = tmp_path / "cache"
    first = TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir)
    meta = json.loads((_entry(cache_dir, first) / SIDECAR).read_text())["meta"]
    # A sidecar that vouches for bytes TensorRT cannot load (a plan from another build, say).
    EngineCache(cache_dir).store(first.cache_key, b"not a TensorRT plan" * 64, meta)
    again = TensorRTEngine(graph, max_batch=8, cache_dir=cache_dir)
    assert again.built
    assert EngineCache(cache_dir).load(first.cache_key) != b"not a TensorRT plan" * 64
    image, roi = _batch(8, 1, 32, np.uint8)
    _assert_same_scores(again.run(image, roi, want_cam=True), first.run(image, roi, want_cam=True), 1e-5)


@pytest.mark.parametrize("pixel_dtype", ["uint8", "uint16"])
def test_graph_as_tensorrt_sees_it_computes_the_same(tmp_path, pixel_dtype):
    # The rewrite (target a real input tied to the batch, uint16 pixels widened to int32) is
    # checked with ONNX Runtime, so it is tested where TensorRT is not installed too.
    import onnxruntime as ort

    from xgal.scorer.engines.tensorrt import _for_tensorrt

    graph = _small_graph(tmp_path / "m.onnx", pixel_dtype)
    model = onnx.load(graph)
    rewritten = _for_tensorrt(model, str(graph))
    assert "target" not in {t.name for t in model.graph.initializer}
    inputs = {v.name: v.type.tensor_type for v in model.graph.input}
    assert inputs["target"].shape.dim[0].dim_param == inputs["image"].shape.dim[0].dim_param
    wide = TensorProto.INT32 if pixel_dtype == "uint16" else TensorProto.UINT8
    assert inputs["image"].elem_type == wide
    session = ort.InferenceSession(rewritten, providers=CPU)
    ref = OnnxRuntimeEngine(graph, providers=CPU)
    image, roi = _batch(6, 1, 32, np.dtype(pixel_dtype))
    for target in (None, np.array([-1, 0, 1, 2, -1, 1], dtype=np.int64)):
        want = ref.run(image, roi, target, want_cam=True)
        feed = {
            "image": image.astype(np.int32) if pixel_dtype == "uint16" else image,
            "roi": roi,
            "target": np.full(6, -1, np.int64) if target is None else target,
        }
        names = ["probs", "entropy", "dice", "roi_area", "cam"]
        got = dict(zip(names, session.run(names, feed), strict=True))
        for name, value in got.items():
            np.testing.assert_allclose(value, getattr(want, name), rtol=1e-6, atol=1e-6, err_msg=name)

"""A fixed-batch scoring graph (for CUDA graphs): made from the exported one with its metadata
and its own SHA-256; the engine pads a short batch and splits a long one, scoring exactly as the
dynamic graph does, with the buffers bound once (the CUDA-graph path, run here on the CPU);
a dynamic graph is refused for CUDA graphs, and the CUDA provider is asked for them."""

import numpy as np
import onnx
import pytest
from helpers import run_xgal, small_scoring_graphs

from xgal.core.contract import graph_sha256, read_metadata
from xgal.core.errors import InvalidArgument
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.providers import CUDA, ProviderSettings, provider_options
from xgal.scorer.fixed_batch import fixed_batch_graph

FIXED = 8


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    dynamic = small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")[0]
    fixed = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    res = run_xgal("model", "fixed-batch", dynamic, fixed, "--batch", FIXED)
    assert res.returncode == 0 and "fixed batch 8" in res.stdout, res.stderr
    return dynamic, fixed


def test_the_fixed_graph_keeps_the_metadata_with_its_own_hash(graphs):
    dynamic, fixed = graphs
    proto = onnx.load(fixed)
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.name != "target":
            assert value.type.tensor_type.shape.dim[0].dim_value == FIXED, value.name
    want, got = read_metadata(onnx.load(dynamic)), read_metadata(proto)
    assert got.graph_sha256 == graph_sha256(proto) != want.graph_sha256
    assert got.describe() | {"graph_sha256": None} == want.describe() | {"graph_sha256": None}
    with pytest.raises(InvalidArgument, match="fixed batch of 8 already, not 4"):
        fixed_batch_graph(proto, 4)


@pytest.mark.parametrize("captured", [False, True], ids=["plain", "bound-buffers"])
def test_short_and_long_batches_score_as_the_dynamic_graph(graphs, captured):
    dynamic, fixed = graphs
    ref = OnnxRuntimeEngine(dynamic, intra_op_threads=1)
    engine = OnnxRuntimeEngine(fixed, intra_op_threads=1, settings=ProviderSettings(cuda_graph=captured))
    assert (engine.fixed_batch, ref.fixed_batch, engine.cuda_graph) == (FIXED, None, captured)
    rng = np.random.default_rng(0)
    for n in (3, FIXED, 13, 3):  # short, exact, split and padded, short again (same buffers)
        image = rng.integers(0, 256, (n, 1, 32, 32), np.uint8)
        roi = (rng.random((n, 32, 32)) > 0.7).astype(np.uint8)
        target = rng.integers(-1, 3, n)
        for kw in ({}, {"want_cam": True, "want_embedding": ref.has_embedding}, {"target": target}):
            want, got = ref.run(image, roi, **kw), engine.run(image, roi, **kw)
            for field in ("probs", "entropy", "dice", "roi_area", "cam", "embedding", "cam_range"):
                a, b = getattr(want, field), getattr(got, field)
                assert (a is None) == (b is None), field
                if a is not None:
                    assert b.shape == a.shape, field
                    np.testing.assert_allclose(b, a, atol=1e-5, err_msg=field)


def test_cuda_graphs_need_a_fixed_batch_and_ask_the_provider(graphs):
    dynamic, _ = graphs
    with pytest.raises(InvalidArgument, match="xgal model fixed-batch"):
        OnnxRuntimeEngine(dynamic, intra_op_threads=1, settings=ProviderSettings(cuda_graph=True))
    (name, options), *_ = provider_options([CUDA], ProviderSettings(cuda_graph=True), b"")
    assert name == CUDA and options["enable_cuda_graph"] == "1"
    (_, plain), *_ = provider_options([CUDA], ProviderSettings(), b"")
    assert "enable_cuda_graph" not in plain
    res = run_xgal("serve", "--cuda-graph", "--data-root", ".", "--model-repo", ".")
    assert res.returncode == 2 and "give --provider CUDAExecutionProvider first" in res.stderr + res.stdout


def test_the_captured_path_runs_on_one_thread_and_is_warmed_at_load(graphs):
    """ONNX Runtime keeps a CUDA graph per calling thread: every run of a cuda_graph engine goes
    through the engine's one thread, whichever thread calls it, and the runs that lead to the
    capture happen when the engine is opened, not during traffic."""
    import threading

    _, fixed = graphs
    engine = OnnxRuntimeEngine(fixed, intra_op_threads=1, settings=ProviderSettings(cuda_graph=True))
    assert engine._graph_io  # bound and run at load
    seen, replay = [], engine._replay

    def recording(feed, names):
        seen.append(threading.current_thread().name)
        return replay(feed, names)

    engine._replay = recording
    image, roi = np.zeros((FIXED, 1, 32, 32), np.uint8), np.zeros((FIXED, 32, 32), np.uint8)
    callers = [threading.Thread(target=engine.run, args=(image, roi)) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    engine.run(image[:3], roi[:3])
    assert len(seen) == 4 and len(set(seen)) == 1 and seen[0].startswith("xgal-cuda-graph")
    engine.close()

"""When the misalignment term cannot count (no, or few, ROIs in what is ranked) the result says
so, naming what decided the ranking and what to do: the in-process pipeline, the service (its
count of samples with an ROI survives sharding) and `xgal score`. The loop's round note is
checked in test_handoff (an archive without ROIs)."""

import numpy as np
import pytest
from helpers import blob_images, run_xgal, small_scoring_graphs

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.pool.format import Pool
from xgal.pool.writer import PoolWriter
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig


def _pool(path, with_roi: int, n: int = 40) -> Pool:
    rois = np.zeros((n, 32, 32), dtype=np.uint8)
    rois[:with_roi, 8:20, 8:20] = 1
    with PoolWriter(path, image_shape=(1, 32, 32), class_names=["a", "b", "c"]) as w:
        w.add([f"s{i:03d}" for i in range(n)], blob_images(n, 1, 32, seed=0), rois, None)
    return Pool(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("notes")
    graph, _ = small_scoring_graphs(tmp_path_factory.getbasetemp() / "small-graphs")
    return (
        root,
        graph,
        _pool(root / "data" / "none", 0),
        _pool(root / "data" / "few", 2),
        _pool(root / "data" / "all", 40),
    )


def test_the_pipeline_counts_rois_and_says_when_m_cannot_count(world):
    _, graph, none, few, every = world
    engine = OnnxRuntimeEngine(graph)
    xgal = AcquisitionConfig()
    result = score_pool(engine, none, xgal, 5)
    assert result.with_roi == 0
    assert "decided by uncertainty alone" in result.misalignment_note(xgal)
    assert result.misalignment_note(AcquisitionConfig(strategy="uncertainty")) is None  # M plays no part
    result = score_pool(engine, few, xgal, 5)
    assert result.with_roi == 2 and "--missing-roi ignore" in result.misalignment_note(xgal)
    assert score_pool(engine, every, xgal, 5).misalignment_note(xgal) is None
    # The body as weak ROI gives every scan one: M counts again.
    body = AcquisitionConfig(roi="body")
    assert score_pool(engine, none, body, 5).with_roi > 30


def test_the_count_survives_the_service_and_its_shards_and_xgal_score_says_it(world, tmp_path):
    root, graph, none, few, _ = world
    server = RunningServer(ServerConfig(data_root=root / "data", model_repo=tmp_path / "repo", port=0))
    try:
        with ScorerClient(server.address) as client:
            client.publish_model(graph, "m")
            got = client.score_pool("few", model="m", top_k=5, shards=3, progress=False)
            assert got.with_roi == 2 and got.scored == 40
    finally:
        server.stop(grace=1)
    res = run_xgal("score", "--model", graph, "--pool", none.path, "-k", 3, timeout=300)
    assert res.returncode == 0 and "none of the 40 scored samples has an ROI" in res.stdout, res.stderr

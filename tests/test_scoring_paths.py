"""Every path that ranks gives the same rows: the in-process pipeline, ScorePool on one replica,
ScorePool sharded over two (the client rescoring a pool-level normalisation), and ScoreStream,
including what the missing-ROI and flat-CAM policies do and a seeded stochastic selection. They all go
through xgal.core.ranking."""

import numpy as np
import pytest
import torch

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import InvalidArgument
from xgal.export import export_scoring_graph
from xgal.pool.format import Pool, PoolWriter
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model

N = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    rng = np.random.default_rng(0)
    rois = np.zeros((N, 32, 32), dtype=np.uint8)
    for i in range(N):
        if i % 4:  # every fourth sample has no ROI
            y, x = rng.integers(0, 20, 2)
            rois[i, y : y + 10, x : x + 12] = 1
    images = rng.integers(0, 256, (N, 1, 32, 32), dtype=np.uint8)
    with PoolWriter(root / "data" / "pool", image_shape=(1, 32, 32), shard_size=50) as w:
        w.add([f"s{i:03d}" for i in range(N)], images, rois)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    # "f": class 0 has no positive weight, so a scan predicted as class 0 has a flat map; its
    # bias makes it the prediction for about half the scans.
    model.eval()
    with torch.no_grad():
        model.head.fc.weight[0] = -model.head.fc.weight[0].abs()
        model.head.fc.bias.zero_()
        logits = model(torch.from_numpy(images.astype(np.float32) / 255))
        model.head.fc.bias[0] = (logits[:, 1:].amax(1) - logits[:, 0]).median()
    flat = export_scoring_graph(model, "features.stage4.0", root / "f.onnx", image_shape=(1, 32, 32))
    # "l": an ROI head, its bias at 0 so its untrained map is about half above the threshold:
    # masks of every size, a few empty.
    torch.manual_seed(1)
    learned = build_model("small_cnn", "linear", 3, in_channels=1, roi_head="beside")
    torch.nn.init.constant_(learned.roi_head.body[-1].bias, 0.0)
    head = export_scoring_graph(learned, "features.stage4.0", root / "l.onnx", image_shape=(1, 32, 32))
    servers = [
        RunningServer(ServerConfig(data_root=root / "data", model_repo=root / f"r{i}", port=0))
        for i in range(2)
    ]
    with ScorerClient([s.address for s in servers]) as client:
        client.publish_model(onnx, "m")
        client.publish_model(flat, "f")
        client.publish_model(head, "l")
    yield Pool(root / "data" / "pool"), {"m": onnx, "f": flat, "l": head}, servers, images, rois
    for s in servers:
        s.stop(grace=0)


def _rows(r):
    order = np.argsort(r.ids)
    return r.ids[order].tolist(), r.u[order], r.m[order], r.score[order], r.flat[order], r.roi_source[order]


def _same(a, b):
    ids_a, *cols_a = _rows(a)
    ids_b, *cols_b = _rows(b)
    assert ids_a == ids_b
    for x, y in zip(cols_a, cols_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"missing_roi": "exclude"},
        {"missing_roi": "ignore", "lam": 0.6},
        {"normalise": "rank", "missing_roi": "exclude"},
        {"normalise": "minmax", "balance": "predicted"},
        # Gumbel-top-k: each path draws the same batch for the same seed, sharded or not.
        {"selection": "softmax", "beta": 5.0, "seed": 3},
        {"selection": "power", "normalise": "rank", "balance": "predicted", "seed": 4},
        {"flat_cam": "ignore", "normalise": "rank"},
        # The body stands in where the expert drew no ROI (every fourth sample).
        {"roi": "expert-else-body", "missing_roi": "exclude"},
        # The graph's learned ROI, everywhere or where the expert drew none.
        {"roi": "learned", "missing_roi": "exclude", "normalise": "rank"},
        {"roi": "expert-else-learned", "balance": "predicted"},
    ],
)
def test_every_path_ranks_alike(world, options):
    pool, graphs, servers, images, rois = world
    config = AcquisitionConfig(**options)
    model = "f" if config.flat_cam.value == "ignore" else "l" if config.roi.learned else "m"
    local = score_pool(OnnxRuntimeEngine(graphs[model]), pool, config, 30, return_all=True, batch_size=16)
    if config.missing_roi.value == "exclude" and config.roi.value == "expert":
        assert local.all is not None and len(local.all) == N - N // 4 and local.excluded == N // 4
    if model == "f":  # some maps are flat, some are not
        assert local.all is not None and 0 < local.all.flat.sum() < N
    if config.roi.value == "expert-else-body":  # nothing left out for want of an ROI
        assert local.all is not None and len(local.all) == N and local.excluded == 0
        body = local.all.ids[local.all.roi_source == 2]
        assert sorted(body.tolist()) == [f"s{i:03d}" for i in range(0, N, 4)]
    if config.roi.learned:  # the expert's where drawn (expert-else-learned), else the head's
        source = dict(zip(local.all.ids.tolist(), local.all.roi_source.tolist(), strict=True))
        drawn = {f"s{i:03d}" for i in range(N) if i % 4}
        want = {1} if config.roi.value == "expert-else-learned" else {3}
        assert {source[i] for i in drawn if i in source} == want
        assert {source[i] for i in source if i not in drawn} <= {0, 3} and 3 in source.values()
    for targets in ([servers[0].address], [s.address for s in servers]):
        with ScorerClient(targets) as client:
            remote = client.score_pool(
                "pool", model=model, top_k=30, return_all=True, progress=False, **options
            )
        assert remote.top.ids.tolist() == local.top.ids.tolist()
        np.testing.assert_allclose(remote.top.score, local.top.score, rtol=0, atol=1e-6)
        _same(remote.all, local.all)
        assert remote.excluded == local.excluded
    if config.pointwise:
        with ScorerClient(servers[0].address) as client:
            streamed, _ = client.score_arrays(
                images, rois, [f"s{i:03d}" for i in range(N)], model=model, batch_size=16, **options
            )
        _same(streamed, local.all)


def test_stream_cams_follow_the_samples_kept(world):
    _, _, servers, images, rois = world
    with ScorerClient(servers[0].address) as client:
        kept, cams = client.score_arrays(
            images[:8],
            rois[:8],
            [f"s{i:03d}" for i in range(8)],
            model="m",
            want_cam=True,
            missing_roi="exclude",
        )
        every, all_cams = client.score_arrays(
            images[:8], rois[:8], [f"s{i:03d}" for i in range(8)], model="m", want_cam=True
        )
    assert kept.ids.tolist() == [f"s{i:03d}" for i in range(8) if i % 4]
    np.testing.assert_array_equal(cams, all_cams[[i for i in range(8) if i % 4]])


@pytest.mark.parametrize("source", ["body", "learned"])
def test_misalignment_is_measured_against_the_roi_the_source_names(world, source):
    """M against the body found in each scan, or the graph's learned ROI, exactly as the engine
    measures it on those masks; each row says which (roi_source: 2 body, 3 learned, 0 none)."""
    from xgal.pool.body import body_masks

    pool, graphs, _, images, rois = world
    graph = graphs["m" if source == "body" else "l"]
    config = AcquisitionConfig(roi=source)
    local = score_pool(OnnxRuntimeEngine(graph), pool, config, 10, return_all=True, batch_size=16)
    if source == "body":
        direct = OnnxRuntimeEngine(graph).run(images, body_masks(images))
        dice, found, code = direct.dice, np.ones(N, dtype=bool), 2
    else:
        direct = OnnxRuntimeEngine(graph).run(images, rois, want_learned=True)
        dice, found, code = direct.learned_dice, direct.learned_area > 0, 3
    order = np.argsort(local.all.ids)
    assert 0 < found.sum() <= N
    np.testing.assert_array_equal(local.all.roi_source[order], np.where(found, code, 0))
    np.testing.assert_allclose(local.all.m[order][found], 1 - dice[found], rtol=0, atol=1e-6)


def test_a_graph_without_a_learned_roi_refuses_to_measure_against_one(world):
    pool, graphs, *_ = world
    with pytest.raises(InvalidArgument, match="no learned ROI"):
        score_pool(OnnxRuntimeEngine(graphs["m"]), pool, AcquisitionConfig(roi="learned"), 10)

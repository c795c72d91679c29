"""Diversity steps over the graph's embedding: `spread` leaves near-duplicates of a chosen scan
behind, `typical` takes the densest scan of each cluster, both choose among candidates only, so
a pool scored in shards (merged by the client) chooses the same batch as one scorer; and the
exported `embedding` output is the target layer's pooled activations."""

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from helpers import blob_images, box_rois, service_server, service_world

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import InvalidArgument
from xgal.core.ranking import Ranked, choose
from xgal.core.wire import acquisition_from_proto, acquisition_to_proto, ranked_from_proto, ranked_to_proto
from xgal.export import export_scoring_graph
from xgal.loop import LoopConfig
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.scorer.pipeline import score_pool
from xgal.train.nets import build_model


def _candidates(embedding: np.ndarray) -> Ranked:
    """Rows in rank order (scores falling), with the given embeddings."""
    n = len(embedding)
    return Ranked(
        ids=np.array([f"s{i:03d}" for i in range(n)]),
        u=np.zeros(n),
        m=np.zeros(n),
        score=np.linspace(1.0, 0.0, n),
        pred=np.zeros(n, dtype=np.int64),
        probs=np.full((n, 2), 0.5, dtype=np.float32),
        embedding=embedding.astype(np.float32),
    )


def _clusters(sizes, dim=6, spread=0.01, seed=0):
    rng = np.random.default_rng(seed)
    parts = [np.eye(dim)[j] + rng.normal(0, spread, (size, dim)) for j, size in enumerate(sizes)]
    return np.concatenate(parts), np.repeat(np.arange(len(sizes)), sizes)


def test_spread_leaves_near_duplicates_of_a_chosen_scan_behind():
    # The 6 best candidates are near-duplicates (cluster 0); clusters 1 and 2 rank below them.
    emb, cluster = _clusters([6, 6, 6])
    config = AcquisitionConfig(diversity="spread")
    got = choose(_candidates(emb), 3, config)
    assert sorted(cluster[[int(i[1:]) for i in got.ids]].tolist()) == [0, 1, 2]
    assert got.ids[0] == "s000"  # the best candidate is always chosen first
    # Within a cluster the better ranked one wins: rows 6 and 12 open clusters 1 and 2.
    assert set(got.ids.tolist()) == {"s000", "s006", "s012"}
    # The top k, for contrast: all three from cluster 0.
    top = choose(_candidates(emb), 3, AcquisitionConfig())
    assert top.ids.tolist() == ["s000", "s001", "s002"]


def test_typical_takes_a_scan_from_the_dense_core_of_each_cluster_largest_first():
    rng = np.random.default_rng(1)
    parts, cluster, core = [], [], []
    for j, (n_core, n_loose) in enumerate([(6, 12), (5, 6), (5, 2)]):
        parts += [
            np.eye(6)[j] + rng.normal(0, 0.005, (n_core, 6)),
            np.eye(6)[j] + rng.normal(0, 0.05, (n_loose, 6)),
        ]
        cluster += [j] * (n_core + n_loose)
        core += [True] * n_core + [False] * n_loose
    # An outlier on its own, ranked first: a cluster of one has no typical member.
    emb = np.concatenate([np.ones((1, 6)), *parts])
    cluster, core = np.r_[-1, cluster], np.r_[False, core]
    got = choose(_candidates(emb), 4, AcquisitionConfig(strategy="random", diversity="typical", seed=3))
    rows = [int(i[1:]) for i in got.ids]
    assert [int(cluster[r]) for r in rows[:3]] == [0, 1, 2]  # one per cluster, the largest first
    assert core[rows[:3]].all()  # the densest part of each cluster, not its loose members
    assert 0 not in rows


def test_diversity_options_are_checked():
    with pytest.raises(InvalidArgument, match="at least the number to select"):
        AcquisitionConfig(diversity="spread", candidates=5).candidate_count(10)
    with pytest.raises(InvalidArgument, match="balance"):
        AcquisitionConfig(diversity="spread", balance="predicted")
    with pytest.raises(InvalidArgument, match="normalise 'rank'"):
        AcquisitionConfig(diversity="spread", normalise="rank")
    with pytest.raises(InvalidArgument, match="candidates"):
        AcquisitionConfig(diversity="spread", candidates=-1)
    with pytest.raises(InvalidArgument, match="diversity must be one of"):
        AcquisitionConfig(diversity="kmeans")
    assert AcquisitionConfig().candidate_count(10) == 10
    assert AcquisitionConfig(diversity="spread").candidate_count(10) == 50
    assert AcquisitionConfig(diversity="typical").candidate_count(10) == 200


def test_diversity_and_embeddings_survive_the_wire():
    config = AcquisitionConfig(diversity="typical", candidates=123, seed=4)
    assert acquisition_from_proto(acquisition_to_proto(config)) == config
    emb, _ = _clusters([2, 3])
    rows = _candidates(emb)
    back = ranked_from_proto(ranked_to_proto(rows), 2)
    np.testing.assert_array_equal(back.embedding, rows.embedding)
    # Rows without embeddings stay without: width 0.
    plain = replace(rows, embedding=None)
    assert ranked_from_proto(ranked_to_proto(plain), 2).embedding.shape == (5, 0)


def test_the_first_round_of_a_typical_cold_start_clusters_random_candidates():
    cfg = LoopConfig(cold_start="typical", acquisition=AcquisitionConfig(diversity="spread"), seed=2)
    first = cfg.round_acquisition(0)
    assert (first.strategy, first.diversity) == ("random", "typical")
    assert first.seed == 2000
    later = cfg.round_acquisition(1)
    assert (later.strategy, later.diversity) == ("xgal", "spread")
    plain = LoopConfig(seed=2).round_acquisition(0)
    assert (plain.strategy, plain.diversity) == ("xgal", "none")
    with pytest.raises(InvalidArgument, match="cold_start"):
        LoopConfig(cold_start="kmeans")


def test_the_graph_exports_the_target_layers_pooled_activations(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    path = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
    images, rois = blob_images(12, 1, 32, seed=0), box_rois(12, 32, seed=0)
    got = OnnxRuntimeEngine(path).run(images, rois, want_embedding=True).embedding
    ref = TorchReferenceEngine(model, "features.stage4.0", image_shape=(1, 32, 32)).run(
        images, rois, want_embedding=True
    )
    assert got is not None and ref.embedding is not None
    assert got.shape == ref.embedding.shape and got.shape[0] == 12 and got.shape[1] > 1
    np.testing.assert_allclose(got, ref.embedding, rtol=0, atol=1e-5)
    assert OnnxRuntimeEngine(path).run(images, rois).embedding is None  # only when asked for


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return service_world(tmp_path_factory)


@pytest.fixture
def server(world, tmp_path):
    yield from service_server(world, tmp_path)


@pytest.mark.parametrize(
    "options",
    [
        {"diversity": "spread"},
        {"diversity": "spread", "uncertainty": "margin", "candidates": 30},
        {"diversity": "typical", "strategy": "random", "candidates": 120},
    ],
    ids=["spread", "spread-margin", "typical"],
)
def test_shards_choose_the_batch_one_scorer_chooses(world, server, options):
    _, pool, m1, _ = world
    config = AcquisitionConfig(seed=5, **options)
    want = score_pool(OnnxRuntimeEngine(m1), pool, config, 12, exclude_ids=["scan-0000002"])
    plain = score_pool(OnnxRuntimeEngine(m1), pool, replace(config, diversity="none"), 12)
    assert want.top.ids.tolist() != plain.top.ids.tolist()  # the step changed the batch
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        for shards in (1, 3):
            got = client.score_pool(
                "pool",
                model="demo",
                top_k=12,
                exclude_ids=["scan-0000002"],
                shards=shards,
                progress=False,
                **options,
                seed=5,
            )
            assert got.top.ids.tolist() == want.top.ids.tolist(), shards


def test_a_graph_without_the_embedding_refuses_diversity_and_still_scores(world, tmp_path):
    _, pool, m1, _ = world
    graph = onnx.load(m1)
    kept = [o for o in graph.graph.output if o.name != "embedding"]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(graph, old)
    engine = OnnxRuntimeEngine(old)
    assert len(score_pool(engine, pool, AcquisitionConfig(), 5).top) == 5
    with pytest.raises(InvalidArgument, match="export the model again"):
        score_pool(engine, pool, AcquisitionConfig(diversity="spread"), 5)

"""Scoring a pool in process: the pipeline's ranking against a brute-force one, shards,
exclusions, the prefetching loader, and the checks between a pool and a model."""

import numpy as np
import pytest
import torch

from xgal.core.acquisition import AcquisitionConfig, criteria
from xgal.core.ranking import merge
from xgal.export import export_scoring_graph
from xgal.pool.format import PoolFormatError
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.loader import PrefetchLoader
from xgal.scorer.pipeline import score_pool
from xgal.train.nets import build_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    pool = synth_pool(root / "pool", 150, seed=0, image_size=32, shard_size=64)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    path = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    return pool, OnnxRuntimeEngine(path)


def _brute_force(engine, pool, config, k, exclude=()):
    d = pool.read(0, pool.count)
    s = engine.run(d["images"], d["rois"])
    c = criteria(s.probs, s.entropy, s.dice, s.roi_area, d["ids"], config)
    rows = [(-c.score[i], d["ids"][i]) for i in range(pool.count) if c.keep[i] and d["ids"][i] not in exclude]
    return [i for _, i in sorted(rows)[:k]], c


@pytest.mark.parametrize("strategy", ["xgal", "uncertainty", "misalignment", "random"])
def test_ranking_equals_brute_force(setup, strategy):
    pool, engine = setup
    config = AcquisitionConfig(strategy=strategy)
    exclude = {"scan-0000003", "scan-0000100"}
    got = score_pool(engine, pool, config, 12, exclude_ids=exclude, batch_size=16)
    want, _ = _brute_force(engine, pool, config, 12, exclude)
    assert got.top.ids.tolist() == want
    assert got.scored == 150 and got.excluded == 2


def test_shards_merge_to_the_whole(setup):
    pool, engine = setup
    config = AcquisitionConfig()
    whole = score_pool(engine, pool, config, 10)
    parts = [score_pool(engine, pool, config, 10, start=a, stop=b).top for a, b in ((0, 70), (70, 150))]
    assert merge(parts, 10, 3).ids.tolist() == whole.top.ids.tolist()


def test_pool_normalised_and_all_scores(setup):
    pool, engine = setup
    config = AcquisitionConfig(normalise="minmax")
    got = score_pool(engine, pool, config, 5, return_all=True)
    assert got.all is not None and len(got.all) == 150
    u, m = got.all.u, got.all.m
    expect = 0.3 * (u - u.min()) / np.ptp(u) + 0.7 * (m - m.min()) / np.ptp(m)
    np.testing.assert_allclose(got.all.score, expect)
    best = np.lexsort((got.all.ids, -expect))[:5]
    assert got.top.ids.tolist() == got.all.ids[best].tolist()


def test_balance_oracle_uses_labels(setup):
    pool, engine = setup
    got = score_pool(engine, pool, AcquisitionConfig(balance="oracle"), 9)
    labels = dict(zip(pool.ids().tolist(), pool.labels().tolist(), strict=True))
    assert sorted(np.bincount([labels[i] for i in got.top.ids], minlength=3).tolist()) == [3, 3, 3]


def test_progress_and_cancellation(setup):
    pool, engine = setup
    seen = []
    score_pool(engine, pool, AcquisitionConfig(), 5, batch_size=40, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(40, 150), (80, 150), (120, 150), (150, 150)]

    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_pool(engine, pool, AcquisitionConfig(), 5, batch_size=40, progress=cancel)


def test_pool_model_mismatch(tmp_path, setup):
    _, engine = setup
    other = synth_pool(tmp_path / "big", 4, seed=0, image_size=48)
    with pytest.raises(PoolFormatError, match=r"holds uint8\[1, 48, 48\] images but the model expects"):
        score_pool(engine, other, AcquisitionConfig(), 2)


def test_loader_order_and_errors(setup):
    pool, _ = setup
    ids = np.concatenate([b.ids for b in PrefetchLoader(pool, 33, start=5, stop=140)])
    assert ids.tolist() == pool.ids()[5:140].tolist()
    with pytest.raises(ValueError, match="outside the pool"):
        PrefetchLoader(pool, 8, start=100, stop=200)

    class Broken:
        count = 10

        def read(self, *a):
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(PrefetchLoader(Broken(), 4))

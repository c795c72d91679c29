"""Stochastic batch selection (Gumbel-top-k): the draw follows its weights, a seed reproduces
it, and a pool's draw equals the merge of its shards' draws, in the core and over the wire."""

import numpy as np
import pytest

from xgal.core.acquisition import AcquisitionConfig, Selection, criteria, gumbel_noise
from xgal.core.ranking import TopK, merge, scored_batch, select


def _batch(n, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), n).astype(np.float32)
    entropy = -(probs * np.log(probs)).sum(1).astype(np.float32)
    dice = rng.random(n).astype(np.float32)
    area = np.where(rng.random(n) < 0.9, 100.0, 0.0).astype(np.float32)
    ids = np.array([f"s{i:05d}" for i in range(n)])
    return ids, probs, entropy, dice, area


@pytest.mark.parametrize("selection", ["softmax", "power"])
@pytest.mark.parametrize("balance", ["none", "predicted"])
def test_a_draw_over_shards_equals_the_unsharded_draw_for_the_same_seed(selection, balance):
    ids, probs, ent, dice, area = _batch(900)
    cfg = AcquisitionConfig(selection=selection, beta=4.0, seed=11, balance=balance)
    whole = select(scored_batch(ids, probs, ent, dice, area, cfg)[0], 40, 3, cfg)
    parts = []
    for a, b in ((0, 250), (250, 256), (256, 900)):
        acc = TopK(40, 3, cfg.balance)
        for lo in range(a, b, 64):  # in engine-sized batches, as a scorer ranks its shard
            hi = min(lo + 64, b)
            acc.update(scored_batch(ids[lo:hi], probs[lo:hi], ent[lo:hi], dice[lo:hi], area[lo:hi], cfg)[0])
        parts.append(acc.result())
    assert merge(parts, 40, 3, cfg.balance).ids.tolist() == whole.ids.tolist()
    # ...and it is a draw, not the top-k: another seed draws another batch.
    other = select(
        scored_batch(
            ids,
            probs,
            ent,
            dice,
            area,
            AcquisitionConfig(selection=selection, beta=4.0, seed=12, balance=balance),
        )[0],
        40,
        3,
        cfg,
    )
    assert other.ids.tolist() != whole.ids.tolist()


@pytest.mark.parametrize(
    ("selection", "weights"),
    [
        ("softmax", lambda s, b: np.exp(b * s)),
        ("power", lambda s, b: s**b),
    ],
)
def test_the_first_pick_follows_the_weights(selection, weights):
    # k = 1 over three samples: over many seeds each is drawn with probability ∝ its weight.
    ids = np.array(["a", "b", "c"])
    score = np.array([0.2, 0.5, 0.9])
    beta = 2.0
    p = weights(score, beta) / weights(score, beta).sum()
    n = 4000
    counts = dict.fromkeys(ids.tolist(), 0)
    for seed in range(n):
        cfg = AcquisitionConfig(strategy="misalignment", selection=selection, beta=beta, seed=seed)
        crit = criteria(np.full((3, 2), 0.5), np.zeros(3), 1 - score, np.ones(3), ids, cfg)
        counts[str(ids[np.argmax(crit.score)])] += 1
    freq = np.array([counts[i] for i in ids.tolist()]) / n
    tolerance = 5 * np.sqrt(p * (1 - p) / n)  # five binomial standard errors
    assert np.all(np.abs(freq - p) < tolerance), (freq, p)


def test_top_selection_is_the_score_and_a_large_beta_approaches_it():
    ids, probs, ent, dice, area = _batch(300, seed=3)
    area[:] = 100  # no missing ROIs: no tied scores (M = 1), whose order the noise would decide
    plain = AcquisitionConfig()
    top = select(scored_batch(ids, probs, ent, dice, area, plain)[0], 20, 3, plain)
    cfg = AcquisitionConfig(selection="softmax", beta=1e7, seed=5)
    sharp = select(scored_batch(ids, probs, ent, dice, area, cfg)[0], 20, 3, cfg)
    assert sharp.ids.tolist() == top.ids.tolist()
    assert AcquisitionConfig().selection is Selection.TOP


def test_noise_is_per_id_seeded_and_independent_of_the_random_strategy():
    from xgal.core.acquisition import random_scores

    ids = np.array([f"x{i}" for i in range(2000)])
    g = gumbel_noise(ids, 3)
    np.testing.assert_array_equal(gumbel_noise(ids[500:], 3), g[500:])
    assert np.all(np.isfinite(g))
    assert abs(g.mean() - np.euler_gamma) < 0.1 and abs(g.std() - np.pi / np.sqrt(6)) < 0.1
    assert abs(np.corrcoef(g, random_scores(ids, 3))[0, 1]) < 0.1


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_beta_must_be_positive_and_finite(beta):
    with pytest.raises(ValueError, match="beta must be"):
        AcquisitionConfig(selection="softmax", beta=beta)


def test_selection_survives_the_wire():
    from xgal.core.wire import acquisition_from_proto, acquisition_to_proto

    for s in Selection:
        cfg = AcquisitionConfig(selection=s, beta=3.5, seed=9)
        assert acquisition_from_proto(acquisition_to_proto(cfg)) == cfg

"""Acquisition and ranking on hand-made values: criteria, λ, missing ROIs, ties, exclusion,
balancing, pool-level normalisation and exact shard merging."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xgal.core.acquisition import (
    AcquisitionConfig,
    criteria,
    normalise,
    random_scores,
    uncertainty,
)
from xgal.core.ranking import Ranked, TopK, merge, top

P = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
ENT = -(np.where(P > 0, P * np.log(np.where(P > 0, P, 1)), 0)).sum(1)
IDS = np.array(["d", "c", "b", "a"])


def test_uncertainty_kinds():
    np.testing.assert_allclose(uncertainty(P, ENT, "entropy"), [math.log(2), 0, ENT[2], math.log(3)])
    np.testing.assert_allclose(uncertainty(P, ENT, "entropy", over_log_k=True)[3], 1.0)
    np.testing.assert_allclose(uncertainty(P, ENT, "margin"), [1.0, 0.0, 0.7, 1.0])
    np.testing.assert_allclose(uncertainty(P, ENT, "least_confidence"), [0.5, 0.0, 0.4, 2 / 3])


def test_combined_score_uses_lambda():
    dice = np.array([0.2, 0.9, 0.5, 0.0])
    area = np.array([10.0, 10.0, 10.0, 10.0])
    c = criteria(P, ENT, dice, area, IDS, AcquisitionConfig(lam=0.3))
    np.testing.assert_allclose(c.m, 1 - dice)
    np.testing.assert_allclose(c.score, 0.3 * ENT + 0.7 * (1 - dice))
    only_u = criteria(P, ENT, dice, area, IDS, AcquisitionConfig(strategy="uncertainty"))
    np.testing.assert_allclose(only_u.score, ENT)
    only_m = criteria(P, ENT, dice, area, IDS, AcquisitionConfig(strategy="misalignment"))
    np.testing.assert_allclose(only_m.score, 1 - dice)


def test_missing_roi_policies():
    dice = np.array([0.2, 0.0, 0.5, 0.0])
    area = np.array([10.0, 0.0, 10.0, 0.0])
    maxed = criteria(P, ENT, dice, area, IDS, AcquisitionConfig(missing_roi="max"))
    assert maxed.m[1] == 1.0 and maxed.m[3] == 1.0 and maxed.keep.all()
    np.testing.assert_allclose(maxed.score[3], 0.3 * math.log(3) + 0.7)
    ignored = criteria(P, ENT, dice, area, IDS, AcquisitionConfig(missing_roi="ignore"))
    np.testing.assert_allclose(ignored.score[[1, 3]], ENT[[1, 3]])
    np.testing.assert_allclose(ignored.score[[0, 2]], maxed.score[[0, 2]])
    excluded = criteria(P, ENT, dice, area, IDS, AcquisitionConfig(missing_roi="exclude"))
    assert excluded.keep.tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": 1.5}, r"lam \(λ\) must be in \[0, 1\]"),
        ({"strategy": "best"}, "strategy must be one of random, uncertainty"),
        ({"missing_roi": "drop"}, "missing_roi must be one of max, ignore, exclude"),
        ({"balance": "true"}, "balance must be one of none, predicted, oracle"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AcquisitionConfig(**kwargs)


def _ranked(ids, scores, pred=None):
    n = len(ids)
    pred = np.zeros(n, dtype=np.int64) if pred is None else np.asarray(pred)
    return Ranked(
        ids=np.asarray(ids),
        u=np.zeros(n),
        m=np.zeros(n),
        score=np.asarray(scores, dtype=float),
        pred=pred,
        probs=np.zeros((n, 3), dtype=np.float32),
    )


def test_ties_broken_by_id():
    r = _ranked(["z", "b", "a", "y"], [0.5, 0.9, 0.5, 0.5])
    assert top(r, 3).ids.tolist() == ["b", "a", "y"]


def test_bounded_topk_equals_full_sort():
    rng = np.random.default_rng(0)
    ids = np.array([f"s{i:04d}" for i in range(1000)])
    scores = np.round(rng.random(1000), 2)  # many ties
    acc = TopK(25, 3)
    for lo in range(0, 1000, 64):
        acc.update(_ranked(ids[lo : lo + 64], scores[lo : lo + 64]))
    order = sorted(range(1000), key=lambda i: (-scores[i], ids[i]))[:25]
    assert acc.result().ids.tolist() == ids[order].tolist()


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.1, 0.5, 0.5, 0.9, float("nan"), 0.3]), min_size=1, max_size=60),
    k=st.integers(1, 12),
    batch=st.integers(1, 9),
)
def test_bounded_topk_equals_full_sort_with_ties_and_nan(scores, k, batch):
    """Rows below the k-th are passed over without a sort; ties (entering by ID) and NaN
    scores (ranked last) are not."""
    ids = np.array([f"s{i:03d}" for i in range(len(scores))])[::-1].copy()  # later rows win ties
    values = np.array(scores)
    acc = TopK(k, 3)
    for lo in range(0, len(scores), batch):
        acc.update(_ranked(ids[lo : lo + batch], values[lo : lo + batch]))
    assert acc.result().ids.tolist() == top(_ranked(ids, values), k).ids.tolist()


def test_the_pre_cut_keeps_numbers_when_most_scores_are_nan():
    """200 rows, two numbers and NaN (an FP16 overflow): the k best are the two numbers, then
    NaN rows by ID, through `top` and through a TopK fed in batches."""
    ids = np.array([f"s{i:03d}" for i in range(200)])
    scores = np.full(200, np.nan)
    scores[[50, 150]] = [0.9, 0.4]
    assert top(_ranked(ids, scores), 10).ids.tolist()[:3] == ["s050", "s150", "s000"]
    acc = TopK(10, 3)
    for lo in (0, 100):
        acc.update(_ranked(ids[lo : lo + 100], scores[lo : lo + 100]))
    assert acc.result().ids.tolist()[:3] == ["s050", "s150", "s000"] and len(acc.result()) == 10


def test_shard_merge_is_exact():
    rng = np.random.default_rng(1)
    ids = np.array([f"s{i:04d}" for i in range(300)])
    scores = np.round(rng.random(300), 1)
    pred = rng.integers(0, 3, 300)
    whole = merge([_ranked(ids, scores, pred)], 20, 3)
    shards = [
        top(_ranked(ids[a:b], scores[a:b], pred[a:b]), 20) for a, b in ((0, 100), (100, 250), (250, 300))
    ]
    assert merge(shards, 20, 3).ids.tolist() == whole.ids.tolist()
    whole_b = merge([_ranked(ids, scores, pred)], 20, 3, "predicted")
    acc = [TopK(20, 3, "predicted") for _ in range(3)]
    for t, (a, b) in zip(acc, ((0, 100), (100, 250), (250, 300)), strict=True):
        t.update(_ranked(ids[a:b], scores[a:b], pred[a:b]))
    parts = [Ranked.concat(t._best) for t in acc]
    assert merge(parts, 20, 3, "predicted").ids.tolist() == whole_b.ids.tolist()


def test_balance_by_predicted_class_and_fill():
    # Class 0 dominates the scores; balancing gives 2 places per class, class 2 has one
    # sample, so its spare place goes to the best remaining sample.
    ids = [f"s{i}" for i in range(9)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    pred = [0, 0, 0, 0, 1, 1, 1, 2, 0]
    acc = TopK(6, 3, "predicted")
    acc.update(_ranked(ids, scores, pred))
    got = acc.result()
    assert got.ids.tolist() == ["s0", "s1", "s2", "s4", "s5", "s7"]
    assert np.bincount(got.pred, minlength=3).tolist() == [3, 2, 1]


def test_normalisation():
    v = np.array([2.0, 4.0, 4.0, 10.0])
    np.testing.assert_allclose(normalise(v, "minmax"), [0, 0.25, 0.25, 1])
    np.testing.assert_allclose(normalise(v, "rank"), [0, 1.5 / 3, 1.5 / 3, 1])
    np.testing.assert_allclose(normalise(np.ones(3), "minmax"), 0)


def test_random_strategy_is_per_id_and_seeded():
    ids = np.array(["a", "b", "c", "d"])
    a = random_scores(ids, 0)
    assert np.all((0 <= a) & (a < 1)) and len(set(a)) == 4
    np.testing.assert_array_equal(random_scores(ids[2:], 0), a[2:])  # shard-invariant
    assert not np.array_equal(random_scores(ids, 1), a)


def test_acquisition_survives_the_wire_for_every_option():
    from xgal.core.acquisition import Balance, MissingRoi, Normalise, Strategy, Uncertainty
    from xgal.core.wire import acquisition_from_proto
    from xgal.core.wire import acquisition_to_proto as to_proto

    for s in Strategy:
        for u in Uncertainty:
            for m in MissingRoi:
                for n in Normalise:
                    for b in Balance:
                        cfg = AcquisitionConfig(
                            strategy=s,
                            uncertainty=u,
                            missing_roi=m,
                            normalise=n,
                            balance=b,
                            lam=0.25,
                            seed=7,
                            entropy_over_log_k=True,
                        )
                        assert acquisition_from_proto(to_proto(cfg)) == cfg
    assert acquisition_from_proto(to_proto(AcquisitionConfig()).__class__()) == AcquisitionConfig()

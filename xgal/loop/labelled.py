"""Which scans are labelled: the initial set, and the answered part of an annotator's answer."""

from __future__ import annotations

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool

INITIAL_BALANCES = ("none", "oracle")


def initial_selection(pool: Pool, n: int, seed: int, balance: str = "none") -> list[str]:
    """Exactly n, uniformly at random without reading any label (`balance="none"`: what a real
    archive allows), or stratified by the pool's true labels (`"oracle"`: the authors' setup, a
    simulation only), a class with fewer scans than its share giving them all and the others
    sharing the rest equally."""
    if balance not in INITIAL_BALANCES:
        raise InvalidArgument(f"initial balance must be one of {INITIAL_BALANCES}, got {balance!r}")
    rng = np.random.default_rng(seed)
    ids = pool.ids()
    if n > len(ids):
        raise InvalidArgument(f"initial set of {n} is larger than the pool ({len(ids)})")
    if balance == "none":
        return sorted(ids[rng.permutation(len(ids))[:n]].tolist())
    if not pool.has_labels:
        raise InvalidArgument(
            f"--initial-balance oracle reads the pool's true labels; {pool.path} has none (a real archive)"
        )
    labels = pool.labels()
    classes = np.unique(labels)
    avail = np.array([(labels == c).sum() for c in classes])
    quota = np.zeros(len(classes), dtype=np.int64)
    while quota.sum() < n:  # equal shares; what a small class cannot fill goes to the others
        open_ = np.flatnonzero(quota < avail)
        left = n - int(quota.sum())
        share = left // len(open_) + (np.arange(len(open_)) < left % len(open_))
        quota[open_] = np.minimum(avail[open_], quota[open_] + share)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, quota, strict=True)]
    return sorted(ids[np.concatenate(picks)].tolist())


def answered_part(
    ids: list[str], labels: np.ndarray, rois: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The answered part of an answer: an annotator marks a scan left unanswered with label -1
    (a round closed with what was answered); those are not labelled and may be asked again."""
    keep = labels >= 0
    if keep.all():
        return ids, labels, rois
    if not keep.any():
        raise InvalidArgument("the annotator answered none of the scans it was asked about")
    return [i for i, k in zip(ids, keep, strict=True) if k], labels[keep], rois[keep]

"""Ranking: a bounded top-k (memory independent of the pool size), class balancing, merging.

Order everywhere: higher score first, ties broken by ID (ascending), so results are exactly
reproducible and the top-k of a pool equals the top-k of its shards' top-k lists.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from xgal.scorer.acquisition import Balance


@dataclass
class Ranked:
    """Scored samples, column-wise. Rows are in rank order once `sorted()` is called.

    `group` is what balancing groups by (predicted class, or true label for `oracle`);
    `has_roi` lets a pool-level normalisation re-apply the missing-ROI policy.
    """

    ids: np.ndarray
    u: np.ndarray
    m: np.ndarray
    score: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    group: np.ndarray | None = None
    has_roi: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.group is None:
            self.group = self.pred.copy()
        if self.has_roi is None:
            self.has_roi = np.ones(self.ids.shape, dtype=bool)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def empty(cls, num_classes: int) -> Ranked:
        return cls(
            ids=np.zeros(0, dtype=str),
            u=np.zeros(0),
            m=np.zeros(0),
            score=np.zeros(0),
            pred=np.zeros(0, dtype=np.int64),
            probs=np.zeros((0, num_classes), dtype=np.float32),
        )

    def take(self, idx: np.ndarray) -> Ranked:
        return Ranked(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def sorted(self) -> Ranked:
        return self.take(np.lexsort((self.ids, -self.score)))

    @staticmethod
    def concat(parts: list[Ranked]) -> Ranked:
        return Ranked(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Ranked)})


def top(r: Ranked, k: int) -> Ranked:
    """The k best rows of `r`, in rank order."""
    if len(r) > 4 * k + 64:
        # Cheap pre-cut: keep everything scoring at least the k-th best (ties kept for the ID
        # tie-break), then sort only that.
        kth = np.partition(-r.score, k - 1)[k - 1]
        r = r.take(np.flatnonzero(-r.score <= kth))
    return r.sorted().take(np.arange(min(k, len(r))))


class TopK:
    """Keeps the best k rows seen so far (per group when balancing): memory O(k·groups)."""

    def __init__(self, k: int, num_classes: int, balance: Balance = Balance.NONE) -> None:
        if k < 1:
            raise ValueError(f"top-k must be at least 1, got {k}")
        self.k = k
        self.num_classes = num_classes
        self.balance = Balance(balance)
        groups = 1 if self.balance is Balance.NONE else num_classes
        self._best: list[Ranked] = [Ranked.empty(num_classes) for _ in range(groups)]

    def update(self, batch: Ranked) -> None:
        if self.balance is Balance.NONE:
            self._best[0] = top(Ranked.concat([self._best[0], batch]), self.k)
            return
        for g in range(self.num_classes):
            sel = np.flatnonzero(batch.group == g)
            if sel.size:
                self._best[g] = top(Ranked.concat([self._best[g], batch.take(sel)]), self.k)

    def result(self) -> Ranked:
        if self.balance is Balance.NONE:
            return self._best[0]
        return balanced_select(Ranked.concat(self._best), self.k, self.num_classes)


def balanced_select(r: Ranked, k: int, num_classes: int) -> Ranked:
    """k/K per group (the first k mod K groups get one more), then the best of the rest fill
    the places a small group could not."""
    quota = [k // num_classes + (1 if g < k % num_classes else 0) for g in range(num_classes)]
    r = r.sorted()
    chosen = np.zeros(len(r), dtype=bool)
    for g in range(num_classes):
        idx = np.flatnonzero(r.group == g)[: quota[g]]
        chosen[idx] = True
    short = k - int(chosen.sum())
    if short > 0:
        chosen[np.flatnonzero(~chosen)[:short]] = True
    return r.take(np.flatnonzero(chosen)).sorted()


def merge(parts: list[Ranked], k: int, num_classes: int, balance: Balance = Balance.NONE) -> Ranked:
    """Merge shards' top-k lists into the pool's top-k (exact for pointwise scores)."""
    acc = TopK(k, num_classes, balance)
    for p in parts:
        acc.update(p)
    return acc.result()

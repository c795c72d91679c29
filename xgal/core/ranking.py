"""Ranking: a scored batch, a bounded top-k (memory independent of the pool size), class
balancing, exact merging and the one pool-level rescoring.

Order everywhere: higher score first, ties broken by ID (ascending), so results are exactly
reproducible and the top-k of a pool equals the top-k of its shards' top-k lists.

The scorer's pipeline and its ScoreStream build their rows with `scored_batch`, and every path
(those, the client's and Ray's merges) ranks through `TopK`/`merge`, `from_shards` and
`rescore`, so every path applies the same exclusions and the same formula.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from xgal.core.acquisition import AcquisitionConfig, Balance, Diversity, combine, criteria
from xgal.core.contract import ROW_ROI_SOURCES
from xgal.core.diversity import spread, typical
from xgal.core.errors import InvalidArgument
from xgal.core.samples import SkippedSample


@dataclass
class Ranked:
    """Scored samples, column-wise. Rows are in rank order once `sorted()` is called.

    `group` is what balancing groups by (predicted class, or true label for `oracle`);
    `has_roi` and `flat` (the CAM carries no evidence) let a pool-level normalisation re-apply
    the missing-ROI and flat-CAM policies.
    """

    ids: np.ndarray
    u: np.ndarray
    m: np.ndarray
    score: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    group: np.ndarray | None = None
    has_roi: np.ndarray | None = None
    flat: np.ndarray | None = None
    # What M was measured against, as codes into ROW_ROI_SOURCES (none, expert, body, learned).
    roi_source: np.ndarray | None = None
    # [N, D] pooled target-layer activations, only when the diversity step needs them ([N, 0]).
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.group is None:
            self.group = self.pred.copy()
        if self.has_roi is None:
            self.has_roi = np.ones(self.ids.shape, dtype=bool)
        if self.flat is None:
            self.flat = np.zeros(self.ids.shape, dtype=bool)
        if self.roi_source is None:
            self.roi_source = self.has_roi.astype(np.uint8)  # 1 = expert
        if self.embedding is None:
            self.embedding = np.zeros((len(self.ids), 0), dtype=np.float32)

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
        # An empty part's embedding is [0, 0] whatever the others' width.
        parts = [p for p in parts if len(p)] or parts[:1]
        return Ranked(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Ranked)})


def top(r: Ranked, k: int) -> Ranked:
    """The k best rows of `r`, in rank order."""
    if len(r) > 4 * k + 64:
        # Cheap pre-cut: keep everything scoring at least the k-th best (ties kept for the ID
        # tie-break), then sort only that. NaN ranks last, as in `sorted`: with fewer than k
        # numbers there is no cut.
        neg = np.where(np.isnan(r.score), np.inf, -r.score)
        kth = np.partition(neg, k - 1)[k - 1]
        if np.isfinite(kth):
            r = r.take(np.flatnonzero(neg <= kth))
    return r.sorted().take(np.arange(min(k, len(r))))


class TopK:
    """Keeps the best k rows seen so far (per group when balancing): memory O(k·groups)."""

    def __init__(self, k: int, num_classes: int, balance: Balance = Balance.NONE) -> None:
        if k < 1:
            raise InvalidArgument(f"top-k must be at least 1, got {k}")
        self.k = k
        self.num_classes = num_classes
        self.balance = Balance(balance)
        groups = 1 if self.balance is Balance.NONE else num_classes
        self._best: list[Ranked] = [Ranked.empty(num_classes) for _ in range(groups)]

    def update(self, batch: Ranked) -> None:
        if self.balance is Balance.NONE:
            self._best[0] = self._merged(self._best[0], batch)
            return
        for g in range(self.num_classes):
            sel = np.flatnonzero(batch.group == g)
            if sel.size:
                self._best[g] = self._merged(self._best[g], batch.take(sel))

    def _merged(self, best: Ranked, batch: Ranked) -> Ranked:
        """The k best of `best` (sorted) and `batch`. Once k are kept, a row scoring below the
        k-th cannot enter (a tie can, by its ID), so only the others are sorted in: most batches
        of a long pass bring none (NaN rows are kept and sorted last, as `sorted` does)."""
        if len(best) == self.k:
            sel = np.flatnonzero(~(batch.score < best.score[-1]))
            if sel.size == 0:
                return best
            if sel.size < len(batch):
                batch = batch.take(sel)
        return top(Ranked.concat([best, batch]), self.k)

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


def scored_batch(
    ids: np.ndarray,
    probs: np.ndarray,
    entropy: np.ndarray,
    dice: np.ndarray,
    roi_area: np.ndarray,
    config: AcquisitionConfig,
    *,
    labels: np.ndarray | None = None,
    exclude_ids: np.ndarray | None = None,
    cam_range: np.ndarray | None = None,
    roi_source: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
    view_probs: np.ndarray | None = None,
) -> tuple[Ranked, np.ndarray]:
    """One engine batch as ranked rows: U, M and the score per sample, without the samples the
    missing-ROI policy or `exclude_ids` (sorted, e.g. the labelled set) leave out; and the batch
    rows it kept (to take the same rows of the CAMs). `labels` replace the predicted class as
    the balancing group (`oracle`); `cam_range` (each CAM's max − min) marks the flat maps;
    `roi_source` what each ROI given was (ROW_ROI_SOURCES codes); `embedding` (the graph's,
    [N, D]) is kept for a diversity step; `view_probs` ([N, V, K]) feed the uncertainties over
    views."""
    crit = criteria(probs, entropy, dice, roi_area, ids, config, cam_range, view_probs)
    idx = kept(ids, crit.keep, exclude_ids)
    pred = probs.argmax(1).astype(np.int64)
    group = labels if labels is not None else pred
    source = crit.has_roi.astype(np.uint8) if roi_source is None else roi_source
    source = np.where(crit.has_roi, source, 0).astype(np.uint8)  # no ROI: "none", whoever gave it
    return Ranked(
        ids[idx],
        crit.u[idx],
        crit.m[idx],
        crit.score[idx],
        pred[idx],
        probs[idx],
        group[idx],
        crit.has_roi[idx],
        crit.flat[idx],
        source[idx],
        None if embedding is None else embedding[idx],
    ), idx


def kept(ids: np.ndarray, keep: np.ndarray, exclude_ids: np.ndarray | None = None) -> np.ndarray:
    """Indices of the rows `scored_batch` keeps: `keep` (the missing-ROI policy's mask, see
    `criteria`) and not in `exclude_ids`."""
    if exclude_ids is not None and exclude_ids.size:
        keep = keep & ~np.isin(ids, exclude_ids)
    return np.flatnonzero(keep)


def exclusion_set(ids: Iterable[str]) -> np.ndarray:
    """IDs to leave out, as the sorted array `scored_batch` looks them up in."""
    return np.array(sorted(set(ids)), dtype=str)


def rescore(everything: Ranked, config: AcquisitionConfig) -> Ranked:
    """Apply a pool-level normalisation: the score from every sample's U and M (in place)."""
    if len(everything):
        assert everything.has_roi is not None and everything.flat is not None
        everything.score = combine(
            everything.u, everything.m, everything.has_roi, everything.ids, config, everything.flat
        )
    return everything


def select(everything: Ranked, k: int, num_classes: int, config: AcquisitionConfig) -> Ranked:
    """The selection of k from a whole pool's rows, rescored first when the score is not
    pointwise."""
    if not config.pointwise:
        rescore(everything, config)
    return choose(merge([everything], config.candidate_count(k), num_classes, config.balance), k, config)


def from_shards(
    tops: list[Ranked], everything: Ranked | None, k: int, num_classes: int, config: AcquisitionConfig
) -> Ranked:
    """The pool's selection from its shards' results (a gRPC client's shards, Ray's blocks):
    pointwise scores merge exactly from each shard's candidates, then the choice is made once;
    a pool-level normalisation needs `everything` (every shard's rows) and ranks it here."""
    if config.pointwise:
        return choose(merge(tops, config.candidate_count(k), num_classes, config.balance), k, config)
    if everything is None:
        raise ValueError("a pool-level normalisation ranks every score: the shards' rows are needed")
    return select(everything, k, num_classes, config)


def choose(candidates: Ranked, k: int, config: AcquisitionConfig) -> Ranked:
    """The k selected from the best `config.candidate_count(k)` rows (in rank order), in the
    order chosen: the first k, or the diversity step's choice over their embeddings. Applied
    once, by whoever holds every shard's candidates (the client, or an in-process scorer)."""
    if config.diversity is Diversity.NONE or len(candidates) <= k:
        return candidates.take(np.arange(min(k, len(candidates))))
    assert candidates.embedding is not None
    if config.diversity is Diversity.SPREAD:
        idx = spread(candidates.embedding, k)
    else:
        idx = typical(candidates.embedding, k, config.seed)
    return candidates.take(idx)


@dataclass
class ScoreResult:
    top: Ranked  # the selection, in rank order
    all: Ranked | None  # every scored sample (pool order) when asked for
    scored: int  # samples run through the engine (not the skipped ones)
    excluded: int  # labelled IDs and samples dropped by the missing-ROI policy
    seconds: float
    class_names: tuple[str, ...]
    # Bad samples left unscored under `OnBadSample.SKIP`, in pool order: listed, never dropped
    # silently (they are in neither `scored` nor `excluded`).
    skipped: list[SkippedSample] = field(default_factory=list)
    # Scored samples with an ROI (the expert's, the body's or the learned): the misalignment M measures
    # something only there; where none has one, the ranking is the uncertainty's.
    with_roi: int = 0

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def misalignment_note(self, config: AcquisitionConfig) -> str | None:
        """What to tell a user when M could not decide the ranking (None: it could)."""
        if config.strategy not in ("xgal", "misalignment") or not self.scored:
            return None
        if self.with_roi == 0 and config.roi.learned:
            return (
                f"the ROI head found no ROI in any of the {self.scored} scored samples, so M = 1 for "
                "all and the ranking is decided by uncertainty alone; it learns from the ROIs drawn "
                "on labelled scans: draw ROIs when you label (--masks, or Label Studio's brush)"
            )
        if self.with_roi == 0:
            return (
                f"none of the {self.scored} scored samples has an ROI, so M = 1 for all and the "
                "ranking is decided by uncertainty alone; give the pool expert ROIs, or measure M "
                "against the body (--roi body)"
            )
        if self.with_roi < 0.1 * self.scored:
            return (
                f"only {self.with_roi} of {self.scored} scored samples have an ROI: elsewhere M is "
                f"set by --missing-roi ({config.missing_roi.value}); for samples without an ROI by "
                "design (negatives) use --missing-roi ignore, so M = 1 does not push them up"
            )
        return None


def rows(r: Ranked, class_names: tuple[str, ...], ranked: bool = True) -> list[dict[str, Any]]:
    """Rows as plain dicts (for JSON, CSV and tables), each with its rank: its place in `r` when
    `ranked` (a selection, in order), else its place by score (every scored sample, in pool
    order: higher score first, ties by ID)."""
    if ranked:
        place = np.arange(1, len(r) + 1)
    else:
        place = np.empty(len(r), dtype=np.int64)
        place[np.lexsort((r.ids, -r.score))] = np.arange(1, len(r) + 1)
    out = []
    for i in range(len(r)):
        pred = int(r.pred[i])
        row: dict[str, Any] = {
            "id": str(r.ids[i]),
            "score": float(r.score[i]),
            "uncertainty": float(r.u[i]),
            "misalignment": float(r.m[i]),
            "has_roi": bool(r.has_roi[i]) if r.has_roi is not None else True,
            "flat_cam": bool(r.flat[i]) if r.flat is not None else False,
            "roi": ROW_ROI_SOURCES[int(r.roi_source[i])] if r.roi_source is not None else "expert",
            "pred": pred,
            "pred_name": class_names[pred] if pred < len(class_names) else str(pred),
            "probs": [float(p) for p in r.probs[i]],
        }
        out.append({"rank": int(place[i]), **row})
    return out


def ranking_agreement(
    ref_ids: np.ndarray, ref_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> dict[str, float]:
    """Top-k overlap (|A ∩ B| / k) of two rankings of the same samples and the Spearman
    correlation of their scores (how far a reduced-precision graph moved a pool's ranking)."""
    if k < 1:
        raise InvalidArgument(f"k must be at least 1, got {k}")
    if sorted(ref_ids.tolist()) != sorted(ids.tolist()):
        raise InvalidArgument("the two rankings must rank the same samples")
    order_ref = ref_ids[np.lexsort((ref_ids, -ref_scores))][:k]
    order = ids[np.lexsort((ids, -scores))][:k]
    pos = {s: i for i, s in enumerate(ids.tolist())}
    aligned = scores[[pos[s] for s in ref_ids.tolist()]]
    rank_a = np.argsort(np.argsort(ref_scores, kind="stable"), kind="stable")
    rank_b = np.argsort(np.argsort(aligned, kind="stable"), kind="stable")
    rho = float(np.corrcoef(rank_a, rank_b)[0, 1]) if len(ids) > 1 else 1.0
    return {"topk_overlap": len(set(order_ref.tolist()) & set(order.tolist())) / k, "spearman": rho}

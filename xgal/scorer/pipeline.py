"""Score a pool in process: pool -> loader -> engine -> acquisition -> ranking.

`score_pool` is what the CLI and the gRPC service call; it keeps only a bounded top-k unless
every score is wanted or a pool-level normalisation needs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from xgal.pool.format import Pool, PoolFormatError
from xgal.scorer.acquisition import AcquisitionConfig, Balance, Criteria, combine, criteria
from xgal.scorer.engines.base import Engine
from xgal.scorer.loader import PrefetchLoader
from xgal.scorer.ranking import Ranked, TopK


@dataclass
class ScoreResult:
    top: Ranked  # the selection, in rank order
    all: Ranked | None  # every scored sample (pool order) when asked for
    scored: int  # samples run through the engine
    excluded: int  # labelled IDs and samples dropped by the missing-ROI policy
    seconds: float
    class_names: tuple[str, ...]

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def check_compatible(engine: Engine, pool: Pool) -> None:
    info = engine.info
    if tuple(pool.image_shape) != tuple(info.input_shape) or pool.pixel_dtype != info.pixel_dtype:
        raise PoolFormatError(
            f"pool {pool.path} holds {pool.pixel_dtype}{list(pool.image_shape)} images but the "
            f"model expects {info.pixel_dtype}{list(info.input_shape)}"
        )


def score_pool(
    engine: Engine,
    pool: Pool,
    config: AcquisitionConfig,
    top_k: int,
    *,
    exclude_ids: Iterable[str] = (),
    return_all: bool = False,
    batch_size: int = 64,
    start: int = 0,
    stop: int | None = None,
    prefetch: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Rank samples [start, stop) of `pool`. `progress(done, total)` is called after each
    batch; it may raise to cancel the run."""
    check_compatible(engine, pool)
    if config.balance is Balance.ORACLE and not pool.has_labels:
        raise PoolFormatError(f"balance 'oracle' needs a pool with labels; {pool.path} has none")
    k = engine.info.num_classes
    loader = PrefetchLoader(
        pool,
        batch_size,
        start=start,
        stop=stop,
        prefetch=prefetch,
        with_labels=config.balance is Balance.ORACLE,
    )
    total = loader.stop - loader.start
    excluded_set = np.array(sorted(set(exclude_ids)), dtype=str)
    best = TopK(top_k, k, config.balance)
    kept: list[Ranked] = []
    need_all = return_all or not config.pointwise
    done = excluded = 0
    t0 = time.perf_counter()
    for batch in loader:
        s = engine.run(batch.images, batch.rois)
        crit = criteria(s.probs, s.entropy, s.dice, s.roi_area, batch.ids, config)
        keep = crit.keep & ~np.isin(batch.ids, excluded_set)
        idx = np.flatnonzero(keep)
        pred = s.probs.argmax(1).astype(np.int64)
        group = batch.labels if batch.labels is not None else pred
        ranked = Ranked(
            batch.ids[idx],
            crit.u[idx],
            crit.m[idx],
            crit.score[idx],
            pred[idx],
            s.probs[idx],
            group[idx],
            crit.has_roi[idx],
        )
        if config.pointwise:
            best.update(ranked)
        if need_all:
            kept.append(ranked)
        done += len(batch)
        excluded += len(batch) - idx.size
        if progress is not None:
            progress(done, total)
    everything = None
    if need_all:
        everything = Ranked.concat(kept) if kept else Ranked.empty(k)
        if not config.pointwise and len(everything):
            # The pool-level normalisation needs every sample's U and M: rescore, then rank.
            assert everything.has_roi is not None
            everything.score = combine(
                Criteria(
                    everything.u, everything.m, everything.score, everything.has_roi, everything.has_roi
                ),
                everything.ids,
                config,
            )
            best.update(everything)
    return ScoreResult(
        top=best.result(),
        all=everything if return_all else None,
        scored=done,
        excluded=excluded,
        seconds=time.perf_counter() - t0,
        class_names=engine.info.class_names,
    )

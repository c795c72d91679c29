"""Score a pool in process: pool -> loader -> engine -> acquisition -> ranking.

`score_pool` is what the CLI and the gRPC service call; it keeps only a bounded top-k unless
every score is wanted or a pool-level normalisation needs them. Bad samples (ROI values other
than 0 and 1, NaN/Inf pixels) never reach the engine: they fail the run, naming the sample, or
with `OnBadSample.SKIP` are left out and listed in the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from xgal.core.acquisition import AcquisitionConfig, Balance
from xgal.core.ranking import Ranked, ScoreResult, TopK, choose, exclusion_set, rescore, scored_batch
from xgal.core.samples import OnBadSample, SkippedSample
from xgal.pool.format import Pool, PoolFormatError
from xgal.scorer.engines.base import Engine
from xgal.scorer.loader import Batch, PrefetchLoader
from xgal.scorer.roi_choice import score_against_roi

__all__ = ["ScoreResult", "check_compatible", "score_pool"]


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
    on_bad_sample: OnBadSample | str = OnBadSample.FAIL,
    verify: bool = False,
    candidates_only: bool = False,
) -> ScoreResult:
    """Rank samples [start, stop) of `pool`. `progress(done, total)` is called after each
    batch; it may raise to cancel the run. `on_bad_sample`: what to do with a sample that
    must not be scored (fail naming it, or skip and list it). `verify`: check the shards'
    checksums, IDs and labels first (`Pool.verify`), for callers that have not.
    With a diversity step the result's `top` is the k it chooses among the best
    `config.candidate_count(k)`; `candidates_only` returns those candidates (with their
    embeddings) instead, for a caller that merges shards before choosing (the service)."""
    policy = OnBadSample.parse(on_bad_sample)
    check_compatible(engine, pool)
    pool.check_not_empty()
    if verify:
        pool.verify(start, pool.count if stop is None else stop, samples=False)
    if config.balance is Balance.ORACLE and not pool.has_labels:
        raise PoolFormatError(f"balance 'oracle' needs a pool with labels; {pool.path} has none")
    k = engine.info.num_classes
    best = TopK(config.candidate_count(top_k), k, config.balance)
    loader = PrefetchLoader(
        pool,
        batch_size,
        start=start,
        stop=stop,
        prefetch=prefetch,
        with_labels=config.balance is Balance.ORACLE,
    )
    total = loader.stop - loader.start
    excluded_ids = exclusion_set(exclude_ids)
    kept: list[Ranked] = []
    need_all = return_all or not config.pointwise
    done = scored = kept_count = with_roi = 0
    skipped: list[SkippedSample] = []
    t0 = time.perf_counter()
    for read in loader:
        done += len(read)
        batch = _apply_policy(pool, read, policy, skipped) if read.problems else read
        if len(batch):
            s, roi_source = score_against_roi(
                engine,
                batch.images,
                batch.rois,
                config.roi,
                want_embedding=config.needs_embedding,
                want_views=config.uncertainty.needs_views,
            )
            ranked = scored_batch(
                batch.ids,
                s.probs,
                s.entropy,
                s.dice,
                s.roi_area,
                config,
                labels=batch.labels,
                exclude_ids=excluded_ids,
                cam_range=s.cam_range,
                roi_source=roi_source,
                embedding=s.embedding,
                view_probs=s.view_probs,
            )[0]
            if config.pointwise:
                best.update(ranked)
            if need_all:
                kept.append(ranked)
            scored += len(batch)
            kept_count += len(ranked)
            with_roi += int((s.roi_area > 0).sum())
        if progress is not None:
            progress(done, total)
    everything = None
    if need_all:
        everything = Ranked.concat(kept) if kept else Ranked.empty(k)
        if not config.pointwise:
            best.update(rescore(everything, config))
    return ScoreResult(
        top=best.result() if candidates_only else choose(best.result(), top_k, config),
        all=everything if return_all else None,
        scored=scored,
        excluded=scored - kept_count,
        seconds=time.perf_counter() - t0,
        class_names=engine.info.class_names,
        skipped=skipped,
        with_roi=with_roi,
    )


def _apply_policy(pool: Pool, batch: Batch, policy: OnBadSample, skipped: list[SkippedSample]) -> Batch:
    """Apply the policy to a batch that holds bad samples: raise naming the first, or list
    them all in `skipped` and return the rest of the batch."""
    if policy is OnBadSample.FAIL:
        row, reason = batch.problems[0]
        bad = pool.bad_sample(batch.start + row, str(batch.ids[row]), reason)
        raise PoolFormatError(
            f"{bad}; score with on_bad_sample 'skip' to leave such samples out (they are listed "
            "in the result)"
        )
    skipped.extend(SkippedSample(str(batch.ids[row]), reason) for row, reason in batch.problems)
    return batch.without_problems()

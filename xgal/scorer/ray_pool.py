"""Pool scoring on Ray: the scoring graph in a pool of Ray actors, over blocks of the pool.

For a pool larger than the replicas one trainer talks to, Ray places the work: each actor holds
one ONNX Runtime session (the graph's bytes come from Ray's object store, so a cluster's nodes
need no copy of the model), takes blocks of the pool's rows and scores them with the in-process
pipeline (`score_pool`), reading the pool where it lies (a path every node sees: a shared or
network file system, as Ray's own data readers assume). A block returns its candidates (pointwise
scores) or every row (a pool-level normalisation); the driver merges them exactly as the gRPC
client merges shards (`ranking.from_shards`), so the result equals in-process scoring. An actor
that dies is restarted and its blocks are tried again by Ray (`max_restarts`, `max_task_retries`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import UserError
from xgal.core.ranking import Ranked, ScoreResult, from_shards
from xgal.core.samples import OnBadSample

LOCAL = "local"  # start a Ray instance on this machine for the run, and stop it after


@dataclass(frozen=True)
class RayOptions:
    address: str = LOCAL  # LOCAL, "auto" (the cluster this machine belongs to) or ray://host:10001
    actors: int = 2
    threads_per_actor: int = 1  # ONNX Runtime intra-op threads, and the CPUs Ray reserves per actor
    gpus_per_actor: float = 0.0  # > 0: the CUDA provider, on the GPU Ray assigns
    block_size: int = 2048  # pool rows per task: small enough to spread, large enough to batch
    batch_size: int = 64  # images per engine call inside a block
    retries: int = 2  # an actor restarted, and its tasks tried again, this many times


class BlockScorer:
    """One Ray actor: one ONNX Runtime session, scoring blocks [start, stop) of a pool."""

    def __init__(self, graph: bytes, threads: int, gpu: bool) -> None:
        from xgal.scorer.engines import OnnxRuntimeEngine

        providers = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.engine = OnnxRuntimeEngine(graph, providers=providers, intra_op_threads=threads)

    def score(
        self,
        pool: str,
        start: int,
        stop: int,
        config: AcquisitionConfig,
        top_k: int,
        exclude_ids: list[str],
        need_all: bool,
        on_bad_sample: str,
        batch_size: int,
    ) -> ScoreResult:
        from xgal.pool.format import Pool
        from xgal.scorer.pipeline import score_pool

        return score_pool(
            self.engine,
            Pool(pool),
            config,
            top_k,
            exclude_ids=exclude_ids,
            return_all=need_all,
            start=start,
            stop=stop,
            batch_size=batch_size,
            on_bad_sample=on_bad_sample,
            candidates_only=True,
        )


def blocks(count: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) spans of at most `size` rows covering `count` rows (one empty span for an
    empty pool, so that the pipeline reports it)."""
    return [(a, min(a + size, count)) for a in range(0, count, size)] or [(0, 0)]


def score_pool_ray(
    model: str | Path,
    pool: str | Path,
    config: AcquisitionConfig,
    top_k: int,
    *,
    options: RayOptions | None = None,
    exclude_ids: Iterable[str] = (),
    return_all: bool = False,
    on_bad_sample: OnBadSample | str = OnBadSample.FAIL,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Rank `pool` with the scoring graph `model` on Ray (see the module doc); the same result
    as `pipeline.score_pool` in one process. `progress(done, total)` after each block."""
    try:
        import ray
    except ImportError:
        raise UserError("scoring on Ray needs Ray: pip install 'xgal[ray]'") from None

    from xgal.pool.format import Pool

    opts = options or RayOptions()
    if opts.actors < 1 or opts.block_size < 1 or opts.threads_per_actor < 1:
        raise ValueError(f"actors, block size and threads per actor must be at least 1: {opts}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    graph = Path(model).read_bytes()
    data = Pool(pool)  # checks the pool here first: a bad path fails before a cluster starts
    spans = blocks(data.count, opts.block_size)
    need_all = return_all or not config.pointwise
    policy = OnBadSample.parse(on_bad_sample).value
    started = _connect(opts)
    t0 = time.perf_counter()
    try:
        actor = ray.remote(
            num_cpus=opts.threads_per_actor,
            num_gpus=opts.gpus_per_actor,
            max_restarts=opts.retries,
            max_task_retries=opts.retries,
        )(BlockScorer)
        graph_ref, exclude_ref = ray.put(graph), ray.put(list(exclude_ids))
        actors = [
            actor.remote(graph_ref, opts.threads_per_actor, opts.gpus_per_actor > 0)
            for _ in range(min(opts.actors, len(spans)))
        ]
        refs = {
            actors[i % len(actors)].score.remote(
                str(data.path.resolve()), a, b, config, top_k, exclude_ref, need_all, policy, opts.batch_size
            ): (a, b)
            for i, (a, b) in enumerate(spans)
        }
        parts = _gather(refs, data.count, progress)
    finally:
        if started:
            ray.shutdown()
    ordered = [parts[span] for span in sorted(parts)]
    k = len(ordered[0].class_names)
    everything = Ranked.concat([p.all for p in ordered if p.all is not None]) if need_all else None
    return ScoreResult(
        top=from_shards([p.top for p in ordered], everything, top_k, k, config),
        all=everything if return_all else None,
        scored=sum(p.scored for p in ordered),
        excluded=sum(p.excluded for p in ordered),
        seconds=time.perf_counter() - t0,
        class_names=ordered[0].class_names,
        skipped=[s for p in ordered for s in p.skipped],  # blocks in pool order: pool order
        with_roi=sum(p.with_roi for p in ordered),
    )


def _connect(opts: RayOptions) -> bool:
    """Join or start Ray; True when this call started it (and so stops it)."""
    import ray

    if ray.is_initialized():
        return False
    if opts.address == LOCAL:
        cpus = opts.actors * opts.threads_per_actor
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=opts.address, log_to_driver=False, configure_logging=False)
    return True


def _gather(
    refs: dict[Any, tuple[int, int]], total: int, progress: Callable[[int, int], None] | None
) -> dict[tuple[int, int], ScoreResult]:
    import ray
    from ray.exceptions import RayTaskError

    parts: dict[tuple[int, int], ScoreResult] = {}
    waiting, done = list(refs), 0
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        try:
            result = ray.get(ready[0])
        except RayTaskError as e:  # the block's own error (a bad sample, a damaged shard), as raised
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, Exception) else e) from None
        span = refs[ready[0]]
        parts[span] = result
        done += span[1] - span[0]
        if progress is not None:
            progress(done, total)
    return parts

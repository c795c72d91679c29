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

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import InvalidArgument, UserError
from xgal.core.ranking import Ranked, ScoreResult, TopK, choose, from_shards
from xgal.core.samples import OnBadSample

LOCAL = "local"  # start a Ray instance on this machine for the run, and stop it after


log = logging.getLogger(__name__)


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
        verify: bool,
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
            verify=verify,
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
    verify: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Rank `pool` with the scoring graph `model` on Ray (see the module doc); the same result
    as `pipeline.score_pool` in one process. `verify`: each block checks the checksums of the
    shards it reads first (spread over the actors, as replicas do). `progress(done, total)`
    after each block. A block's error (a bad sample, a damaged shard) is raised as in process:
    the first in pool order; the later blocks are cancelled."""
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
    where, policy = str(data.path.resolve()), OnBadSample.parse(on_bad_sample).value
    started = _connect(opts)
    actors: list[Any] = []
    t0 = time.perf_counter()
    try:
        n_actors = min(opts.actors, len(spans))
        _check_resources(opts, n_actors)
        actor = ray.remote(
            num_cpus=opts.threads_per_actor,
            num_gpus=opts.gpus_per_actor,
            max_restarts=opts.retries,
            max_task_retries=opts.retries,
        )(BlockScorer)
        graph_ref, exclude_ref = ray.put(graph), ray.put(list(exclude_ids))
        gpu = opts.gpus_per_actor > 0
        actors = [actor.remote(graph_ref, opts.threads_per_actor, gpu) for _ in range(n_actors)]
        refs = {}
        for i, (a, b) in enumerate(spans):
            call = actors[i % n_actors].score.remote(
                where, a, b, config, top_k, exclude_ref, need_all, policy, opts.batch_size, verify
            )
            refs[call] = (a, b)
        merged = _Merge(config, top_k, need_all)
        _gather(refs, data.count, merged.add, progress)
    finally:
        for a in actors:  # a joined cluster outlives the run: its actors must not
            ray.kill(a)
        if started:
            ray.shutdown()
    return merged.result(return_all, time.perf_counter() - t0)


class _Merge:
    """The blocks' results folded as they arrive: pointwise candidates into one bounded top-k
    (the driver holds one block's result and the pool's candidates, never every block's), every
    row only when a pool-level normalisation or `return_all` needs them. Equal to
    `ranking.from_shards` over all blocks at once."""

    def __init__(self, config: AcquisitionConfig, top_k: int, need_all: bool) -> None:
        self.config, self.top_k, self.need_all = config, top_k, need_all
        self.best: TopK | None = None
        self.rows: dict[tuple[int, int], Ranked] = {}
        self.skipped: dict[tuple[int, int], list] = {}
        self.scored = self.excluded = self.with_roi = 0
        self.class_names: tuple[str, ...] = ()

    def add(self, span: tuple[int, int], part: ScoreResult) -> None:
        k = len(part.class_names)
        if self.best is None:
            self.best = TopK(self.config.candidate_count(self.top_k), k, self.config.balance)
            self.class_names = part.class_names
        if self.config.pointwise:
            self.best.update(part.top)
        if self.need_all and part.all is not None:
            self.rows[span] = part.all
        self.skipped[span] = part.skipped
        self.scored += part.scored
        self.excluded += part.excluded
        self.with_roi += part.with_roi

    def result(self, return_all: bool, seconds: float) -> ScoreResult:
        assert self.best is not None
        k = len(self.class_names)
        everything = Ranked.concat([self.rows[s] for s in sorted(self.rows)]) if self.need_all else None
        top = (
            choose(self.best.result(), self.top_k, self.config)
            if self.config.pointwise
            else from_shards([], everything, self.top_k, k, self.config)
        )
        return ScoreResult(
            top=top,
            all=everything if return_all else None,
            scored=self.scored,
            excluded=self.excluded,
            seconds=seconds,
            class_names=self.class_names,
            skipped=[s for span in sorted(self.skipped) for s in self.skipped[span]],  # pool order
            with_roi=self.with_roi,
        )


# A local Ray head's start, per try: the seconds its GCS may take to publish its port (Ray's own
# 30 s elapsed on a busy 2-core machine). Under the test suite's load on CI's 2 cores a head now
# and then never comes up at all (a GCS that never started; a raylet not registered within Ray's
# fixed 30 s) while a head started right after does, so a failed head is cleared away and another
# started. RAY_gcs_server_port_wait_time_s, when set, is every try's wait.
GCS_START_WAITS_S = (60, 120, 120)
_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
_START_TIMED_OUT = ("Timed out waiting for file", "timed out during startup")  # Ray's two messages


class RayStartError(UserError):
    """A local Ray head did not start in any of its tries."""


def ray_processes() -> list[Any]:
    """This process's descendants that run Ray's own programs (GCS, raylet, agents, workers)."""
    import psutil
    import ray

    marker = os.path.dirname(ray.__file__) + os.sep
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(marker in arg for arg in child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return found


def _clear_failed_head() -> None:
    """Stop what a head that failed to start left running: `ray.shutdown()` knows no node then."""
    import psutil
    import ray

    ray.shutdown()
    left = ray_processes()
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=10)


def start_local(num_cpus: int, *, gcs_waits: Iterable[int] = GCS_START_WAITS_S, **kwargs: object) -> None:
    """Start a local Ray cluster of `num_cpus` quietly; a head that has not come up within a
    try (`gcs_waits`: the GCS's seconds per try) is cleared away and a new one started."""
    import ray

    user_wait = os.environ.get(_WAIT_ENV)
    waits = list(gcs_waits)
    said = ", ".join(user_wait or str(w) for w in waits)
    try:
        for tries, wait in enumerate(waits, 1):
            # Read while the head starts (its GCS, raylet and their workers inherit it), then
            # put back as it was: another call's waits are its own.
            os.environ[_WAIT_ENV] = user_wait or str(wait)
            try:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    **kwargs,
                )
                return
            except Exception as exc:  # Ray raises RuntimeError or a bare Exception for these
                if not any(m in str(exc) for m in _START_TIMED_OUT):
                    raise
                _clear_failed_head()
                log.warning("a local Ray head did not start (try %d of %d): %s", tries, len(waits), exc)
                if tries == len(waits):
                    raise RayStartError(
                        f"a local Ray head did not start in {tries} tries (waits of {said} s for its "
                        f"GCS): is the machine overloaded? {_WAIT_ENV} sets the wait"
                    ) from exc
    finally:
        if user_wait is None:
            os.environ.pop(_WAIT_ENV, None)
        else:
            os.environ[_WAIT_ENV] = user_wait


def _connect(opts: RayOptions) -> bool:
    """Join or start Ray; True when this call started it (and so stops it)."""
    import ray

    if ray.is_initialized():
        return False
    if opts.address == LOCAL:
        cpus = opts.actors * opts.threads_per_actor
        gpus = {"num_gpus": int(opts.actors * opts.gpus_per_actor + 0.999)} if opts.gpus_per_actor else {}
        start_local(cpus, **gpus)
    else:
        ray.init(address=opts.address, log_to_driver=False, configure_logging=False)
    return True


def _check_resources(opts: RayOptions, actors: int) -> None:
    """Refuse actors the cluster cannot place now: their blocks would wait for ever."""
    import ray

    have = ray.cluster_resources()
    want = {"CPU": actors * opts.threads_per_actor, "GPU": actors * opts.gpus_per_actor}
    short = {r: (n, have.get(r, 0)) for r, n in want.items() if n > have.get(r, 0) + 1e-9}
    if short:
        said = ", ".join(f"{n:g} {r} wanted, {h:g} in the cluster" for r, (n, h) in short.items())
        raise InvalidArgument(f"{actors} actors cannot all be placed ({said}): ask for fewer actors")


def _gather(
    refs: dict[Any, tuple[int, int]],
    total: int,
    add: Callable[[tuple[int, int], ScoreResult], None],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Hand each block's result to `add` as it arrives. On a block's error, cancel the blocks
    after it, wait for those before it, and raise the first error in pool order."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    waiting, done = list(refs), 0
    failed: dict[tuple[int, int], BaseException] = {}
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        span = refs[ready[0]]
        try:
            result = ray.get(ready[0])
        except RayTaskError as e:  # the block's own error (a bad sample, a damaged shard)
            cause = getattr(e, "cause", None)
            failed[span] = cause if isinstance(cause, Exception) else e
        except RayActorError as e:  # an actor that could not start (or died past its retries)
            failed[span] = UserError(f"a Ray actor died scoring rows {span[0]}-{span[1]}: {e}")
        else:
            if not failed:
                add(span, result)
                done += span[1] - span[0]
                if progress is not None:
                    progress(done, total)
        if failed:
            first = min(failed)
            for ref in [r for r in waiting if refs[r] > first]:
                ray.cancel(ref)
            waiting = [r for r in waiting if refs[r] < first]
    if failed:
        raise failed[min(failed)] from None

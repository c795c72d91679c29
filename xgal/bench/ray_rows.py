"""Pool scoring on Ray against in-process scoring (`xgal bench --ray-actors 1,2`): a local Ray
instance on this host, each actor count timed in turn with the in-process pipeline, the
actors given their share of the bench's threads (as replicas sharing a host are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xgal.bench.pool_rows import TOP_K
from xgal.bench.record import Recorder
from xgal.bench.timing import timed_in_turn


def ray_rows(rec: Recorder, scoring: Path, pool: Any, engine: Any) -> dict[str, float]:
    """One row per actor count; a call includes starting its actors (each loads the graph), as
    every `xgal score --ray` does, so a pool of a few hundred images mostly measures that."""
    import ray

    from xgal.core.acquisition import AcquisitionConfig
    from xgal.scorer.pipeline import score_pool
    from xgal.scorer.ray_pool import RayOptions, score_pool_ray, start_local

    cfg = rec.cfg
    config = AcquisitionConfig()
    out: dict[str, float] = {}
    start_local(cfg.n_threads)
    try:
        for n in cfg.ray_actors:
            options = RayOptions(
                actors=n,
                threads_per_actor=max(1, cfg.n_threads // n),
                block_size=max(1, -(-pool.count // n)),  # one block per actor
                batch_size=cfg.batch,
            )
            sec_in, sec = timed_in_turn(
                [
                    lambda: score_pool(engine, pool, config, TOP_K, batch_size=cfg.batch),
                    lambda o=options: score_pool_ray(scoring, pool.path, config, TOP_K, options=o),
                ],
                cfg.repeats,
            )
            rec.row(
                f"pool: Ray, {n} actor(s)",
                sec,
                pool.count,
                batch=cfg.batch,
                threads=cfg.n_threads,
                actors=n,
                threads_per_actor=options.threads_per_actor,
                in_process_images_per_s_in_turn=pool.count / sec_in,
            )
            out[f"ray_{n}_vs_in_process"] = sec_in / sec
    finally:
        ray.shutdown()
    return out

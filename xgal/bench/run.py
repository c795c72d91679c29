"""`xgal bench`: throughput of pool scoring, and what it is measured against, in one process.

All figures come from one run on one machine state, so their ratios are meaningful:
- engine (in memory, one batch; `engine_rows`): scoring graph fp32, forward-only graph (the
  ceiling), the eager PyTorch Grad-CAM reference, pytorch-grad-cam when installed;
- precision (`precision_rows`): the INT8 and FP16 scoring graphs the product makes, each timed
  in turn with fp32, with their ranking agreement against fp32;
- pool (whole pipeline: reader, engine, acquisition, bounded top-k; `pool_rows`): in process
  fp32, and ScorePool over gRPC on 1..N replica processes;
- the serving path's ceiling (`ceiling_rows`, `--ceiling N`): the same pool paths with a graph of
  negligible cost (`null_graph`) on a pool of N images, against a NumPy copy of the same bytes;
- sweeps (`sweeps`): batch size x threads for the scoring graph; pool size (time per image and
  peak RSS, each size in a fresh process).
The JSON written with --json holds every row (name, images_per_s, ms_per_image, batch,
threads, gflops_per_s, peak_fraction, ...) plus `ratios`, `int8`, `fp16`, `ceiling` and
`pool_sweep`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xgal.bench.config import BenchConfig
from xgal.bench.record import Recorder

__all__ = ["Bench", "BenchConfig"]


class Bench:
    def __init__(self, config: BenchConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config
        self._tmp = tempfile.TemporaryDirectory() if config.workdir is None else None
        self.work = Path(self._tmp.name) if self._tmp else Path(config.workdir)  # type: ignore[arg-type]
        self.work.mkdir(parents=True, exist_ok=True)
        self.rec = Recorder(config, self.work, log)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.rec.rows

    @property
    def extra(self) -> dict[str, Any]:
        return self.rec.extra

    def run(self) -> dict[str, Any]:
        from xgal.bench.engine_rows import baseline_rows, engine_rows, export_models
        from xgal.bench.flops import count_flops
        from xgal.bench.pool_rows import pool_rows
        from xgal.bench.pools import random_pool
        from xgal.bench.precision_rows import (
            FP16_FORWARD,
            FP16_SCORING,
            fp16_rows,
            int8_own_rows,
            int8_rows,
            synthetic_scans,
        )
        from xgal.bench.sweeps import engine_sweep, pool_size_sweep

        cfg, rec = self.cfg, self.rec
        model, scoring, forward, layer = export_models(rec)
        pool = random_pool(self.work / "pool", max(cfg.pool_size, cfg.batch), cfg.image_shape)
        batch = pool.read(0, cfg.batch)
        flops = {"scoring": count_flops(scoring), "forward": count_flops(forward)}
        rec.extra["gflop_per_image"] = {k: v / 1e9 for k, v in flops.items()}

        engine, ratios = engine_rows(rec, scoring, forward, batch, flops)
        device = eager_device(cfg)
        if cfg.baselines and device is None:
            rec.skip(
                "baselines",
                "the engine runs on a GPU and PyTorch sees none here; eager Grad-CAM on the CPU set "
                "against a GPU engine says nothing",
            )
        elif cfg.baselines:
            ratios.update(
                baseline_rows(
                    rec, model, layer, batch, lambda: engine.run(batch["images"], batch["rois"]), device
                )
            )
        if cfg.int8 and cfg.int8_model is not None and cfg.int8_pool is not None:
            rec.extra["int8"] = int8_own_rows(rec, cfg.int8_model, cfg.int8_pool)
        elif cfg.int8:
            rec.extra["int8"] = {
                **int8_rows(rec, scoring, synthetic_scans(rec), "scoring graph"),
                "pool": "synthetic scans",
            }
        if cfg.fp16 or (cfg.fp16 is None and cfg.on_gpu):
            rec.extra["fp16"] = fp16_rows(rec, scoring, engine)
            ratios.update(rec.extra["fp16"].pop("ratios"))
            if "scoring_vs_eager" in ratios:
                # Two in-turn pairs (eager with fp32, fp32 with FP16) chained: same process, same run.
                ratios["fp16_scoring_vs_eager"] = ratios["scoring_vs_eager"] * rec.extra["fp16"]["speedup"]
        elif cfg.fp16 is None:
            rec.skip(
                "fp16",
                f"FP16 is the GPU path; the providers are {cfg.providers} (--fp16 measures it anyway)",
            )
        ratios.update(pool_rows(rec, scoring, pool, engine))
        if cfg.ray_actors:
            from xgal.bench.ray_rows import ray_rows

            ratios.update(ray_rows(rec, scoring, pool, engine))
        if cfg.ceiling:
            from xgal.bench.ceiling_rows import ceiling_rows

            ratios.update(ceiling_rows(rec))
        rec.extra["ratios"] = ratios
        if cfg.sweep_batch or cfg.sweep_threads:
            graphs = {"fp32": (scoring, forward)}
            if "fp16" in rec.extra and "skipped" not in rec.extra["fp16"]:
                graphs["FP16"] = (self.work / FP16_SCORING, self.work / FP16_FORWARD)
            engine_sweep(rec, graphs, pool, flops["scoring"])
        if cfg.pool_sweep:
            rec.extra["pool_sweep"] = pool_size_sweep(rec)
        return self.report()

    def report(self) -> dict[str, Any]:
        return self.rec.report()


def eager_device(cfg: BenchConfig) -> str | None:
    """Where the eager baselines run: the CPU beside a CPU engine, the GPU beside a GPU one
    (None when PyTorch sees no GPU: then there is nothing fair to set them against)."""
    if not cfg.on_gpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None

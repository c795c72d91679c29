"""Sweeps: batch size x threads for the scoring graph, and pool size (time per image and peak
RSS, each size scored in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from xgal.bench.record import Recorder
from xgal.bench.timing import open_engine, timed


def sweep_row_name(batch: int, threads: int) -> str:
    return f"sweep: batch {batch}, {threads} thread(s)"


def engine_sweep(rec: Recorder, scoring: Path, pool: Any, flops: float) -> None:
    """One row per (threads, batch) asked for; the configured value stands in for an axis
    that is not swept."""
    cfg = rec.cfg
    for threads in cfg.sweep_threads or [cfg.n_threads]:
        engine = open_engine(scoring, cfg.providers, threads)
        for b in cfg.sweep_batch or [cfg.batch]:
            data = pool.read(0, min(b, pool.count))
            sec = timed(lambda e=engine, d=data: e.run(d["images"], d["rois"]), cfg.repeats)
            rec.row(
                sweep_row_name(b, threads),
                sec,
                len(data["ids"]),
                batch=b,
                threads=threads,
                flops_per_image=flops,
                sweep=True,
            )


def pool_size_sweep(rec: Recorder) -> list[dict[str, Any]]:
    """Time per image and peak RSS from 10k to 1M images: small images and the small CNN,
    so the sweep takes minutes; each size is scored in a fresh process, so that its peak RSS
    is its own and not what an earlier, larger size left behind."""
    import torch

    from xgal.bench.pools import random_pool
    from xgal.trainer.export import export_scoring_graph
    from xgal.trainer.nets import build_model, default_target_layer

    cfg = rec.cfg
    s = cfg.pool_sweep_image_size
    torch.manual_seed(0)
    small = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    model = export_scoring_graph(
        small, default_target_layer("small_cnn"), rec.work / "sweep.onnx", image_shape=(1, s, s)
    )
    out = []
    for n in sorted(cfg.pool_sweep):
        rec.log(f"pool sweep: writing a pool of {n} images of 1x{s}x{s} ...")
        pool = random_pool(rec.work / f"sweep-{n}", n, (1, s, s))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xgal.bench.poolsweep",
                str(pool.path),
                str(model),
                str(cfg.batch * 8),
                str(cfg.n_threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        point = json.loads(proc.stdout.strip().splitlines()[-1])
        rec.log(
            f"pool sweep: {n:>8} images  {point['images_per_s']:9.1f} images/s  "
            f"{1e6 * point['seconds_per_image']:7.1f} us/image  peak RSS {point['peak_rss_mb']:.0f} MB"
        )
        out.append(point)
    if len(out) >= 2:
        rec.extra["pool_sweep_rss_growth_mb"] = out[-1]["peak_rss_mb"] - out[0]["peak_rss_mb"]
    return out

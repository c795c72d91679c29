"""Sweeps: batch size x threads for the scoring graph, and pool size (time per image and peak
RSS, each size scored in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from xgal.bench.record import Recorder
from xgal.bench.timing import open_engine, timed_in_turn


def sweep_row_name(batch: int, threads: int, precision: str = "fp32") -> str:
    prefix = "sweep" if precision == "fp32" else f"sweep {precision}"
    return f"{prefix}: batch {batch}, {threads} thread(s)"


def engine_sweep(rec: Recorder, graphs: dict[str, tuple[Path, Path]], pool: Any, flops: float) -> None:
    """One row per (precision, threads, batch) asked for; the configured value stands in for an
    axis that is not swept. `graphs` maps a precision to its (scoring, forward-only) graphs:
    each scoring row is timed in turn with the forward-only graph at the same batch, so its
    `scoring_vs_forward` shows where the explanation path's fixed costs (small kernels, copies)
    stop mattering."""
    from xgal.scorer.engines.ort import OnnxRuntimeEngine

    cfg = rec.cfg
    for precision, (scoring, forward) in graphs.items():
        for threads in cfg.sweep_threads or [cfg.n_threads]:
            engine = open_engine(scoring, cfg.providers, threads)
            fwd = OnnxRuntimeEngine.plain_session(forward, threads, providers=cfg.providers, spinning=False)
            for b in cfg.sweep_batch or [cfg.batch]:
                data = pool.read(0, min(b, pool.count))
                sec, sec_fwd = timed_in_turn(
                    [
                        lambda e=engine, d=data: e.run(d["images"], d["rois"]),
                        lambda f=fwd, d=data: f.run(["probs"], {"image": d["images"]}),
                    ],
                    cfg.repeats,
                )
                n = len(data["ids"])
                rec.row(
                    sweep_row_name(b, threads, precision),
                    sec,
                    n,
                    batch=b,
                    threads=threads,
                    flops_per_image=flops,
                    sweep=True,
                    precision=precision,
                    forward_images_per_s_in_turn=n / sec_fwd,
                    scoring_vs_forward=sec_fwd / sec,
                )


def pool_size_sweep(rec: Recorder) -> list[dict[str, Any]]:
    """Time per image and peak RSS from 10k to 1M images: small images and the small CNN,
    so the sweep takes minutes; each size is scored in a fresh process, so that its peak RSS
    is its own and not what an earlier, larger size left behind."""
    import torch

    from xgal.bench.pools import random_pool
    from xgal.export import export_scoring_graph
    from xgal.train.nets import build_model, default_target_layer

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

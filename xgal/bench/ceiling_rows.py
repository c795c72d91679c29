"""The serving path's own ceiling (`xgal bench --ceiling N`): pool scoring with a graph of
negligible cost (`null_graph`), in process and over gRPC, against a NumPy copy of the same
pixel bytes out of the same files, all in one run.

Rows (each carries `pixel_bytes_per_s`: images/s times the image and ROI bytes of one sample):
- `ceiling: NumPy copy of the pool's pixels`: every shard's images and ROIs copied batch by
  batch into one reused buffer from memory maps held open (after the first pass the pages are
  mapped: what it measures is this machine's memory copy rate, bytes copied per second);
- `ceiling: null graph alone`: one batch in memory through the engine (the graph's own cost);
- `ceiling: in process, null graph`: `score_pool` (reader, engine, acquisition, top-k), timed
  in turn with the copy;
- `ceiling: gRPC ScorePool, N replica(s), null graph`: each replica count timed in turn with
  in process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xgal.bench.pool_rows import TOP_K, grpc_rows
from xgal.bench.record import Recorder
from xgal.bench.timing import open_engine, timed, timed_in_turn

COPY = "ceiling: NumPy copy of the pool's pixels"
ALONE = "ceiling: null graph alone (one batch in memory)"
IN_PROCESS = "ceiling: in process, null graph"


GRPC = "ceiling: gRPC ScorePool, {n} replica(s), null graph"  # n: the replicas


def sample_bytes(pool: Any) -> int:
    """Pixel bytes a pass reads per sample: its image and its ROI (uint8)."""
    c, h, w = pool.image_shape
    return c * h * w * np.dtype(pool.pixel_dtype).itemsize + h * w


def copy_pass(pool: Any, batch: int) -> Callable[[], int]:
    """A pass copying the pool's images and ROIs, `batch` samples at a time, into one reused
    buffer: the same bytes from the same files as the reader, with nothing else done."""
    maps = [
        (np.load(s.path / "images.npy", mmap_mode="r"), np.load(s.path / "rois.npy", mmap_mode="r"))
        for s in pool.shards
    ]
    c, h, w = pool.image_shape
    images = np.empty((batch, c, h, w), pool.pixel_dtype)
    rois = np.empty((batch, h, w), np.uint8)

    def run() -> int:
        copied = 0
        for imgs, masks in maps:
            for lo in range(0, len(imgs), batch):
                n = min(batch, len(imgs) - lo)
                np.copyto(images[:n], imgs[lo : lo + n])
                np.copyto(rois[:n], masks[lo : lo + n])
                copied += images[:n].nbytes + rois[:n].nbytes
        return copied

    return run


def ceiling_pool(rec: Recorder) -> Any:
    """The ceiling's pool at the bench's image shape (`--ceiling` images; reused if present)."""
    from xgal.bench.pools import random_pool

    cfg = rec.cfg
    c, s = cfg.channels, cfg.image_size
    rec.log(f"ceiling: a pool of {cfg.ceiling} images of {c}x{s}x{s} ...")
    return random_pool(rec.work / "ceiling-pool", cfg.ceiling, cfg.image_shape)


def ceiling_rows(rec: Recorder, pool: Any | None = None) -> dict[str, float]:
    """The rows above and their ratios: `ceiling_in_process_vs_copy` (bytes/s in process over
    the copy's, timed in turn) and `ceiling_grpc_N_vs_in_process`."""
    from xgal.bench.null_graph import write_null_graph
    from xgal.core.acquisition import AcquisitionConfig
    from xgal.scorer.pipeline import score_pool

    cfg = rec.cfg
    pool = pool if pool is not None else ceiling_pool(rec)
    graph = write_null_graph(rec.work / "null.onnx", tuple(pool.image_shape), pool.pixel_dtype)
    engine = open_engine(graph, cfg.providers, cfg.n_threads)
    per_sample = sample_bytes(pool)
    rec.extra["ceiling"] = {
        "pool_size": pool.count,
        "image_shape": list(pool.image_shape),
        "pixel_dtype": pool.pixel_dtype,
        "pixel_bytes_per_image": per_sample,
        "pixel_bytes_per_pass": per_sample * pool.count,
    }

    def row(name: str, sec: float, n: int, **extra: Any) -> dict[str, Any]:
        return rec.row(
            name,
            sec,
            n,
            batch=cfg.batch,
            threads=cfg.n_threads,
            pixel_bytes_per_s=n * per_sample / sec,
            **extra,
        )

    def in_process() -> object:
        return score_pool(engine, pool, AcquisitionConfig(), TOP_K, batch_size=cfg.batch)

    copy = copy_pass(pool, cfg.batch)
    if copy() != per_sample * pool.count:  # also the warm-up that maps every page
        raise RuntimeError("the copy pass did not copy the pool's pixel bytes")
    sec_copy, sec_in = timed_in_turn([copy, in_process], cfg.repeats)
    row(COPY, sec_copy, pool.count)
    data = pool.read(0, min(cfg.batch, pool.count))
    sec_alone = timed(lambda: engine.run(data["images"], data["rois"]), max(cfg.repeats, 20))
    row(ALONE, sec_alone, len(data["ids"]))
    row(IN_PROCESS, sec_in, pool.count, copy_pixel_bytes_per_s_in_turn=pool.count * per_sample / sec_copy)
    out = {"ceiling_in_process_vs_copy": sec_copy / sec_in}

    def pixel_bytes(sec: float) -> dict[str, float]:
        return {"pixel_bytes_per_s": pool.count * per_sample / sec}

    return out | grpc_rows(rec, pool, graph, in_process, GRPC, "ceiling_grpc_{n}_vs_in_process", pixel_bytes)

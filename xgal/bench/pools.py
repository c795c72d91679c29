"""Pools for throughput measurements: noise images with one box ROI each, written fast enough
to make a million-image pool in well under a minute of CPU (plus the disk)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xgal.pool.format import Pool, PoolWriter


def existing_pool(path: str | os.PathLike[str], size: int, image_shape: tuple[int, int, int]) -> Pool | None:
    """The finished pool at `path` if it has `size` images of `image_shape`, else None."""
    if not (Path(path) / "manifest.json").is_file():
        return None
    pool = Pool(path)
    return pool if pool.count == size and tuple(pool.image_shape) == tuple(image_shape) else None


def random_pool(
    out: str | os.PathLike[str],
    size: int,
    image_shape: tuple[int, int, int],
    *,
    seed: int = 0,
    shard_size: int = 65536,
    progress: Callable[[int], None] | None = None,
) -> Pool:
    """A pool of `size` uniform-noise images with a random box ROI each (reused if present)."""
    out = Path(out)
    pool = existing_pool(out, size, image_shape)
    if pool is not None:
        return pool
    c, h, w = image_shape
    rng = np.random.default_rng(seed)
    chunk = 8192
    yy = np.arange(h)[None, :, None]
    xx = np.arange(w)[None, None, :]
    with PoolWriter(
        out,
        image_shape=image_shape,
        shard_size=shard_size,
        overwrite=True,
        description=f"random benchmark pool, seed={seed}",
    ) as writer:
        for lo in range(0, size, chunk):
            n = min(chunk, size - lo)
            images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
            y0 = rng.integers(0, h // 2, (n, 1, 1))
            x0 = rng.integers(0, w // 2, (n, 1, 1))
            rois = ((yy >= y0) & (yy < y0 + h // 4) & (xx >= x0) & (xx < x0 + w // 4)).astype(np.uint8)
            writer.add(np.char.add("img-", np.char.zfill(np.arange(lo, lo + n).astype(str), 8)), images, rois)
            if progress is not None:
                progress(n)
    return Pool(out)

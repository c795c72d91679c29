"""`xgal pool show`: a contact sheet of a pool's scans with their ROIs outlined, so a user sees
what was imported (the right crop, the masks over the lesions, the classes) before training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xgal.annotate.hints import OUTLINES, outline, stretch
from xgal.pool.format import Pool

TILE = 128  # pixels per scan
CAPTION = 24  # two lines of text under each scan


def sample_rows(pool: Pool, count: int, seed: int) -> np.ndarray:
    """`count` rows of the pool, a seeded draw in pool order (all of them in a smaller pool)."""
    if count >= pool.count:
        return np.arange(pool.count)
    return np.sort(np.random.default_rng(seed).choice(pool.count, size=count, replace=False))


def contact_sheet(pool: Pool, out: str | os.PathLike[str], *, count: int = 48, seed: int = 0) -> Path:
    """A PNG grid of `count` scans, each with its ROI outlined (green), its ID and its class."""
    from PIL import Image, ImageDraw

    rows = sample_rows(pool, count, seed)
    keys = ("ids", "images", "rois") + (("labels",) if pool.has_labels else ())
    data = pool.take(rows, keys)
    cols = min(8, len(rows))
    grid = Image.new("RGB", (cols * TILE, -(-len(rows) // cols) * (TILE + CAPTION)), "black")
    draw = ImageDraw.Draw(grid)
    for k in range(len(rows)):
        gray = stretch(data["images"][k][0])
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        rgb[outline(data["rois"][k] > 0)] = OUTLINES["expert"][0]
        tile = Image.fromarray((rgb * 255).astype(np.uint8)).resize((TILE, TILE), Image.NEAREST)
        x, y = (k % cols) * TILE, (k // cols) * (TILE + CAPTION)
        grid.paste(tile, (x, y))
        label = pool.class_names[int(data["labels"][k])] if pool.has_labels else "unlabelled"
        roi = "ROI" if data["rois"][k].any() else "no ROI"
        draw.text((x + 2, y + TILE + 1), str(data["ids"][k])[:22], fill="white")
        draw.text((x + 2, y + TILE + 12), f"{label[:12]} · {roi}", fill="white")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path

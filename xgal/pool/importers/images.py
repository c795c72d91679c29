"""A folder of PNG/JPEG images with a CSV of labels, and ROIs as mask files or boxes.

labels CSV: `image` (path relative to the folder), `label` (class name), optional `id`
(default: the file name without extension) and optional `mask` (path of a mask image; any
non-zero pixel is inside the ROI). Boxes CSV instead of masks: `image` or `id`, `x_min`,
`y_min`, `x_max`, `y_max` in the original image's pixels; several boxes of an image are filled
into one mask. An image with neither has no ROI (an all-zero mask).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.importers.common import (
    BOX_COLUMNS,
    ImportError_,
    ImportReport,
    Sample,
    boxes_to_mask,
    read_box,
    resize_image,
    resize_mask,
    to_pixels,
    write_pool,
)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise InvalidArgument(f"{path}: {'no rows' if not rows else 'missing columns ' + ', '.join(missing)}")
    return rows


def import_images(
    folder: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    channels: int = 1,
    boxes_csv: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    shard_size: int = 4096,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    folder = Path(folder)
    if channels not in (1, 3):
        raise InvalidArgument(f"channels must be 1 or 3, got {channels}")
    rows = _read_csv(Path(labels_csv), ["image", "label"])
    names = list(class_names) if class_names else sorted({r["label"] for r in rows})
    unknown = sorted({r["label"] for r in rows} - set(names))
    if unknown:
        raise InvalidArgument(f"labels not among the classes {names}: {unknown}")
    ids = [r.get("id") or Path(r["image"]).stem for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InvalidArgument(f"{labels_csv}: duplicate IDs {dupes[:5]}")
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    if boxes_csv is not None:
        for line, b in enumerate(_read_csv(Path(boxes_csv), BOX_COLUMNS), start=2):
            key = b.get("id") or Path(b.get("image", "")).stem
            boxes.setdefault(key, []).append(read_box(b, f"{boxes_csv} line {line}"))

    def convert(item: object) -> Iterator[Sample]:
        row, sample_id = item  # type: ignore[misc]
        path = folder / row["image"]
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise ImportError_(f"{path}: not a readable image ({exc})") from None
        h, w = arr.shape[:2]
        if row.get("mask"):
            mpath = folder / row["mask"]
            try:
                with Image.open(mpath) as m:
                    mask = (np.asarray(m.convert("L")) > 0).astype(np.uint8)
            except (OSError, ValueError) as exc:
                raise ImportError_(f"{mpath}: not a readable mask ({exc})") from None
            if mask.shape != (h, w):
                raise ImportError_(f"{mpath}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {w}x{h}")
        else:
            mask = boxes_to_mask(boxes.get(sample_id, []), h, w, str(path))
        img = resize_image(arr if channels == 3 else arr, size)
        img = img[None] if channels == 1 else np.moveaxis(img, -1, 0)
        yield Sample(sample_id, to_pixels(img, "uint8"), resize_mask(mask, size), names.index(row["label"]))

    return write_pool(
        out,
        list(zip(rows, ids, strict=True)),
        convert,
        image_shape=(channels, size, size),
        class_names=names,
        shard_size=shard_size,
        overwrite=overwrite,
        description=f"imported from {folder}",
        progress=progress,
    )

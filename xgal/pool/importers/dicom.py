"""DICOM images with a box CSV in the VinDr-CXR / SIIM-COVID style (pydicom).

Box CSV: `image_id`, `class_name` (or `class`), `x_min`, `y_min`, `x_max`, `y_max`; several
rows per image (several radiologists, several findings). As the authors prepared VinDr-CXR, an
image is kept when it has a box of one of the chosen classes; its class is the chosen class with
the largest boxed area, and its ROI the union of that class's boxes, filled. Pixels: modality
LUT, then the VOI window (the file's own, or `window=(centre, width)`), MONOCHROME1 inverted so
that bone is bright, scaled to the pool's dtype and resized.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

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
    window_unit,
    write_pool,
)

NO_FINDING = {"no finding", "none", ""}


def dicom_to_unit(path: Path, window: tuple[float, float] | None = None) -> np.ndarray:
    """A DICOM file's pixels as float [H, W] in [0, 1], windowed, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad or unsupported files
        raise ImportError_(f"{path}: not a readable DICOM image ({exc})") from None
    if raw.ndim != 2:
        raise ImportError_(f"{path}: {raw.ndim}-D pixel data; only single-frame 2-D images are supported")
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    if window is not None:
        unit = window_unit(arr, window)
    elif "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds).astype(np.float64)
        lo, hi = arr.min(), arr.max()
        unit = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        lo, hi = np.percentile(arr, [0.5, 99.5])
        unit = np.clip((arr - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _find(folder: Path, image_id: str) -> Path | None:
    for ext in (".dicom", ".dcm", ""):
        p = folder / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


def import_dicom(
    folder: str | os.PathLike[str],
    boxes_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    classes: Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
    pixel_dtype: str = "uint8",
    shard_size: int = 4096,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    folder = Path(folder)
    with open(boxes_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InvalidArgument(f"{boxes_csv}: no rows")
    cls_col = "class_name" if "class_name" in rows[0] else "class"
    need = ["image_id", cls_col, *BOX_COLUMNS]
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise InvalidArgument(f"{boxes_csv}: missing columns {', '.join(missing)}")
    per_image: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    for line, r in enumerate(rows, start=2):
        name = r[cls_col].strip()
        if name.lower() in NO_FINDING or any(r[k] in ("", "nan", "NaN") for k in need[2:]):
            continue
        box = read_box(r, f"{boxes_csv} line {line}")
        if any(math.isnan(v) for v in box):
            continue
        per_image.setdefault(r["image_id"], {}).setdefault(name, []).append(box)
    names = list(classes) if classes else sorted({c for b in per_image.values() for c in b})
    if not names:
        raise InvalidArgument(f"{boxes_csv}: no boxes of any class")
    sources = sorted(i for i, b in per_image.items() if set(b) & set(names))

    def convert(image_id: object) -> Iterator[Sample]:
        path = _find(folder, str(image_id))
        if path is None:
            raise ImportError_(f"{folder}/{image_id}(.dicom|.dcm): file not found")
        unit = dicom_to_unit(path, window)
        h, w = unit.shape
        boxes = {c: b for c, b in per_image[str(image_id)].items() if c in names}
        area = {c: float(boxes_to_mask(b, h, w, str(path)).sum()) for c, b in boxes.items()}
        label = max(sorted(area), key=lambda c: area[c])
        mask = boxes_to_mask(boxes[label], h, w, str(path))
        img = resize_image(unit.astype(np.float32), size)[None]
        yield Sample(str(image_id), to_pixels(img, pixel_dtype), resize_mask(mask, size), names.index(label))

    return write_pool(
        out,
        sources,
        convert,
        image_shape=(1, size, size),
        class_names=names,
        pixel_dtype=pixel_dtype,
        shard_size=shard_size,
        overwrite=overwrite,
        description=f"imported from DICOM in {folder}",
        progress=progress,
    )

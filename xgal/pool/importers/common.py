"""Shared pieces of the importers: list CSVs, masks (files, label maps, boxes), resizing,
intensity scaling, the writer loop with progress and resume. What an import refuses before
reading (the pixel limit, paths outside the list's folder) is in `safety`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from xgal.core.errors import InvalidArgument
from xgal.core.spreadsheet import read_rows
from xgal.pool.format import Pool, PoolWriter
from xgal.pool.importers.columns import check_columns
from xgal.pool.importers.safety import ImportError_, decode_image


def read_csv(path: Path, required: Sequence[str], known: Sequence[str] = ()) -> list[dict[str, str]]:
    """A list CSV's rows (`spreadsheet.read_rows`: a byte-order mark as Excel's "CSV UTF-8" writes
    it is read, a missing cell is ''); no rows, a missing column or another encoding than UTF-8
    is an InvalidArgument naming the file, and so is a column that looks like one of the `known`
    ones the importer reads while that one is missing (`columns.check_columns`)."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    try:
        rows = read_rows(path)
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not UTF-8 text; save it as CSV UTF-8") from None
    if rows and known:
        check_columns(path, list(rows[0]), known)
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise InvalidArgument(f"{path}: {'no rows' if not rows else 'missing columns ' + ', '.join(missing)}")
    return rows


@dataclass
class Sample:
    sample_id: str
    image: np.ndarray  # [C, H, W] at the pool's size and dtype
    roi: np.ndarray  # [H, W] uint8
    label: int
    group: str | None = None  # the patient, where the source says


@dataclass
class ImportReport:
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # "source: reason"
    notes: list[str] = field(default_factory=list)  # "source: what was done instead" (imported)
    warnings: list[str] = field(default_factory=list)  # about the whole import (IDs that tell the class)
    stretched: int = 0  # non-square images resized to square without keeping their aspect


FITS = ("pad", "crop", "stretch")


def fit_square(arr: np.ndarray, fit: str) -> np.ndarray:
    """An image [H, W(, C)] or mask made square before resizing: `pad` centres it on zeros
    (nothing lost, aspect kept), `crop` keeps the centred square (aspect kept, edges lost),
    `stretch` leaves it (the resize then distorts it)."""
    h, w = arr.shape[:2]
    if fit == "stretch" or h == w:
        return arr
    side = max(h, w) if fit == "pad" else min(h, w)
    if fit == "crop":
        top, left = (h - side) // 2, (w - side) // 2
        return arr[top : top + side, left : left + side]
    out = np.zeros((side, side, *arr.shape[2:]), dtype=arr.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = arr
    return out


LABEL_MAP_VALUES = 8  # a 2-D mask with at most this many distinct whole values is a label map


def integral(values: np.ndarray) -> bool:
    """Whether every value is a whole number (a label map, whatever its dtype)."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return True
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def soft_mask(values: np.ndarray) -> np.ndarray:
    """A mask of fractional values (a probability map, or a mask resampled with interpolation)
    as 0/1: above 0.5 when every value lies in [0, 1], else above half its range (NaN outside)."""
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.zeros(v.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    cut = 0.5 if lo >= 0 and hi <= 1 else (lo + hi) / 2
    return (v > cut).astype(np.uint8)


def binary_mask(values: np.ndarray) -> np.ndarray:
    """A 2-D mask image as 0/1. A label map (whole values, at most 8 distinct: 0/255, 0/1, or
    0/1/2/4 regions) counts every pixel above 0; one with many whole values (a JPEG, whose
    compression left faint values around the edges; a 16-bit mask) is thresholded at half its
    range; fractional values (a float TIFF) by `soft_mask`: above 0.5 for a probability map."""
    if values.size == 0:
        return np.zeros(values.shape, np.uint8)
    if not integral(values):
        return soft_mask(values)
    v = values.astype(np.float64)
    if len(np.unique(v)) <= LABEL_MAP_VALUES:
        return (v > 0).astype(np.uint8)
    lo, hi = float(v.min()), float(v.max())
    return (v > (lo + hi) / 2).astype(np.uint8)


def read_mask(
    path: Path, height: int, width: int, image: str, *, max_pixels: int | None = None
) -> np.ndarray:
    """A mask file as 0/1 (`binary_mask`), checked against the `image`'s size `width`x`height`
    before it is decoded; an unreadable file, another size or one above the pixel limit
    (`safety.pixel_limit`) is an ImportError_ naming the file."""

    def decode(m: Image.Image) -> np.ndarray:
        if m.size != (width, height):
            raise ImportError_(f"{path}: mask is {m.size[0]}x{m.size[1]}, {image} is {width}x{height}")
        # Integer and float modes (I;16, I, F) keep their values; "L" would cut 0.6 to 0.
        return np.asarray(m if m.mode.startswith(("I", "F")) else m.convert("L"))

    values = decode_image(path, decode, "mask", max_pixels)
    if values.shape != (height, width):  # a frame other than the header said
        raise ImportError_(
            f"{path}: mask is {values.shape[1]}x{values.shape[0]}, {image} is {width}x{height}"
        )
    return binary_mask(values)


def window_unit(arr: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Values in [centre − width/2, centre + width/2] to [0, 1], clipped (a radiologist's window)."""
    centre, width = window
    if not width > 0:
        raise InvalidArgument(f"a window's width must be positive, got {width}")
    lo = centre - width / 2
    return np.clip((arr.astype(np.float64) - lo) / width, 0, 1)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """[H, W] or [H, W, C] float32 in [0, 1] -> [size, size(, C)] bilinear."""
    if img.ndim == 2:
        return np.asarray(
            Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
        )
    return np.stack([resize_image(img[..., c], size) for c in range(img.shape[-1])], axis=-1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour, so the ROI stays a 0/1 mask."""
    return (
        np.asarray(Image.fromarray((mask > 0).astype(np.uint8) * 255).resize((size, size), Image.NEAREST))
        > 127
    ).astype(np.uint8)


BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def read_box(row: Mapping[str, str], where: str) -> tuple[float, float, float, float]:
    """A CSV row's box (x_min, y_min, x_max, y_max) as numbers; `where` names the file and line."""
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in BOX_COLUMNS)
    except (TypeError, ValueError):
        cells = [row.get(k) for k in BOX_COLUMNS]
        raise InvalidArgument(f"{where}: box {cells} is not four numbers") from None
    return x0, y0, x1, y1


def boxes_to_mask(
    boxes: Sequence[tuple[float, float, float, float]], height: int, width: int, where: str
) -> np.ndarray:
    """Fill boxes (x_min, y_min, x_max, y_max, pixel coordinates) into one mask; a box that
    leaves the image by more than a pixel is an error, not silently clipped."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        if not (x1 > x0 and y1 > y0):
            raise ImportError_(f"{where}: empty or inverted box ({x0}, {y0}, {x1}, {y1})")
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            raise ImportError_(
                f"{where}: box ({x0}, {y0}, {x1}, {y1}) lies outside the {width}x{height} image"
            )
        mask[
            max(0, int(np.floor(y0))) : min(height, int(np.ceil(y1))),
            max(0, int(np.floor(x0))) : min(width, int(np.ceil(x1))),
        ] = 1
    return mask


def to_pixels(img01: np.ndarray, dtype: str) -> np.ndarray:
    hi = 255 if dtype == "uint8" else 65535
    return np.round(np.clip(img01, 0, 1) * hi).astype(dtype)


def robust_scale(
    arr: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5, mask: np.ndarray | None = None
) -> np.ndarray:
    """Percentile window to [0, 1] (over `mask` when given: e.g. the brain, not the air)."""
    vals = arr[mask] if mask is not None and mask.any() else arr
    lo, hi = np.percentile(vals, [lo_pct, hi_pct]) if vals.size else (0.0, 1.0)
    return np.clip((arr - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(arr, dtype=np.float64)


def write_pool(
    out: str | os.PathLike[str],
    sources: Sequence[object],
    convert: Callable[[object], Iterator[Sample]],
    *,
    image_shape: tuple[int, int, int],
    class_names: Sequence[str],
    pixel_dtype: str = "uint8",
    with_labels: bool = True,
    with_groups: bool = False,
    shard_size: int = 4096,
    overwrite: bool = False,
    description: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    """Convert each source item into samples and write them; resumes an unfinished `out`.
    `progress(done, total)` counts source items."""
    report = ImportReport()
    writer = PoolWriter(
        out,
        image_shape=image_shape,
        pixel_dtype=pixel_dtype,
        class_names=class_names,
        with_labels=with_labels,
        with_groups=with_groups,
        shard_size=shard_size,
        overwrite=overwrite,
        resume=not overwrite,
        description=description,
    )
    start = writer.resume_after + 1
    for k in range(start, len(sources)):
        try:
            samples = list(convert(sources[k]))
        except ImportError_ as exc:
            report.skipped.append(str(exc))
            samples = []
        if samples:
            writer.add(
                [s.sample_id for s in samples],
                np.stack([s.image for s in samples]),
                np.stack([s.roi for s in samples]),
                np.array([s.label for s in samples], dtype=np.int64) if with_labels else None,
                groups=[str(s.group) for s in samples] if with_groups else None,
                source=k,
            )
            report.written += len(samples)
        if progress is not None:
            progress(k + 1, len(sources))
    writer.close()
    return Pool(Path(out)), report

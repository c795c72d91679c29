"""A folder of PNG/JPEG images with a CSV of labels, and ROIs as mask files or boxes.

labels CSV: `image` (path relative to the folder), `label` (class name; without the column, or
with it empty on every row, the pool is unlabelled: an archive before its annotation), optional
`id` (default: the file name without extension) and optional `mask` (path of a mask image, read
by `common.binary_mask`: a label map's non-zero pixels, else those above half the mask's range;
a float mask's values above 0.5 when they lie in [0, 1]). Boxes CSV instead of masks: `image` or
`id`, `x_min`, `y_min`, `x_max`, `y_max` in the original image's pixels; several boxes of an
image are filled into one mask. An image with neither has no ROI (an all-zero mask). A path
that leaves the folder (absolute, `..`, a symlink out) is refused unless `allow_outside_paths`;
a file declaring more pixels than `max_pixels` (`safety`) is skipped before it is decoded. A
column that looks like one of these (`class`, `lable`) while that one is missing is refused
(`columns`). Instead of a CSV, `class_from_folder` takes every image of `folder/<class>/` with the
subfolder's name as its class. `anonymise` gives each scan an ID that tells nothing
(`xgal.pool.id_map`); without it, IDs that give the class away are warned about.

16-bit images (a CT slice saved as HU + 1024, say) keep their values in a uint16 pool
(`pixel_dtype="uint16"`), or are mapped to 8 bits through an explicit `window` (centre, width);
an 8-bit pool never clips them silently. Non-square images are padded (default) or cropped to a
square first, so the resize keeps their aspect; `fit="stretch"` distorts them, and the report
counts those.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.id_map import IdMap, revealing
from xgal.pool.importers.common import (
    BOX_COLUMNS,
    FITS,
    ImportError_,
    ImportReport,
    Sample,
    boxes_to_mask,
    fit_square,
    read_box,
    read_csv,
    read_mask,
    resize_image,
    resize_mask,
    to_pixels,
    window_unit,
    write_pool,
)
from xgal.pool.importers.safety import decode_image, list_cells, pixel_limit, refuse_outside

LIST_COLUMNS = ("image", "label", "id", "mask")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def import_images(
    folder: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    channels: int = 1,
    boxes_csv: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    fit: str = "pad",
    pixel_dtype: str = "uint8",
    window: tuple[float, float] | None = None,
    shard_size: int = 4096,
    overwrite: bool = False,
    max_pixels: int | None = None,
    allow_outside_paths: bool = False,
    class_from_folder: bool = False,
    anonymise: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    """Import the images `labels_csv` lists under `folder` into a pool at `out` (module doc); with
    `class_from_folder`, every image in `folder/<class>/` instead, its class the subfolder's name;
    with `anonymise`, IDs that give nothing away (`xgal.pool.id_map`)."""
    folder = Path(folder)
    max_pixels = pixel_limit(max_pixels)  # read once: a bad $XGAL_MAX_IMAGE_PIXELS fails before writing
    if channels not in (1, 3):
        raise InvalidArgument(f"channels must be 1 or 3, got {channels}")
    if fit not in FITS:
        raise InvalidArgument(f"fit must be one of {', '.join(FITS)}; got {fit!r}")
    if pixel_dtype not in ("uint8", "uint16"):
        raise InvalidArgument(f"pixel_dtype must be uint8 or uint16, got {pixel_dtype!r}")
    if class_from_folder == (labels_csv is not None):
        raise InvalidArgument("give a labels CSV, or take each class from its folder (--class-from-folder)")
    if labels_csv is None:
        rows, labels_csv = folder_rows(folder), folder
    else:
        rows = read_csv(Path(labels_csv), ["image"], LIST_COLUMNS)
    missing = [r["image"] for r in rows if not (folder / r["image"]).is_file()]
    if len(missing) == len(rows):
        raise InvalidArgument(
            f"none of the {len(rows)} images {labels_csv} lists is under {folder} (e.g. "
            f"{folder / missing[0]}): is the images folder right?"
        )
    refuse_outside(folder, list_cells(labels_csv, rows, ("image", "mask")), allow_outside_paths)
    given = [(r.get("label") or "").strip() for r in rows]
    labelled = any(given)
    if labelled and not all(given):
        missing = [r["image"] for r, g in zip(rows, given, strict=True) if not g]
        raise InvalidArgument(
            f"{labels_csv}: {len(missing)} rows have no label (e.g. {missing[:3]}); label every row, "
            "or none for an unlabelled pool"
        )
    names = list(class_names) if class_names else sorted(set(given) - {""})
    unknown = sorted(set(given) - set(names) - {""})
    if unknown:
        raise InvalidArgument(f"labels not among the classes {names}: {unknown}")
    ids = [r.get("id") or Path(r["image"]).stem for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes and not anonymise:
        raise InvalidArgument(f"{labels_csv}: duplicate IDs {dupes[:5]} (--anonymise names scans by path)")
    reveal = None if anonymise else revealing(ids, given)
    sources = ids  # what a boxes CSV names the scans by
    if anonymise:  # the key first: a resumed import gives every scan the same ID again
        id_map = IdMap(secrets.token_bytes(32)) if overwrite else IdMap.for_pool(out)
        ids = [id_map.anonymise(r["image"], r["image"]) for r in rows]
        id_map.write(out)
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    if boxes_csv is not None:
        for line, b in enumerate(read_csv(Path(boxes_csv), BOX_COLUMNS), start=2):
            key = b.get("id") or Path(b.get("image", "")).stem
            boxes.setdefault(key, []).append(read_box(b, f"{boxes_csv} line {line}"))

    report_stretched = [0]  # counted by `convert`, which runs inside write_pool

    def convert(item: object) -> Iterator[Sample]:
        row, sample_id, source_id = item  # type: ignore[misc]
        path = folder / row["image"]
        arr = _read_unit(path, channels, pixel_dtype, window, max_pixels)
        h, w = arr.shape[:2]
        if row.get("mask"):
            mask = read_mask(folder / row["mask"], h, w, "the image", max_pixels=max_pixels)
        else:
            mask = boxes_to_mask(boxes.get(source_id, []), h, w, str(path))
        if fit == "stretch" and h != w:
            report_stretched[0] += 1
        img = resize_image(fit_square(arr, fit), size)
        img = img[None] if channels == 1 else np.moveaxis(img, -1, 0)
        roi = resize_mask(fit_square(mask, fit), size)
        label = names.index(row["label"].strip()) if labelled else -1
        yield Sample(sample_id, to_pixels(img, pixel_dtype), roi, label)

    pool, report = write_pool(
        out,
        list(zip(rows, ids, sources, strict=True)),
        convert,
        image_shape=(channels, size, size),
        class_names=names,
        pixel_dtype=pixel_dtype,
        with_labels=labelled,
        shard_size=shard_size,
        overwrite=overwrite,
        description=f"imported from {folder} ({'aspect kept: ' + fit if fit != 'stretch' else 'stretched'})",
        progress=progress,
    )
    report.stretched = report_stretched[0]
    if reveal:
        report.warnings.append(f"{reveal}: the radiologist sees them; import with --anonymise to hide it")
    return pool, report


def folder_rows(folder: Path) -> list[dict[str, str]]:
    """Every image in `folder/<class>/`, as list rows whose label is the subfolder's name."""
    rows = [
        {"image": f"{d.name}/{f.name}", "label": d.name}
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    ] if folder.is_dir() else []  # fmt: skip
    if not rows:
        raise InvalidArgument(f"{folder} has no class folders of images (<class>/<image>.png|jpg|...)")
    return rows


def _read_unit(
    path: Path, channels: int, pixel_dtype: str, window: tuple[float, float] | None, limit: int | None
) -> np.ndarray:
    """The image as float [H, W(, C)] in [0, 1]: 8-bit images / 255; 16-bit ones through the
    window, or / 65535 into a uint16 pool, never clipped to 8 bits."""

    def decode(im: Image.Image) -> tuple[np.ndarray, bool]:
        if im.mode.startswith("I"):  # I;16, I;16B, I: 16-bit (or 32-bit integer) grayscale
            return np.asarray(im).astype(np.float64), True
        return np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float64), False

    values, sixteen = decode_image(path, decode, "image", limit)
    if window is not None:
        arr = window_unit(values, window)
    elif not sixteen:
        arr = values / 255.0
    elif pixel_dtype == "uint16":
        if values.min() < 0 or values.max() > 65535:
            raise ImportError_(
                f"{path}: values {values.min():.0f}–{values.max():.0f} do not fit 16 bits; map them "
                "with --window centre,width"
            )
        arr = values / 65535.0
    else:
        raise ImportError_(
            f"{path}: a 16-bit image (values {values.min():.0f}–{values.max():.0f}); an 8-bit pool would "
            "clip it: import with --uint16 to keep its values, or --window centre,width to map them"
        )
    if channels == 3 and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr.astype(np.float32)

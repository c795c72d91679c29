"""DICOM images with a box CSV in the VinDr-CXR / SIIM-COVID style (pydicom).

Box CSV: `image_id`, `class_name` (or `class`), `x_min`, `y_min`, `x_max`, `y_max`; several
rows per image (several radiologists, several findings). As the authors prepared VinDr-CXR, an
image is kept when it has a box of one of the chosen classes; its class is the chosen class with
the largest boxed area, and its ROI the union of that class's boxes, filled. Pixels: modality
LUT, then the VOI window (the file's own, or `window=(centre, width)`), MONOCHROME1 inverted so
that bone is bright, scaled to the pool's dtype and resized.

A file's own window that DICOM does not allow (WindowWidth below 1, e.g. the 0 some devices
write when they set none, or not a number) is ignored as a viewer ignores it: the image is
scaled by its 0.5-99.5 percentiles, as a file without a window, and the report notes the file.
Rows × Columns × frames × samples above the pixel limit (`safety`) is skipped before the pixel
data is decoded; an `image_id` whose file leaves the folder is refused unless
`allow_outside_paths`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
    read_csv,
    resize_image,
    resize_mask,
    to_pixels,
    window_unit,
    write_pool,
)
from xgal.pool.importers.safety import RAISE_IT, check_pixels, pixel_limit, refuse_outside

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

NO_FINDING = {"no finding", "none", ""}


def dicom_to_unit(
    path: Path,
    window: tuple[float, float] | None = None,
    *,
    max_pixels: int | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """A DICOM file's pixels as float [H, W] in [0, 1], windowed, MONOCHROME1 inverted; its
    declared size is checked against the pixel limit before the pixel data is decoded. A note
    on what was done instead of an unusable window of the file's own goes to `notes`."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _check_deflated(path, max_pixels)
    try:  # the header alone first: a file of gigabytes declaring 16x16 is not read whole
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad or unsupported files
        raise ImportError_(f"{path}: not a readable DICOM image ({exc})") from None
    dims = [header.get("Columns"), header.get("Rows")]
    frames, samples = header.get("NumberOfFrames"), header.get("SamplesPerPixel")
    dims += [n for n in (frames, samples) if n not in (None, "", 1, "1")]
    try:
        dims = [int(d) for d in dims]
    except (TypeError, ValueError):
        raise ImportError_(f"{path}: Rows, Columns or NumberOfFrames is missing or not a number") from None
    check_pixels(path, dims, max_pixels)
    if frames not in (None, "", 1, "1"):
        raise ImportError_(f"{path}: {frames} frames; only single-frame 2-D images are supported")
    size, bits = os.path.getsize(path), int(header.get("BitsAllocated") or 16)
    if size > 2 * dims[0] * dims[1] * max(1, bits // 8) * int(samples or 1) + (16 << 20):
        raise ImportError_(f"{path}: {size:,} bytes, far more than its {dims[0]}x{dims[1]} pixels need")
    try:
        ds = pydicom.dcmread(path)  # the pixel data's bytes, not yet decoded
    except Exception as exc:
        raise ImportError_(f"{path}: not a readable DICOM image ({exc})") from None
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise ImportError_(f"{path}: not a readable DICOM image ({exc})") from None
    if raw.ndim != 2:
        raise ImportError_(f"{path}: {raw.ndim}-D pixel data; only single-frame 2-D images are supported")
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    unusable = None if window is not None else _unusable_window(ds)
    if unusable is not None and notes is not None:
        notes.append(f"{path}: {unusable}; scaled by its 0.5-99.5 percentiles as a file without a window")
    if window is not None:
        unit = window_unit(arr, window)
    elif unusable is None and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        try:
            arr = apply_voi_lut(arr, ds).astype(np.float64)
        except Exception as exc:  # a malformed VOI LUT: pydicom raises several types
            raise ImportError_(f"{path}: its VOI window or LUT cannot be applied ({exc})") from None
        lo, hi = arr.min(), arr.max()
        unit = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        lo, hi = np.percentile(arr, [0.5, 99.5])
        unit = np.clip((arr - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _unusable_window(ds: Dataset) -> str | None:
    """Why the file's own window cannot be used (WindowWidth under 1 or not a number: DICOM
    PS3.3 C.11.2.1.2 requires at least 1), or None (a usable window, a VOI LUT, or none)."""
    from pydicom.multival import MultiValue

    if "VOILUTSequence" in ds or "WindowCenter" not in ds:
        return None
    width = ds.get("WindowWidth")
    first = width[0] if isinstance(width, MultiValue) and len(width) else width  # the default window
    try:
        value = float(first)
    except (TypeError, ValueError):
        return f"WindowWidth {width!r} is not a number"
    return None if value >= 1 else f"WindowWidth {value:g} (DICOM requires at least 1)"


def _find(folder: Path, image_id: str) -> tuple[Path | None, str]:
    """The file of `image_id` and the extension it has ('' when none is found)."""
    for ext in (".dicom", ".dcm", ""):
        p = folder / f"{image_id}{ext}"
        if p.is_file():
            return p, ext
    return None, ""


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
    max_pixels: int | None = None,
    allow_outside_paths: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    """Import the DICOM files under `folder` that `boxes_csv` boxes into a pool (module doc)."""
    folder = Path(folder)
    max_pixels = pixel_limit(max_pixels)  # read once: a bad $XGAL_MAX_IMAGE_PIXELS fails before writing
    rows = read_csv(Path(boxes_csv), [])
    cls_col = "class_name" if "class_name" in rows[0] else "class"
    need = ["image_id", cls_col, *BOX_COLUMNS]
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise InvalidArgument(f"{boxes_csv}: missing columns {', '.join(missing)}")
    per_image: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    first_line: dict[str, int] = {}
    for line, r in enumerate(rows, start=2):
        first_line.setdefault(r["image_id"], line)
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
    located = {i: _find(folder, i) for i in sources}
    refuse_outside(
        folder,
        ((f"{boxes_csv} line {first_line[i]} image_id", f"{i}{ext}") for i, (_, ext) in located.items()),
        allow_outside_paths,
    )
    notes: list[str] = []

    def convert(image_id: object) -> Iterator[Sample]:
        path = located[str(image_id)][0]
        if path is None:
            raise ImportError_(f"{folder}/{image_id}(.dicom|.dcm): file not found")
        unit = dicom_to_unit(path, window, max_pixels=max_pixels, notes=notes)
        h, w = unit.shape
        boxes = {c: b for c, b in per_image[str(image_id)].items() if c in names}
        area = {c: float(boxes_to_mask(b, h, w, str(path)).sum()) for c, b in boxes.items()}
        label = max(sorted(area), key=lambda c: area[c])
        mask = boxes_to_mask(boxes[label], h, w, str(path))
        img = resize_image(unit.astype(np.float32), size)[None]
        yield Sample(str(image_id), to_pixels(img, pixel_dtype), resize_mask(mask, size), names.index(label))

    pool, report = write_pool(
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
    report.notes = notes
    return pool, report


DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset zipped


def _check_deflated(path: Path, max_pixels: int | None) -> None:
    """A deflated file is inflated whole by pydicom before any header can be read: inflate it
    here first, at most 8 bytes a pixel of the limit (and 16 MB of header), and refuse it by
    name beyond that, before pydicom sees it."""
    import zlib

    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception:  # not DICOM, or no file meta: dcmread says what is wrong
        return
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        return
    length = meta.get("FileMetaInformationGroupLength")
    if length is None:
        raise ImportError_(f"{path}: a deflated DICOM without its file meta group length; not read")
    bound = 8 * pixel_limit(max_pixels) + (16 << 20)
    inflate, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        f.seek(132 + 12 + int(length))  # preamble, "DICM", the group length element, group 2
        while (chunk := f.read(1 << 20)) and size <= bound:
            size += len(inflate.decompress(chunk, bound + 1 - size))
            while inflate.unconsumed_tail and size <= bound:
                size += len(inflate.decompress(inflate.unconsumed_tail, bound + 1 - size))
    if size > bound:
        raise ImportError_(
            f"{path}: a deflated DICOM inflating past {bound:,} bytes, beyond the pixel limit of "
            f"{pixel_limit(max_pixels):,} ({RAISE_IT})"
        )

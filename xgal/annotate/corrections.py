"""The ROIs offered to a radiologist to correct, and what correcting them saved.

Where the pool has no ROI for a scan and the model has an ROI head, the hand-off offers the
predicted ROI (the round's PREFILL file; Label Studio shows it as an editable brush). What the
radiologist returns is recorded as their ROI, as always; an offer they never saw or accepted is
never recorded as theirs. Per answered scan with an offer, ROI_CORRECTIONS says how far the
returned ROI is from it: drawing from nothing paints every returned pixel, correcting paints or
erases only the pixels that differ, so `saved` = returned − changed (negative: the offer cost
more than it saved).
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xgal.annotate.hints import png_bytes
from xgal.annotate.layout import PREFILL, PREFILL_MASKS, ROI_CORRECTIONS, file_name
from xgal.core.durable import atomic_write, npz_bytes
from xgal.core.errors import InvalidArgument
from xgal.core.spreadsheet import read_rows, write_rows
from xgal.pool.shards import npy_header

CORRECTION_COLUMNS = ("id", "prefilled", "returned", "changed", "saved")


def write_prefill(folder: Path, ids: Sequence[str], offered: np.ndarray, masks: np.ndarray) -> None:
    """Keep the predicted ROIs `masks` [n, H, W] of the scans `offered` ([n] bool) in `folder`:
    PREFILL for Label Studio, and one mask PNG per scan in PREFILL_MASKS to edit and hand back
    with `xgal annotations add --masks`."""
    from PIL import Image

    if not offered.any():
        return
    kept = np.asarray(ids, dtype=str)[offered]
    binary = (masks[offered] > 0).astype(np.uint8)
    (folder / PREFILL_MASKS).mkdir(exist_ok=True)
    for sample_id, mask in zip(kept.tolist(), binary, strict=True):
        png = png_bytes(Image.fromarray(mask * 255))
        atomic_write(folder / PREFILL_MASKS / f"{file_name(sample_id)}.png", png)
    atomic_write(folder / PREFILL, npz_bytes(True, ids=kept, rois=binary))


def read_prefill(folder: Path, meta: dict) -> np.ndarray:
    """The ROIs offered for the round's scans (request.json's order), [n, H, W] uint8, zeros for a
    scan offered none. The file is read as data only: not through a link, no pickle, its size
    bounded by what the round can hold before anything is inflated; one that is not what
    `write_prefill` writes is refused by name (InvalidArgument)."""
    ids = list(meta["ids"])
    h, w = meta["image_size"]
    out = np.zeros((len(ids), h, w), np.uint8)
    path = folder / PREFILL
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return out
    except OSError as e:
        raise InvalidArgument(f"{path} cannot be read as the round's offered ROIs: {e}") from None
    limit = _limit(len(ids), h, w)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    try:
        if len(data) > limit:  # read no further: it is larger than the round's ROIs can be
            raise ValueError("larger than the round's ROIs can be")
        with zipfile.ZipFile(io.BytesIO(data)) as z:  # the members' sizes, before inflating them
            if sum(i.file_size for i in z.infolist()) > limit or _declared(z) > limit:
                raise ValueError("larger than the round's ROIs can be")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            names, masks = z["ids"], z["rois"]
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        why = f"{path} is not the round's offered ROIs ({e}); delete it to offer none"
        raise InvalidArgument(why) from None
    if masks.ndim != 3 or masks.shape[1:] != (h, w) or len(masks) != len(names):
        raise InvalidArgument(f"{path} holds ROIs of shape {masks.shape}, not [n, {h}, {w}]; delete it")
    position = {s: i for i, s in enumerate(ids)}
    for name, mask in zip(names.tolist(), masks, strict=True):
        if name in position:
            out[position[name]] = mask > 0
    return out


def _declared(z: zipfile.ZipFile) -> int:
    """Bytes the members' .npy headers declare: what np.load allocates before it reads a byte."""
    total = 0
    for info in z.infolist():
        with z.open(info) as member:
            dtype, shape, _ = npy_header(member)
        total += math.prod(shape) * dtype.itemsize
    return total


def _limit(n: int, h: int, w: int) -> int:
    """Bytes a round's PREFILL may take, inflated or not: its masks, IDs and headers."""
    return n * (h * w + 4 * 256) + 64 * 1024


def correction(prefilled: np.ndarray, returned: np.ndarray) -> dict[str, int]:
    """Pixels of the offer, of the returned ROI, that differ between them, and saved (returned −
    changed)."""
    a, b = prefilled > 0, returned > 0
    changed, returned_px = int((a ^ b).sum()), int(b.sum())
    return {
        "prefilled": int(a.sum()),
        "returned": returned_px,
        "changed": changed,
        "saved": returned_px - changed,
    }


def record_corrections(folder: Path, meta: dict, returned: set[str], rois: np.ndarray) -> None:
    """Write ROI_CORRECTIONS for the scans of the round offered an ROI whose ROI came back (drawn,
    kept or edited; an offer never engaged with is not a correction)."""
    prefill = read_prefill(folder, meta)
    rows = [
        [sample_id, *correction(prefill[i], rois[i]).values()]
        for i, sample_id in enumerate(meta["ids"])
        if sample_id in returned and prefill[i].any()
    ]
    if rows:
        write_rows(folder / ROI_CORRECTIONS, list(CORRECTION_COLUMNS), rows)


def corrections_summary(folder: Path) -> dict[str, float] | None:
    """Totals of a round's ROI_CORRECTIONS (None without one), for people and reports."""
    path = folder / ROI_CORRECTIONS
    if not path.is_file():
        return None
    rows = read_rows(path)
    total = {k: float(sum(int(r[k]) for r in rows)) for k in CORRECTION_COLUMNS[1:]}
    return {"scans": float(len(rows)), **total}

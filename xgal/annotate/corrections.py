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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xgal.annotate.layout import PREFILL, ROI_CORRECTIONS
from xgal.core.durable import atomic_write, npz_bytes
from xgal.core.spreadsheet import read_rows, write_rows

CORRECTION_COLUMNS = ("id", "prefilled", "returned", "changed", "saved")


def write_prefill(folder: Path, ids: Sequence[str], offered: np.ndarray, masks: np.ndarray) -> None:
    """Keep the predicted ROIs `masks` [n, H, W] of the scans `offered` ([n] bool) in `folder`."""
    if offered.any():
        kept = np.asarray(ids, dtype=str)[offered]
        atomic_write(folder / PREFILL, npz_bytes(True, ids=kept, rois=(masks[offered] > 0).astype(np.uint8)))


def read_prefill(folder: Path, meta: dict) -> np.ndarray:
    """The ROIs offered for the round's scans (request.json's order), [n, H, W] uint8, zeros for a
    scan offered none; entries for scans the round did not ask about, or of another size, are
    ignored (the file is the run's own, but read as data, never trusted as code)."""
    ids = list(meta["ids"])
    h, w = meta["image_size"]
    out = np.zeros((len(ids), h, w), np.uint8)
    path = folder / PREFILL
    if not path.is_file():
        return out
    position = {s: i for i, s in enumerate(ids)}
    with np.load(path, allow_pickle=False) as z:
        names, masks = z["ids"], z["rois"]
        if masks.ndim != 3 or masks.shape[1:] != (h, w) or len(masks) != len(names):
            return out
        for name, mask in zip(names.tolist(), masks, strict=True):
            if name in position:
                out[position[name]] = mask > 0
    return out


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


def record_corrections(folder: Path, meta: dict, answered: set[str], rois: np.ndarray) -> None:
    """Write ROI_CORRECTIONS for the answered scans of the round that were offered an ROI."""
    prefill = read_prefill(folder, meta)
    rows = [
        [sample_id, *correction(prefill[i], rois[i]).values()]
        for i, sample_id in enumerate(meta["ids"])
        if sample_id in answered and prefill[i].any()
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

"""`xgal annotations add`: a radiologist's answers to the open round, checked, then recorded.

The answers are a CSV of `id,label` (the request's `labels.csv`, filled in), and optionally ROIs:
mask images `<id>.png` of the pool's size in a folder (other files are ignored; a label map's
non-zero pixels, or a JPEG-like mask's above half its range, are inside) or a CSV of
boxes `id,x_min,y_min,x_max,y_max` in the pool's pixels. A scan given no ROI keeps the one the
pool holds. Everything is checked before anything is written: IDs the round asked about, each
once, every one answered, known class names, masks of the pool's size. A round's answers are
written once (`answers.npz`, whole or not at all) and never replaced: one writer at a time holds
the round's lock, and the file is linked into place, which fails if it exists. It is the record:
`OUT/dataset/dataset.json` then lists every answer so far (`xgal.annotate.datalist`), and is
caught up by the next command if one was killed in between.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from xgal.annotate.corrections import record_corrections
from xgal.annotate.datalist import ensure_current
from xgal.annotate.layout import ANSWERS, META, file_name, round_folders
from xgal.core.durable import held, npz_bytes, write_once
from xgal.core.errors import InvalidArgument
from xgal.core.spreadsheet import read_rows
from xgal.pool.format import Pool
from xgal.pool.importers.common import BOX_COLUMNS, boxes_to_mask, read_box, read_mask

LOCK = ".answers.lock"  # in a round's folder: held by the one process recording its answers

log = logging.getLogger(__name__)


def open_round(out: str | Path) -> Path:
    """The round folder waiting for answers (request written, no answers yet). Catches the
    run's dataset.json up with its answers first (`datalist.ensure_current`)."""
    ensure_current(out)
    rounds = round_folders(out, META)
    waiting = [p for p in rounds if not (p / ANSWERS).is_file()]
    if not waiting:
        done = f" (answered: {', '.join(p.name for p in rounds)})" if rounds else ""
        raise InvalidArgument(
            f"no round of {out} waits for answers{done}; run xgal train to make the next request"
        )
    return waiting[-1]


def record_answers(
    out: str | Path,
    labels_csv: str | Path,
    *,
    masks: str | Path | None = None,
    boxes: str | Path | None = None,
    partial: bool = False,
) -> tuple[Path, int]:
    """Check and record the answers to the open round; returns its folder and how many were
    answered. `partial`: close the round with the scans answered (at least one); the others
    are recorded as unanswered (label -1), stay unlabelled and may be asked again later."""
    if masks is not None and boxes is not None:
        raise InvalidArgument("give ROIs as --masks or as --boxes, not both")
    folder = open_round(out)
    meta = json.loads((folder / META).read_text())
    ids, names = list(meta["ids"]), list(meta["class_names"])
    h, w = meta["image_size"]
    answered = _read_labels(Path(labels_csv), ids, names)
    drawn = (
        _masks(Path(masks), ids, h, w)
        if masks is not None
        else _boxes(Path(boxes), ids, h, w)
        if boxes
        else {}
    )
    return folder, save_answers(out, folder, answered, drawn, partial=partial, source=str(labels_csv))


def save_answers(
    out: str | Path,
    folder: Path,
    answered: dict[str, str],
    drawn: dict[str, np.ndarray],
    *,
    partial: bool,
    source: str,
) -> int:
    """Record the open round's answers (`answered`: ID -> class name, `drawn`: ID -> ROI mask,
    both already checked against the request) once every scan asked about has one, or with
    `partial` at least one; `source` names where they came from in the error. Returns how many
    were answered. Shared by the CSV answers and Label Studio's (`xgal label-studio pull`).
    Of two processes recording one round, one records and the other is refused by name."""
    with held(folder / LOCK, wait=False) as mine:
        if not mine:
            raise InvalidArgument(
                f"{folder.name} of {out} is being recorded right now by another xgal annotations add "
                f"or xgal label-studio pull; nothing was recorded from {source}: once it has finished, "
                "run xgal train to go on (or, if it was refused, record these answers again)"
            )
        if (folder / ANSWERS).exists():
            raise _answered_meanwhile(out, folder, source)
        for stale in folder.glob(f".{ANSWERS}.*.tmp"):  # a killed writer's, half written or not
            stale.unlink(missing_ok=True)
        n = _save(folder, answered, drawn, partial=partial, source=source)
    ensure_current(out)
    return n


def _answered_meanwhile(out: str | Path, folder: Path, source: str) -> InvalidArgument:
    return InvalidArgument(
        f"{folder.name} of {out} was answered meanwhile (by another xgal annotations add or xgal "
        f"label-studio pull); nothing was recorded from {source}: its answers are never replaced"
    )


def _save(
    folder: Path, answered: dict[str, str], drawn: dict[str, np.ndarray], *, partial: bool, source: str
) -> int:
    meta = json.loads((folder / META).read_text())
    ids, names = list(meta["ids"]), list(meta["class_names"])
    missing = [s for s in ids if s not in answered]
    if missing and not (partial and answered):
        raise InvalidArgument(
            f"{source}: {len(missing)} of {len(ids)} scans have no label ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); nothing was recorded: answer them and try again, "
            "or close the round with what was answered (--partial)"
        )
    rois = request_rois(meta).copy()
    for sample_id, roi in drawn.items():
        rois[ids.index(sample_id)] = roi
    labels = np.array([names.index(answered[s]) if s in answered else -1 for s in ids], dtype=np.int64)
    data = npz_bytes(True, ids=np.array(ids, dtype=str), labels=labels, rois=rois)
    try:
        write_once(folder / ANSWERS, data)
    except FileExistsError:  # only a writer that ignores the lock gets here
        raise _answered_meanwhile(folder.parent, folder, source) from None
    # Derived from what was just recorded: the scans whose ROI came back, against their offer.
    try:
        record_corrections(folder, meta, set(drawn) & set(answered), rois)
    except InvalidArgument as e:
        log.warning("the answers are recorded; what correcting the offered ROIs saved is not: %s", e)
    return len(answered)


def request_rois(meta: dict) -> np.ndarray:
    """The pool's ROIs of a round's requested scans (its request.json), in the order asked."""
    pool = Pool(meta["pool"])
    index = {s: i for i, s in enumerate(pool.ids().tolist())}
    return pool.take([index[s] for s in meta["ids"]], ("rois",))["rois"]


def _read_labels(path: Path, ids: list[str], names: list[str]) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {path}")
    rows = read_rows(path)
    if not rows or not {"id", "label"} <= set(rows[0]):
        raise InvalidArgument(f"{path}: needs the columns id,label (the round's labels.csv, filled in)")
    asked = set(ids)
    got: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        sample_id, label = row["id"].strip(), row["label"].strip()
        if sample_id not in asked:
            raise InvalidArgument(
                f"{path} line {line}: {sample_id!r} is not among the scans this round asked about"
            )
        if sample_id in got:
            raise InvalidArgument(f"{path} line {line}: {sample_id!r} is answered twice")
        if label and label not in names:
            raise InvalidArgument(f"{path} line {line}: {label!r} is not a class ({', '.join(names)})")
        if label:
            got[sample_id] = label
    return got


def _masks(folder: Path, ids: list[str], h: int, w: int) -> dict[str, np.ndarray]:
    """The masks in `folder`, named as the round's scans (`<file name>.png`, any case of .png);
    other files are ignored, a PNG named for no scan of the round is an error naming it."""
    if not folder.is_dir():
        raise FileNotFoundError(f"masks folder not found: {folder}")
    by_file = {file_name(s): s for s in ids}
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue
        if path.stem not in by_file:
            raise InvalidArgument(f"{path}: no scan of this round is called {path.stem!r}")
        out[by_file[path.stem]] = read_mask(path, h, w, "each scan")
    return out


def _boxes(path: Path, ids: list[str], h: int, w: int) -> dict[str, np.ndarray]:
    rows = read_rows(path)
    if rows and not {"id", *BOX_COLUMNS} <= set(rows[0]):
        raise InvalidArgument(f"{path}: needs the columns id,{','.join(BOX_COLUMNS)}")
    per: dict[str, list[tuple[float, float, float, float]]] = {}
    for line, row in enumerate(rows, start=2):
        if row["id"] not in ids:
            raise InvalidArgument(
                f"{path} line {line}: {row['id']!r} is not among the scans this round asked about"
            )
        per.setdefault(row["id"], []).append(read_box(row, f"{path} line {line}"))
    return {s: boxes_to_mask(b, h, w, f"{path} ({s})") for s, b in per.items()}

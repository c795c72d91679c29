"""The folder hand-off: a round's selection as files a radiologist can answer.

Each round the loop asks for labels, `FolderAnnotator` writes `OUT/round-N/`:

    request.csv    rank,id,score,uncertainty,misalignment,predicted,probability,chosen_by (round
                   0, the initial set, has no model yet: those cells are empty; chosen_by says
                   what chose the scans: the initial draw, the cold start or the round's formula)
    ranking.json   the same rows as the scorers returned them (probabilities included)
    hints/<id>.png the scan, the ROI the misalignment was measured against outlined (green: the
                   expert's, cyan: the body found in the scan, magenta: the one the model's ROI
                   head predicts), the model's Grad-CAM over it with its colour scale, and the
                   predicted class written on it
    scans/<id>.png the scan at the pool's size, to draw a mask on
    prefill/<id>.png, prefill_rois.npz  the predicted ROI where the pool has none (only when M was
                   measured against it): to correct and hand back rather than draw anew
    labels.csv     the template to fill: id,label (a class name)
    request.json   what `xgal annotations add` checks answers against (written last)

and stops the run (`AwaitingAnnotations`). `xgal annotations add` (`answers.record_answers`)
records the answers; running `xgal train` again reads them and goes on. Answers once recorded
are never asked for again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xgal.annotate.annotator import AnnotationRequest, AwaitingAnnotations, PendingRequest
from xgal.annotate.corrections import write_prefill
from xgal.annotate.datalist import ensure_current
from xgal.annotate.hints import hint_image, png_bytes, scan_image
from xgal.annotate.layout import (
    ANSWERS,
    HINTS,
    META,
    PREFILL_MASKS,
    RANKING,
    REQUEST,
    REQUEST_COLUMNS,
    SCANS,
    TEMPLATE,
    file_name,
    round_folder,
)
from xgal.core.contract import ROW_ROI_SOURCES
from xgal.core.durable import atomic_write
from xgal.core.errors import InvalidArgument
from xgal.core.masks import roi_present
from xgal.core.spreadsheet import write_rows


class FolderAnnotator:
    """Annotation through files (see the module doc): the default when the pool has no labels."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)

    def annotate(self, request: PendingRequest) -> tuple[np.ndarray, np.ndarray]:
        ensure_current(self.out)  # a command killed after recording left dataset.json behind
        ids, n = request.ids, request.round_index
        folder = round_folder(self.out, n)
        answers = folder / ANSWERS
        if answers.is_file():
            with np.load(answers, allow_pickle=False) as stored:
                if stored["ids"].tolist() != list(ids):
                    raise InvalidArgument(f"{answers} answers other scans than round {n} asked about")
                return stored["labels"], stored["rois"]
        if not (folder / META).is_file():
            write_request(folder, ids, request.build())
        meta = json.loads((folder / META).read_text())
        h, w = meta["image_size"]
        chosen = f"  {meta['ranked_by']}\n" if meta.get("ranked_by") else ""
        if (folder / PREFILL_MASKS).is_dir():
            chosen += (
                f"  the model's predicted ROIs, to correct rather than draw anew: {folder / PREFILL_MASKS}/"
                " (hand the corrected ones back with --masks)\n"
            )
        raise AwaitingAnnotations(
            f"round {n}: {len(ids)} scans wait for a radiologist in {folder}/\n{chosen}"
            f"  look at {folder / HINTS}/ (the scan, the ROI outlined, the model's Grad-CAM), fill in "
            f"{folder / TEMPLATE} (a class per scan: {', '.join(meta['class_names'])}),\n"
            f"  ROIs, if you draw them: {w}x{h} masks named as the scans in {folder / SCANS}/\n"
            f"  then: xgal annotations add {self.out} --labels {folder / TEMPLATE} "
            "[--masks DIR | --boxes CSV]\n"
            "  and run the same xgal train command again to go on."
        )


def write_request(folder: Path, ids: Sequence[str], request: AnnotationRequest) -> None:
    """request.csv, ranking.json, hints/, scans/, the labels.csv template and request.json
    (written last: its presence says the request is complete)."""
    (folder / HINTS).mkdir(parents=True, exist_ok=True)
    predicted = request.probs.argmax(1) if request.probs is not None else None
    if request.ranking:
        atomic_write(folder / RANKING, json.dumps([request.ranking[i] for i in ids]).encode())
    rows = []
    for i, sample_id in enumerate(ids):
        row = request.ranking.get(sample_id, {})
        pred = request.class_names[predicted[i]] if predicted is not None else ""
        prob = f"{request.probs[i].max():.4f}" if request.probs is not None else ""
        scores = (_cell(row.get(k)) for k in ("score", "uncertainty", "misalignment"))
        rows.append([i + 1, sample_id, *scores, pred, prob, request.ranked_by])
    write_rows(folder / REQUEST, REQUEST_COLUMNS, rows)
    write_rows(folder / TEMPLATE, ["id", "label"], [[sample_id, ""] for sample_id in ids])
    (folder / SCANS).mkdir(exist_ok=True)
    for i, sample_id in enumerate(ids):
        atomic_write(folder / SCANS / f"{file_name(sample_id)}.png", png_bytes(scan_image(request.images[i])))
    for i, sample_id in enumerate(ids):
        title = (
            f"predicted {request.class_names[predicted[i]]} ({request.probs[i].max():.2f})"
            if predicted is not None and request.probs is not None
            else "no model yet"
        )
        if request.cold_start:
            title = f"cold start: {title}"
        outlined = request.rois if request.hint_rois is None else request.hint_rois
        code = 1 if request.hint_sources is None else int(request.hint_sources[i])
        cam = None if request.cams is None else request.cams[i]
        hint = hint_image(request.images[i], outlined[i], cam, title, source=ROW_ROI_SOURCES[code or 1])
        atomic_write(folder / HINTS / f"{file_name(sample_id)}.png", png_bytes(hint))
    if request.hint_sources is not None and request.hint_rois is not None:
        # The predicted ROI, offered to correct where the pool has none (Label Studio's brush).
        none_drawn, found = ~roi_present(request.rois), roi_present(request.hint_rois)
        learned = request.hint_sources == ROW_ROI_SOURCES.index("learned")
        write_prefill(folder, ids, learned & none_drawn & found, request.hint_rois)
    meta = {
        "round": request.round_index,
        "ids": list(ids),
        "class_names": list(request.class_names),
        "image_size": list(request.images.shape[-2:]),
        "pool": request.pool,
        "ranked_by": request.ranked_by,
        "cold_start": request.cold_start,
    }
    atomic_write(folder / META, json.dumps(meta, indent=1).encode())


def _cell(value: object) -> str:
    return "" if value is None else f"{float(value):.6g}"  # type: ignore[arg-type]

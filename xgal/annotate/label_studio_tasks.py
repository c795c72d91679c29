"""What a round looks like in Label Studio, and what a radiologist's annotations there mean.

A round's folder (`xgal.annotate.folder`) becomes one task per scan: the scan itself (at the
pool's size, so drawn ROIs come back in the pool's pixels), the Grad-CAM hint, and a caption
with xgal's rank, score and prediction. Each task carries one prediction (Label Studio's word
for a pre-annotation): the predicted class pre-selected, the pool's ROI as an editable brush
region (where the pool has none, the ROI the model's head predicts, when the round offered one:
`annotate/corrections.py`), and xgal's score as the prediction's score, by which Label Studio's
Data Manager sorts.
Pictures are served by Label Studio's local-files storage from a folder of their own,
`RUN/label-studio/round-N/{scans,hints}/` (links to the round's pictures, never the models,
answers or state beside them): nothing is uploaded, nothing leaves the machine.

Annotations come back as the same records as the folder hand-off's answers: a class name per
scan and its ROI mask (brush regions and rectangles united; the pre-filled ROI, kept, edited or
deleted, is part of what the radiologist submits). An annotation that cannot be read
(a corrupt brush RLE, a rectangle without coordinates, a malformed choice) is reported by task
and reason, and its scan counts as not answered: one bad task never hides the others' answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from xgal.annotate.answers import request_rois
from xgal.annotate.corrections import read_prefill
from xgal.annotate.layout import HINTS, META, REQUEST, SCANS, file_name
from xgal.core.errors import InvalidArgument
from xgal.core.spreadsheet import read_rows
from xgal.pool.importers.common import boxes_to_mask

# The label config's control names: what `read_answers` looks for in an annotation.
CHOICE, BRUSH, BOX, IMAGE = "label", "roi", "box", "scan"
# One prediction version for every round: Label Studio pre-fills tasks and fills the Data
# Manager's score column from the project's model version only.
MODEL_VERSION = "xgal"
ROI_LABEL = "ROI"
HINT_TITLE = "xgal's hint: the model's Grad-CAM over the scan and the ROI it was measured against"


def label_config(class_names: Iterable[str]) -> str:
    """The labelling interface: the scan with a brush and a rectangle tool for the ROI, and the
    Grad-CAM hint beside it (both in one screen, so a click does not scroll the page), then one
    required class choice."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    return f"""<View>
  <Header value="$caption"/>
  <View style="display: flex; gap: 16px; align-items: flex-start">
    <View style="flex: 3">
      <Image name="{IMAGE}" value="$scan" zoom="true" zoomControl="true" maxHeight="60vh"/>
    </View>
    <View style="flex: 2">
      <Header size="5" value="{HINT_TITLE}"/>
      <Image name="hint" value="$hint" maxHeight="50vh"/>
    </View>
  </View>
  <Choices name="{CHOICE}" toName="{IMAGE}" choice="single" showInline="true" required="true">
{choices}
  </Choices>
  <BrushLabels name="{BRUSH}" toName="{IMAGE}">
    <Label value="{ROI_LABEL}" background="#00ff00"/>
  </BrushLabels>
  <RectangleLabels name="{BOX}" toName="{IMAGE}">
    <Label value="{ROI_LABEL}" background="#00cc00"/>
  </RectangleLabels>
</View>"""


def local_url(path: Path, document_root: Path) -> str:
    """Label Studio's URL for a file under its LOCAL_FILES_DOCUMENT_ROOT."""
    try:
        rel = path.resolve().relative_to(document_root.resolve())
    except ValueError:
        raise InvalidArgument(
            f"{path} is not under Label Studio's local-files document root {document_root}: start "
            "Label Studio with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a folder that holds the run"
        ) from None
    return "/data/local-files/?d=" + quote(rel.as_posix())


def picture_urls(served: Path, sample_id: str, document_root: Path) -> dict[str, str]:
    """A task's `scan` and `hint` URLs: its pictures in `served` (RUN/label-studio/round-N)."""
    name = f"{file_name(sample_id)}.png"
    return {
        key: local_url(served / sub / name, document_root) for key, sub in (("scan", SCANS), ("hint", HINTS))
    }


def round_tasks(folder: Path, document_root: Path, served: Path) -> list[dict[str, Any]]:
    """The tasks (data and one prediction each) for the round in `folder`, in rank order; their
    pictures are the copies in `served` (RUN/label-studio/round-N)."""
    meta = json.loads((folder / META).read_text())
    rows = {row["id"]: row for row in read_rows(folder / REQUEST)}
    rois = request_rois(meta)
    offered = read_prefill(folder, meta)  # the model's ROI, to correct where the pool has none
    tasks = []
    for i, sample_id in enumerate(meta["ids"]):
        row = rows.get(sample_id, {})
        predicted = row.get("predicted") or ""
        score = _number(row.get("score"))
        parts = [f"round {meta['round']}", f"rank {i + 1}", sample_id]
        parts.append(f"predicted {predicted} ({row.get('probability')})" if predicted else "no model yet")
        if score is not None and meta.get("cold_start"):  # the score is a random draw's key
            parts.append("chosen by the cold start")
        elif score is not None:
            parts.append(f"xgal score {score:.4g}")
        roi = rois[i] if rois[i].any() else offered[i]
        if not rois[i].any() and offered[i].any():
            parts.append("ROI pre-filled by the model: correct it")
        data = {
            **picture_urls(served, sample_id, document_root),
            "caption": " · ".join(parts),
            "id": sample_id,
            "round": meta["round"],
            "rank": i + 1,
            **{k: _number(row.get(k)) for k in ("score", "uncertainty", "misalignment")},
            "predicted": predicted,
        }
        result: list[dict[str, Any]] = []
        if predicted:
            result.append(
                {"id": f"class{i}", "from_name": CHOICE, "to_name": IMAGE, "type": "choices",
                 "value": {"choices": [predicted]}}
            )  # fmt: skip
        if roi.any():
            result.append(brush_result(roi, f"roi{i}"))
        prediction = {"model_version": MODEL_VERSION, "result": result}
        if score is not None:
            prediction["score"] = score
        tasks.append({"data": data, "predictions": [prediction] if result or score is not None else []})
    return tasks


def brush_result(mask: np.ndarray, region_id: str) -> dict[str, Any]:
    """A mask as a Label Studio brush region (its RLE over RGBA pixels)."""
    from label_studio_sdk.converter.brush import mask2rle

    h, w = mask.shape
    return {
        "id": region_id,
        "from_name": BRUSH,
        "to_name": IMAGE,
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": mask2rle((mask > 0).astype(np.uint8) * 255),
            "brushlabels": [ROI_LABEL],
        },
    }


def read_answers(
    tasks: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, str]]:
    """The round's answers in Label Studio's tasks (dicts with `data` and `annotations`): each
    scan's newest submitted annotation, across every task of that scan (skips ignored; a scan
    only skipped is unanswered), gives its class and its ROI: brush regions and rectangles
    united. One started from xgal's pre-filled prediction (`parent_prediction`) with no ROI left
    means the radiologist deleted it: none; one that never showed the pre-filled ROI (a blank
    annotation, predictions hidden) and draws none keeps the pool's. Tasks of other rounds are
    ignored. Returns the classes and ROIs by ID, and the scans whose annotation cannot be read
    (a class or an ROI size the request does not know, a corrupt region), each with one line
    naming the task and why: those count as not answered, and the others are read as usual."""
    ids, names = set(meta["ids"]), list(meta["class_names"])
    h, w = meta["image_size"]
    answered: dict[str, str] = {}
    drawn: dict[str, np.ndarray] = {}
    unreadable: dict[str, str] = {}
    submitted: dict[str, list[tuple[Mapping[str, Any], str]]] = {}
    for task in tasks:
        data = task.get("data")
        if not isinstance(data, Mapping):
            continue
        sample_id = data.get("id")
        if data.get("round") != meta["round"] or not isinstance(sample_id, str) or sample_id not in ids:
            continue
        where = f"Label Studio task {task.get('id')} ({sample_id})"
        try:
            done = _submitted(task.get("annotations"))
        except _Unreadable as e:
            unreadable[sample_id] = f"{where}: {e}"
            continue
        submitted.setdefault(sample_id, []).extend((a, where) for a in done)
    for sample_id, candidates in submitted.items():
        if not candidates:
            continue
        latest, where = max(candidates, key=lambda c: _newest_key(c[0]))
        try:
            result = latest.get("result")
            label, roi = _one_annotation([] if result is None else result, names, h, w)
        except (_Unreadable, KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
            reason = (
                str(e) if isinstance(e, _Unreadable) else f"unreadable annotation ({type(e).__name__}: {e})"
            )
            unreadable[sample_id] = f"{where}: {' '.join(reason.split())}"  # one line, whatever it held
            continue
        unreadable.pop(sample_id, None)
        if label is not None:
            answered[sample_id] = label
        if roi is not None:
            drawn[sample_id] = roi
        elif latest.get("parent_prediction"):  # the pre-filled ROI was shown, and deleted
            drawn[sample_id] = np.zeros((h, w), np.uint8)
    return answered, drawn, unreadable


class _Unreadable(Exception):
    """An annotation that does not say what it should; the message says why."""


def _submitted(annotations: Any) -> list[Mapping[str, Any]]:
    if not isinstance(annotations, list) or not all(isinstance(a, Mapping) for a in annotations):
        raise _Unreadable("its annotations are not a list of annotations")
    return [a for a in annotations if not a.get("was_cancelled")]


def _newest_key(annotation: Mapping[str, Any]) -> tuple[str, str]:
    return str(annotation.get("updated_at") or ""), str(annotation.get("id") or "").zfill(20)


def _one_annotation(result: Any, names: list[str], h: int, w: int) -> tuple[str | None, np.ndarray | None]:
    if not isinstance(result, list) or not all(isinstance(r, Mapping) for r in result):
        raise _Unreadable("its result is not a list of regions")
    label, roi = None, None
    boxes = []
    for region in result:
        kind, value = region.get("type"), region.get("value")
        if not isinstance(value, Mapping):
            raise _Unreadable(f"a {kind!r} region without a value")
        if kind == "choices" and region.get("from_name") == CHOICE:
            chosen = value.get("choices")
            if not isinstance(chosen, list):
                raise _Unreadable(f"the class choice {chosen!r} is not a list")
            if len(chosen) != 1 or chosen[0] not in names:
                raise _Unreadable(f"class {chosen!r} is not one of {', '.join(names)}")
            label = chosen[0]
        elif kind in ("brushlabels", "rectanglelabels"):
            size = (region.get("original_height"), region.get("original_width"))
            if size != (h, w):
                raise _Unreadable(f"an ROI drawn on a {size[1]}x{size[0]} image, not the scan's {w}x{h}")
            if kind == "brushlabels":
                mask = _decode_brush(value, h, w)
                roi = mask if roi is None else roi | mask
            else:
                x, y, bw, bh = (_percent(value, k) for k in ("x", "y", "width", "height"))
                x0, y0 = x * w / 100, y * h / 100
                boxes.append((x0, y0, x0 + bw * w / 100, y0 + bh * h / 100))
    if boxes:
        try:
            mask = boxes_to_mask(boxes, h, w, "a rectangle")
        except InvalidArgument as e:
            raise _Unreadable(str(e)) from None
        roi = mask if roi is None else roi | mask
    return label, roi


def _percent(value: Mapping[str, Any], key: str) -> float:
    v = value.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise _Unreadable(f"a rectangle whose {key} is {v!r}, not a number (percent of the image)")
    return float(v)


# An RLE's header: 32 bits of value count, 5 of word size, 4 x 4 of run-length sizes (7 bytes).
RLE_HEADER_BYTES = 7
# Most bits one value can take in the RLE (a run of one: 1 + 2 + 16 length bits, a 32-bit word).
RLE_BITS_PER_VALUE = 51


def _decode_brush(value: Mapping[str, Any], h: int, w: int) -> np.ndarray:
    """A brush region's mask, its RLE checked before decoding: bytes, the value count its header
    declares equal to the scan's (RGBA) size, no longer than such an RLE can be, and complete."""
    from label_studio_sdk.converter.brush import decode_rle

    rle = value.get("rle")
    if value.get("format") != "rle":
        raise _Unreadable(f"a brush region in format {value.get('format')!r}, not rle")
    if not isinstance(rle, list) or not rle:
        raise _Unreadable(f"a brush region whose RLE is {type(rle).__name__}, not a list of bytes")
    if not all(type(b) is int and 0 <= b <= 255 for b in rle):
        raise _Unreadable("a brush region whose RLE is not a list of bytes")
    if len(rle) < RLE_HEADER_BYTES:
        raise _Unreadable(
            f"a brush region whose RLE is truncated ({len(rle)} bytes, shorter than its header)"
        )
    declared = int.from_bytes(bytes(rle[:4]), "big")
    if declared != h * w * 4:
        raise _Unreadable(
            f"a brush region whose RLE declares {declared} values, not the {h * w * 4} of the scan's "
            f"{w}x{h} RGBA pixels: refused before decoding"
        )
    if len(rle) > RLE_HEADER_BYTES + declared * RLE_BITS_PER_VALUE // 8 + 1:
        raise _Unreadable(f"a brush region whose RLE is longer ({len(rle)} bytes) than {h * w} pixels need")
    try:
        rgba = decode_rle(rle)
    except (ValueError, IndexError, OverflowError):  # the bits ran out, or a value or run overflows
        raise _Unreadable("a brush region whose RLE is truncated or corrupt") from None
    if rgba.size != h * w * 4:
        raise _Unreadable(f"a brush region of {rgba.size // 4} pixels, not the scan's {h * w}")
    return (rgba.reshape(h, w, 4)[:, :, 3] > 127).astype(np.uint8)


def _number(cell: str | None) -> float | None:
    """A request.csv cell as a finite number, else None (an edited cell never breaks a push)."""
    try:
        x = float(cell or "")
    except ValueError:
        return None
    return x if math.isfinite(x) else None

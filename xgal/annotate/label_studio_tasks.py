"""What a round looks like in Label Studio, and what a radiologist's annotations there mean.

A round's folder (`xgal.annotate.folder`) becomes one task per scan: the scan itself (at the
pool's size, so drawn ROIs come back in the pool's pixels), the Grad-CAM hint, and a caption
with xgal's rank, score and prediction. Each task carries one prediction (Label Studio's word
for a pre-annotation): the predicted class pre-selected, the pool's ROI as an editable brush
region, and xgal's score as the prediction's score, by which Label Studio's Data Manager sorts.
Pictures are served by Label Studio's local-files storage from the run folder itself: nothing
is uploaded, nothing leaves the machine.

Annotations come back as the same records as the folder hand-off's answers: a class name per
scan and its ROI mask (brush regions and rectangles united; the pre-filled pool ROI, kept,
edited or deleted, is part of what the radiologist submits).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from xgal.annotate.answers import request_rois
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


def label_config(class_names: Iterable[str]) -> str:
    """The labelling interface: the scan with a brush and a rectangle tool for the ROI, one
    required class choice, and the Grad-CAM hint below for reference."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    return f"""<View>
  <Header value="$caption"/>
  <Image name="{IMAGE}" value="$scan" zoom="true" zoomControl="true"/>
  <Choices name="{CHOICE}" toName="{IMAGE}" choice="single" showInline="true" required="true">
{choices}
  </Choices>
  <BrushLabels name="{BRUSH}" toName="{IMAGE}">
    <Label value="{ROI_LABEL}" background="#00ff00"/>
  </BrushLabels>
  <RectangleLabels name="{BOX}" toName="{IMAGE}">
    <Label value="{ROI_LABEL}" background="#00cc00"/>
  </RectangleLabels>
  <Header value="xgal's hint: the model's Grad-CAM over the scan, the pool's ROI outlined in green"/>
  <Image name="hint" value="$hint"/>
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


def round_tasks(folder: Path, document_root: Path) -> list[dict[str, Any]]:
    """The tasks (data and one prediction each) for the round in `folder`, in rank order."""
    meta = json.loads((folder / META).read_text())
    rows = {row["id"]: row for row in read_rows(folder / REQUEST)}
    rois = request_rois(meta)
    tasks = []
    for i, sample_id in enumerate(meta["ids"]):
        row = rows.get(sample_id, {})
        name = f"{file_name(sample_id)}.png"
        predicted = row.get("predicted") or ""
        score = _number(row.get("score"))
        parts = [f"round {meta['round']}", f"rank {i + 1}", sample_id]
        parts.append(f"predicted {predicted} ({row.get('probability')})" if predicted else "no model yet")
        if score is not None:
            parts.append(f"xgal score {score:.4g}")
        data = {
            "scan": local_url(folder / SCANS / name, document_root),
            "hint": local_url(folder / HINTS / name, document_root),
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
        if rois[i].any():
            result.append(brush_result(rois[i], f"roi{i}"))
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
) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The round's answers in Label Studio's tasks (dicts with `data` and `annotations`): each
    scan's newest submitted annotation (skips ignored; a scan only skipped is unanswered) gives
    its class and its ROI: brush regions and rectangles united, or none when the pre-filled ROI
    was deleted. Tasks of other rounds are ignored; a class name or an ROI size the request does
    not know is an error naming the task."""
    ids, names = list(meta["ids"]), list(meta["class_names"])
    h, w = meta["image_size"]
    answered: dict[str, str] = {}
    drawn: dict[str, np.ndarray] = {}
    for task in tasks:
        data = task.get("data") or {}
        sample_id = data.get("id")
        if data.get("round") != meta["round"] or sample_id not in ids:
            continue
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            continue
        latest = max(done, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0))
        where = f"Label Studio task {task.get('id')} ({sample_id})"
        label, roi = _one_annotation(latest.get("result") or [], names, h, w, where)
        if label is not None:
            answered[sample_id] = label
        # The task showed the pool's ROI pre-filled: what was submitted (kept, edited or deleted)
        # is the radiologist's ROI, none at all included.
        drawn[sample_id] = roi if roi is not None else np.zeros((h, w), np.uint8)
    return answered, drawn


def _one_annotation(
    result: list[Mapping[str, Any]], names: list[str], h: int, w: int, where: str
) -> tuple[str | None, np.ndarray | None]:
    label, roi = None, None
    boxes = []
    for region in result:
        kind, value = region.get("type"), region.get("value") or {}
        if kind == "choices" and region.get("from_name") == CHOICE:
            chosen = value.get("choices") or []
            if len(chosen) != 1 or chosen[0] not in names:
                raise InvalidArgument(f"{where}: class {chosen} is not one of {', '.join(names)}")
            label = chosen[0]
        elif kind in ("brushlabels", "rectanglelabels"):
            size = (region.get("original_height"), region.get("original_width"))
            if size != (h, w):
                raise InvalidArgument(
                    f"{where}: an ROI drawn on a {size[1]}x{size[0]} image, not the scan's {w}x{h}"
                )
            if kind == "brushlabels":
                mask = _decode_brush(value, h, w, where)
                roi = mask if roi is None else roi | mask
            else:
                x0, y0 = value["x"] * w / 100, value["y"] * h / 100
                boxes.append((x0, y0, x0 + value["width"] * w / 100, y0 + value["height"] * h / 100))
    if boxes:
        mask = boxes_to_mask(boxes, h, w, where)
        roi = mask if roi is None else roi | mask
    return label, roi


def _decode_brush(value: Mapping[str, Any], h: int, w: int, where: str) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    if value.get("format") != "rle" or not value.get("rle"):
        raise InvalidArgument(f"{where}: a brush region in format {value.get('format')!r}, not rle")
    rgba = decode_rle(value["rle"])
    if rgba.size != h * w * 4:
        raise InvalidArgument(f"{where}: a brush region of {rgba.size // 4} pixels, not the scan's {h * w}")
    return (rgba.reshape(h, w, 4)[:, :, 3] > 127).astype(np.uint8)


def _number(cell: str | None) -> float | None:
    return float(cell) if cell not in (None, "") else None

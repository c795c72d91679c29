"""The folder hand-off: a round's selection as files a radiologist can answer, and the answers
back into the run.

Each round the loop asks for labels, `FolderAnnotator` writes `OUT/round-N/`:

    request.csv    rank,id,score,uncertainty,misalignment,predicted,probability (round 0, the
                   initial set, has no model yet: those cells are empty)
    hints/<id>.png the scan, the ROI the pool holds outlined (green), the model's Grad-CAM over it
                   and the predicted class written on it
    labels.csv     the template to fill: id,label (a class name)
    request.json   what `xgal annotations add` checks answers against

and stops the run (`AwaitingAnnotations`). `xgal annotations add` (`record_answers`) checks the
answers (IDs of this request, known class names, mask sizes) and writes `answers.npz`; running
`xgal train` again reads them and goes on. Answers once recorded are never asked for again.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.trainer.durable import atomic_write

if TYPE_CHECKING:
    from xgal.trainer.loop import ActiveLearningLoop
    from xgal.trainer.nets.classifier import Classifier

REQUEST, TEMPLATE, META, ANSWERS, HINTS = "request.csv", "labels.csv", "request.json", "answers.npz", "hints"
RANKING = "ranking.json"  # the loop's: the scores of the round's selection
REQUEST_COLUMNS = ("rank", "id", "score", "uncertainty", "misalignment", "predicted", "probability")
HINT_SIDE = 256  # pixels: a 64x64 scan is too small to judge on a screen
CAM_BATCH = 32  # scans per Grad-CAM pass for the hints (memory, at 224 px and more)
SCANS = "scans"  # each scan at the pool's size: what masks are drawn on
WAITING_EXIT = 3  # `xgal train`'s exit code while a round waits for answers


class AwaitingAnnotations(Exception):  # noqa: N818 - not an error: the run waits for a person
    """The run stopped at a round whose answers are not in yet; the message says what to do."""


@dataclass
class AnnotationRequest:
    """What the annotator is shown for the selected scans, in the order asked."""

    round_index: int
    images: np.ndarray  # [n, C, H, W] as the pool stores them
    rois: np.ndarray  # [n, H, W] the pool's ROIs (all zero: none)
    class_names: tuple[str, ...]
    pool: str  # the pool's path, for the answers' checks
    cams: np.ndarray | None = None  # [n, H, W] in [0, 1]; None before the first model
    probs: np.ndarray | None = None  # [n, K]
    ranking: dict[str, dict] = field(default_factory=dict)  # id -> score, uncertainty, misalignment


def round_folder(out: Path, r: int) -> Path:
    return Path(out) / f"round-{r}"


def round_folders(out: str | Path, holding: str) -> list[Path]:
    """The run's round folders that hold the file `holding`, in round order."""
    found = (p for p in Path(out).glob("round-*") if (p / holding).is_file())
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def build_request(
    loop: ActiveLearningLoop, n: int, ids: list[str], model: Classifier | None
) -> AnnotationRequest:
    """Request `n` (0: the initial set) of `loop`'s run: the scans, the pool's ROIs, and with a
    model its Grad-CAM, probabilities and the scores that ranked them (`ranking.json`)."""
    from xgal.trainer.gradcam import scores_and_cam
    from xgal.trainer.train import to_input

    rows = loop.pool.take([loop.index[i] for i in ids], ("images", "rois"))
    request = AnnotationRequest(
        round_index=n,
        images=rows["images"],
        rois=rows["rois"],
        class_names=tuple(loop.class_names),
        pool=str(loop.pool.path.resolve()),
    )
    ranking = round_folder(loop.out, n) / RANKING
    if ranking.is_file():
        request.ranking = {row["id"]: row for row in json.loads(ranking.read_text())}
    if model is not None:
        cfg = loop.config
        model.eval()  # a resumed round's model comes back in train mode: no batch statistics here
        x = to_input(rows["images"], loop.scale, cfg.mean, cfg.std)
        device = next(model.parameters()).device
        probs, cams = [], []
        for lo in range(0, len(x), CAM_BATCH):
            scores, cam = scores_and_cam(
                model, model.get_submodule(cfg.layer), x[lo : lo + CAM_BATCH].to(device), differentiable=False
            )
            probs.append(scores.softmax(1).cpu().numpy())
            cams.append(cam.cpu().numpy())
        request.probs, request.cams = np.concatenate(probs), np.concatenate(cams)
    return request


@dataclass
class PendingRequest:
    """A round's request, built only if the annotator has to show it (hints cost a Grad-CAM)."""

    round_index: int
    build: Callable[[], AnnotationRequest]


class RequestAnnotator(Protocol):
    """An annotator that shows a person the round's request (the folder hand-off)."""

    def annotate(self, ids: Sequence[str], request: PendingRequest) -> tuple[np.ndarray, np.ndarray]: ...


class FolderAnnotator:
    """Annotation through files (see the module doc): the default when the pool has no labels."""

    wants_request = True  # the loop hands it a PendingRequest (hints need the model)

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)

    def annotate(self, ids: Sequence[str], request: PendingRequest) -> tuple[np.ndarray, np.ndarray]:
        folder = round_folder(self.out, request.round_index)
        answers = folder / ANSWERS
        if answers.is_file():
            stored = np.load(answers, allow_pickle=False)
            if stored["ids"].tolist() != list(ids):
                raise InvalidArgument(
                    f"{answers} answers other scans than round {request.round_index} asked about"
                )
            return stored["labels"], stored["rois"]
        if not (folder / META).is_file():
            write_request(folder, ids, request.build())
        meta = json.loads((folder / META).read_text())
        h, w = meta["image_size"]
        raise AwaitingAnnotations(
            f"round {request.round_index}: {len(ids)} scans wait for a radiologist in {folder}/\n"
            f"  look at {folder / HINTS}/ (scan, ROI in green, the model's Grad-CAM), fill in "
            f"{folder / TEMPLATE} (a class per scan: {', '.join(meta['class_names'])}),\n"
            f"  ROIs, if you draw them: {w}x{h} masks named <id>.png, drawn on {folder / SCANS}/\n"
            f"  then: xgal annotations add {self.out} --labels {folder / TEMPLATE} "
            "[--masks DIR | --boxes CSV]\n"
            "  and run the same xgal train command again to go on."
        )


def write_request(folder: Path, ids: Sequence[str], request: AnnotationRequest) -> None:
    """request.csv, hints/, the labels.csv template and request.json (written last: its presence
    says the request is complete)."""
    (folder / HINTS).mkdir(parents=True, exist_ok=True)
    predicted = request.probs.argmax(1) if request.probs is not None else None
    with open(folder / REQUEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for i, sample_id in enumerate(ids):
            row = request.ranking.get(sample_id, {})
            pred = request.class_names[predicted[i]] if predicted is not None else ""
            prob = f"{request.probs[i].max():.4f}" if request.probs is not None else ""
            w.writerow(
                [
                    i + 1,
                    sample_id,
                    *(_cell(row.get(k)) for k in ("score", "uncertainty", "misalignment")),
                    pred,
                    prob,
                ]
            )
    with open(folder / TEMPLATE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows([[sample_id, ""] for sample_id in ids])
    (folder / SCANS).mkdir(exist_ok=True)
    for i, sample_id in enumerate(ids):
        _gray(request.images[i]).save(folder / SCANS / f"{file_name(sample_id)}.png")
    for i, sample_id in enumerate(ids):
        title = (
            f"{request.class_names[predicted[i]]} ({request.probs[i].max():.2f})"
            if predicted is not None and request.probs is not None
            else "no model yet"
        )
        hint = hint_image(
            request.images[i],
            request.rois[i],
            None if request.cams is None else request.cams[i],
            title,
        )
        hint.save(folder / HINTS / f"{file_name(sample_id)}.png")
    meta = {
        "round": request.round_index,
        "ids": list(ids),
        "class_names": list(request.class_names),
        "image_size": list(request.images.shape[-2:]),
        "pool": request.pool,
    }
    atomic_write(folder / META, json.dumps(meta, indent=1).encode())


def _cell(value: object) -> str:
    return "" if value is None else f"{float(value):.6g}"  # type: ignore[arg-type]


def file_name(sample_id: str) -> str:
    """A file name for an ID: the ID itself where it is safe, else its safe characters and a
    short hash of it (so `a/b` and `a_b` do not overwrite each other)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
    if safe == sample_id and not safe.startswith("."):
        return safe
    return f"{safe.lstrip('.')}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def hint_image(image: np.ndarray, roi: np.ndarray, cam: np.ndarray | None, title: str):  # noqa: ANN201
    """The scan (first channel) in gray, the Grad-CAM blended over it in jet, the ROI's outline
    in green and `title` on top: a PIL image HINT_SIDE wide."""
    import matplotlib
    from PIL import Image, ImageDraw

    gray = _stretch(image[0])
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if cam is not None:
        heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
        rgb = 0.6 * rgb + 0.4 * heat
    inside = roi > 0
    edge = inside & ~_eroded(inside)
    rgb[edge] = (0.0, 1.0, 0.0)
    img = Image.fromarray((rgb * 255).astype(np.uint8)).resize((HINT_SIDE, HINT_SIDE), Image.NEAREST)
    canvas = Image.new("RGB", (HINT_SIDE, HINT_SIDE + 18), "black")
    canvas.paste(img, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="white")
    return canvas


def _stretch(channel: np.ndarray) -> np.ndarray:
    """To [0, 1] by the image's own 1st–99th percentiles: a 16-bit CT (HU + 1024) stored in
    0–65535 would otherwise show nearly black."""
    v = channel.astype(np.float64)
    lo, hi = np.percentile(v, [1, 99])
    return np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)


def _gray(image: np.ndarray):  # noqa: ANN202 - a PIL image
    """The scan at its own size, for drawing a mask on: 8 bits, its first channel stretched."""
    from PIL import Image

    return Image.fromarray((_stretch(image[0]) * 255).astype(np.uint8))


def _eroded(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]

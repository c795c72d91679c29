"""What a run's radiologist answered, as a Medical Segmentation Decathlon style `dataset.json`
(MONAI's `load_decathlon_datalist`, nnU-Net-style tools): `OUT/dataset/` holds each answered scan
as `images/<id>.png` (16-bit where the pool is), its ROI as `labels/<id>.png` (0 and 1) and, per
entry, the class the radiologist gave, in the order given.

A round's `answers.npz` is the record (a round is closed iff it exists); dataset.json follows it.
It names the answers it lists (`ANSWERS_KEY`: round folder -> SHA-256 of its answers.npz, a key
the Decathlon readers ignore), so `ensure_current` can tell when it is behind (a command killed
between recording a round and rewriting this file) and catch it up: every command that reads a
run calls it. Pictures are written, whole, before the dataset.json that lists them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from xgal.annotate.hints import png_bytes
from xgal.annotate.layout import ANSWERS, META, file_name, round_folders
from xgal.core.checksum import sha256_file
from xgal.core.durable import atomic_write, held
from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool

FOLDER = "dataset"
ANSWERS_KEY = "xgal_answers"  # round folder -> sha256 of the answers.npz this file lists
LOCK = ".dataset.lock"  # in OUT: one writer of OUT/dataset/ at a time


def ensure_current(out: str | Path) -> Path | None:
    """Make `OUT/dataset/dataset.json` list exactly the run's recorded answers, rewriting it
    (and writing the pictures it lacks) only when it does not; None when nothing was answered
    and no dataset exists. Waits for another process rewriting it."""
    out = Path(out)
    path = out / FOLDER / "dataset.json"
    if not round_folders(out, ANSWERS) and not path.exists():
        return None
    with held(out / LOCK, wait=True):
        rounds = round_folders(out, ANSWERS)  # again, under the lock
        digests = {p.name: sha256_file(p / ANSWERS) for p in rounds}
        listed = _listed(path)
        if listed != digests:
            _write(out, rounds, digests, listed or {})
    return path


def _listed(path: Path) -> dict[str, str] | None:
    """The answers an existing dataset.json lists; None when it is missing or unreadable."""
    try:
        listed = json.loads(path.read_text()).get(ANSWERS_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return listed if isinstance(listed, dict) else None


def _write(out: Path, rounds: list[Path], digests: dict[str, str], listed: dict[str, str]) -> None:
    target = out / FOLDER
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "labels").mkdir(parents=True, exist_ok=True)
    entries, names = [], []
    for folder in rounds:
        meta = json.loads((folder / META).read_text())
        names = meta["class_names"]
        answers = np.load(folder / ANSWERS, allow_pickle=False)
        kept = [i for i, label in enumerate(answers["labels"]) if label >= 0]  # -1: unanswered
        files = [file_name(str(answers["ids"][i])) + ".png" for i in kept]
        for i, name in zip(kept, files, strict=True):
            label = int(answers["labels"][i])
            entries.append(
                {
                    "image": f"./images/{name}",
                    "label": f"./labels/{name}",
                    "id": str(answers["ids"][i]),
                    "class": label,
                    "class_name": names[label],
                    "round": int(meta["round"]),
                }
            )
        present = all((target / d / n).is_file() for d in ("images", "labels") for n in files)
        if listed.get(folder.name) != digests[folder.name] or not present:
            _pictures(target, meta, answers, kept, files)
    doc = {
        "name": out.name,
        "description": "scans answered by a radiologist through xgal's folder hand-off",
        "tensorImageSize": "2D",
        "modality": {"0": "image"},
        "labels": {"0": "background", "1": "roi"},
        "classes": names,
        "numTraining": len(entries),
        "training": entries,
        ANSWERS_KEY: digests,
    }
    atomic_write(target / "dataset.json", json.dumps(doc, indent=1).encode())


def _pictures(
    target: Path, meta: dict, answers: Mapping[str, np.ndarray], kept: list[int], files: list[str]
) -> None:
    """A round's scans and ROI masks as PNGs, each replaced whole (a reader of the dataset.json
    already listing it never sees half a picture)."""
    from PIL import Image

    if not kept:
        return
    pool = Pool(meta["pool"])
    index = {s: i for i, s in enumerate(pool.ids().tolist())}
    images = pool.take([index[str(answers["ids"][i])] for i in kept], ("images",))["images"]
    for image, i, name in zip(images, kept, files, strict=True):
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        roi = answers["rois"][i].astype(np.uint8)
        for folder, picture in (("images", pixels), ("labels", roi)):
            atomic_write(target / folder / name, png_bytes(Image.fromarray(picture)))


def map_back(out: str | Path, id_map: str | Path, dest: str | Path) -> Path:
    """A copy of the run's dataset.json at `dest` whose entries also name their source: the
    scan's ID and image path before anonymisation, from the pool's ID map (`xgal.pool.id_map`).
    Kept apart from the run folder, which the radiologist may see."""
    from xgal.pool.id_map import IdMap

    path = ensure_current(out)
    if path is None:
        raise InvalidArgument(f"{out} has no answered round yet: nothing to map back")
    sources = IdMap.read(id_map).sources
    doc = json.loads(path.read_text())
    unknown = [e["id"] for e in doc["training"] if e["id"] not in sources]
    if unknown:
        raise InvalidArgument(
            f"{id_map} does not know {len(unknown)} of the run's scans (e.g. {unknown[0]}): another pool's?"
        )
    for entry in doc["training"]:
        entry["source_id"], entry["source_image"] = sources[entry["id"]]["id"], sources[entry["id"]]["image"]
    dest = Path(dest)
    if dest.resolve().is_relative_to(Path(out).resolve()):
        raise InvalidArgument(
            f"{dest} is inside the run folder, which the radiologist may see: write the sources elsewhere"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, json.dumps(doc, indent=1).encode(), mode=0o600)
    return dest

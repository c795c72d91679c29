"""What a run's radiologist answered, as a Medical Segmentation Decathlon style `dataset.json`
(MONAI's `load_decathlon_datalist`, nnU-Net-style tools): `OUT/dataset/` holds each answered scan
as `images/<id>.png` (16-bit where the pool is), its ROI as `labels/<id>.png` (0 and 1) and, per
entry, the class the radiologist gave. Rewritten whole after every recorded round, so it always
lists every answer, in the order given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xgal.annotate.layout import ANSWERS, META, file_name, round_folders
from xgal.core.durable import atomic_write
from xgal.pool.format import Pool

FOLDER = "dataset"


def write_datalist(out: str | Path) -> Path:
    """`OUT/dataset/dataset.json` and its pictures from every answered round of the run."""
    from PIL import Image

    out = Path(out)
    target = out / FOLDER
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "labels").mkdir(parents=True, exist_ok=True)
    rounds = round_folders(out, ANSWERS)
    entries, names = [], []
    for folder in rounds:
        meta = json.loads((folder / META).read_text())
        names = meta["class_names"]
        answers = np.load(folder / ANSWERS, allow_pickle=False)
        pool = Pool(meta["pool"])
        index = {s: i for i, s in enumerate(pool.ids().tolist())}
        images = pool.take([index[s] for s in answers["ids"]], ("images",))["images"]
        rows = zip(answers["ids"], images, answers["rois"], answers["labels"], strict=True)
        for sample_id, image, roi, label in rows:
            if label < 0:  # left unanswered (a round closed with --partial)
                continue
            name = file_name(str(sample_id)) + ".png"
            pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            Image.fromarray(pixels).save(target / "images" / name)
            Image.fromarray(roi.astype(np.uint8)).save(target / "labels" / name)
            entries.append(
                {
                    "image": f"./images/{name}",
                    "label": f"./labels/{name}",
                    "id": str(sample_id),
                    "class": int(label),
                    "class_name": names[int(label)],
                    "round": int(meta["round"]),
                }
            )
    doc = {
        "name": out.name,
        "description": "scans answered by a radiologist through xgal's folder hand-off",
        "tensorImageSize": "2D",
        "modality": {"0": "image"},
        "labels": {"0": "background", "1": "roi"},
        "classes": names,
        "numTraining": len(entries),
        "training": entries,
    }
    path = target / "dataset.json"
    atomic_write(path, json.dumps(doc, indent=1).encode())
    return path

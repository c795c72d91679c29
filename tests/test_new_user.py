"""A new user's first round, end to end through the CLI: a folder of JPEGs whose class is the
folder's name (`yes/y12.jpg`: the file names give the class away), imported with the class
taken from the folder and with anonymised IDs, split at random by class, then one hand-off
round with the body as the ROI (the folder has no masks). The initial set is drawn without the
labels, round 1 says the cold start chose it, its hints outline the ROI M was measured against,
the report shows the answers, and the dataset export maps back to the files on request."""

import csv
import json

import numpy as np
from helpers import run_xgal
from PIL import Image

from xgal.annotate.hints import OUTLINES
from xgal.pool.format import Pool


def _scans(folder, n=24, size=32):
    """n JPEGs per class: a bright disc (the body), with a lesion for `yes`."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - 16) ** 2 + (xx - 16) ** 2 < 13**2) * 120.0
    for cls, prefix in (("yes", "y"), ("no", "n")):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            img = body + rng.normal(0, 8, (size, size))
            if cls == "yes":
                img += ((yy - 12 - i % 8) ** 2 + (xx - 14) ** 2 < 9) * 100
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / cls / f"{prefix}{i}.jpg")


def xgal(*args, code=0):
    res = run_xgal(*args, timeout=300)
    assert res.returncode == code, res.stdout + res.stderr
    return res.stdout


def test_a_new_users_first_round_on_a_folder_of_jpegs(tmp_path):
    _scans(tmp_path / "scans")
    data = tmp_path / "data"
    plain = xgal(
        "pool", "import", "images", tmp_path / "scans", data / "plain", "--class-from-folder", "--size", 32
    )
    assert "warning:" in plain and "the letters before each ID's number tell its class" in plain
    anon = xgal(
        "pool",
        "import",
        "images",
        tmp_path / "scans",
        data / "all",
        "--class-from-folder",
        "--size",
        32,
        "--anonymise",
    )
    assert "warning:" not in anon and (data / "all.ids.json").stat().st_mode & 0o777 == 0o600
    pool = Pool(data / "all")
    assert pool.class_names == ["no", "yes"] and all(i.startswith("scan-") for i in pool.ids().tolist())
    xgal("pool", "split", data / "all", "--by", "sample", "--test-fraction", 0.25,
         "--out-train", data / "train", "--out-test", data / "test")  # fmt: skip
    sources = json.loads((data / "train.ids.json").read_text())["ids"]  # the shared key's map
    truth = {i: s["image"].split("/")[0] for i, s in sources.items()}
    assert set(truth) == set(Pool(data / "train").ids().tolist())

    run = tmp_path / "run"
    train = ("train", "--pool", data / "train", "--test-pool", data / "test", "--annotator", "folder",
             "--initial", 8, "--per-round", 4, "--rounds", 1, "--epochs", 1, "--roi", "body",
             # xgal's selection (the default ranks by entropy alone): its TypiClust start is shown
             "--strategy", "xgal", "--diversity", "spread", "--cold-start", "typical",
             "--out", run)  # fmt: skip
    xgal(*train, code=3)
    rows = list(csv.DictReader(open(run / "round-0" / "request.csv")))
    assert {r["chosen_by"] for r in rows} == {"the initial set: drawn at random, no label read"}
    with open(tmp_path / "answers.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "label"], *([r["id"], truth[r["id"]]] for r in rows)])
    xgal("annotations", "add", run, "--labels", tmp_path / "answers.csv")
    waiting = xgal(*train, code=3)
    assert "round 0 trained on 8 scans: accuracy" in waiting and "the cold start: TypiClust" in waiting
    rows1 = list(csv.DictReader(open(run / "round-1" / "request.csv")))
    assert all(r["chosen_by"].startswith("the cold start") for r in rows1)
    cyan = (np.array(OUTLINES["body"][0]) * 255).astype(np.uint8)
    for r in rows1:  # the body each scan's M was measured against, outlined in cyan
        hint = np.asarray(Image.open(run / "round-1" / "hints" / f"{r['id']}.png"))[18:274, :256]
        assert (hint == cyan).all(axis=-1).any(), r["id"]

    xgal("report", run)
    page = (run / "report.html").read_text()
    assert "The cold start: TypiClust" in page and "cold start (draw key" in page  # not "score, U, M"
    assert json.loads((run / "round-1" / "request.json").read_text())["cold_start"] is True
    captions = {r["id"]: page.split(f"{r['id']}<br>")[1].split("</figcaption>")[0] for r in rows}
    assert all(f"answered: {truth[i]}" in caption for i, caption in captions.items())
    assert not any(s["image"] in page for s in sources.values())  # no file name reaches the radiologist
    xgal("annotations", "map-back", run, "--ids", data / "train.ids.json", "--out", tmp_path / "mapped.json")
    mapped = json.loads((tmp_path / "mapped.json").read_text())["training"]
    assert {e["source_image"] for e in mapped} == {sources[r["id"]]["image"] for r in rows}

"""A hand-off round on a pool imported without masks (issue 26): the radiologist draws ROIs on
the scans they label, the classifier's ROI head learns them, the scorer measures misalignment
against the predicted ROI (`--roi learned`), the next round's hints outline it in magenta, it is
offered to correct, and the answers record how far the radiologist moved it."""

import csv
import json

import numpy as np
from helpers import run_xgal as xgal
from PIL import Image

from xgal.annotate.hints import OUTLINES
from xgal.pool.synth import synth_pool
from xgal.pool.writer import PoolWriter


def _answer(folder, truth, masks_dir):
    ids = [r["id"] for r in csv.DictReader(open(folder / "request.csv"))]
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "label"], *([i, truth[i][0]] for i in ids)])
    masks_dir.mkdir()
    for i in ids:  # the ROI the radiologist draws on each scan they label
        Image.fromarray(truth[i][1] * 255).save(masks_dir / f"{i}.png")
    return ids


def test_hints_outline_the_predicted_roi_on_a_pool_without_masks(tmp_path):
    labelled = synth_pool(tmp_path / "truth", 120, seed=0, image_size=32)
    d = labelled.read(0, labelled.count, ("ids", "images", "rois", "labels"))
    with PoolWriter(
        tmp_path / "data" / "archive", image_shape=(1, 32, 32), class_names=labelled.class_names
    ) as w:
        w.add(d["ids"].tolist(), d["images"], np.zeros_like(d["rois"]), None)  # no masks
    truth = {
        i: (labelled.class_names[c], r)
        for i, c, r in zip(d["ids"].tolist(), d["labels"], d["rois"], strict=True)
    }
    run = tmp_path / "run"
    train = [
        "train", "--pool", tmp_path / "data" / "archive", "--initial", 40, "--per-round", 6,
        "--rounds", 1, "--steps", 50, "--out", run, "--cold-start", "none",
        "--roi-head", "shared", "--roi", "learned", "--missing-roi", "ignore", "--strategy", "xgal",
    ]  # fmt: skip
    res = xgal(*train)
    assert res.returncode == 3, res.stderr
    _answer(run / "round-0", truth, tmp_path / "m0")
    res = xgal(
        "annotations", "add", run, "--labels", run / "round-0" / "labels.csv", "--masks", tmp_path / "m0"
    )
    assert res.returncode == 0, res.stderr
    res = xgal(*train)
    assert res.returncode == 3, res.stderr
    ranking = json.loads((run / "round-1" / "ranking.json").read_text())
    learned = [r["id"] for r in ranking if r["roi"] == "learned"]
    assert learned and {r["roi"] for r in ranking} <= {"learned", "none"}
    magenta = np.array(OUTLINES["learned"][0]) * 255
    for sample_id in learned:
        hint = np.asarray(Image.open(run / "round-1" / "hints" / f"{sample_id}.png").convert("RGB"))
        assert (hint[18:274, :256] == magenta).all(axis=-1).sum() > 0, sample_id
    # The predicted ROIs are offered to correct; the radiologist's answer says how far it moved them.
    with np.load(run / "round-1" / "prefill_rois.npz") as offer:
        assert sorted(offer["ids"].tolist()) == sorted(learned)
    _answer(run / "round-1", truth, tmp_path / "m1")
    res = xgal(
        "annotations", "add", run, "--labels", run / "round-1" / "labels.csv", "--masks", tmp_path / "m1"
    )
    assert res.returncode == 0 and f"{len(learned)} scans had the model's ROI to correct" in res.stdout
    rows = list(csv.DictReader(open(run / "round-1" / "roi_corrections.csv")))
    assert sorted(r["id"] for r in rows) == sorted(learned)
    for r in rows:  # the truth masks are what the radiologist returned
        assert int(r["returned"]) == int(truth[r["id"]][1].sum())
        assert int(r["saved"]) == int(r["returned"]) - int(r["changed"])


def test_hints_outline_the_experts_roi_where_every_scan_has_one():
    from xgal.core.acquisition import RoiSource
    from xgal.loop.request import hint_rois

    rois = np.zeros((3, 8, 8), np.uint8)
    rois[:, 2:5, 2:5] = 1
    predicted = np.ones((3, 8, 8), np.uint8)
    out, codes = hint_rois(np.zeros((3, 1, 8, 8), np.uint8), rois, RoiSource.EXPERT_ELSE_LEARNED, predicted)
    np.testing.assert_array_equal(out, rois)
    assert codes.tolist() == [1, 1, 1]
    rois[1] = 0  # the expert drew nothing on the second: the predicted ROI stands in
    out, codes = hint_rois(np.zeros((3, 1, 8, 8), np.uint8), rois, RoiSource.EXPERT_ELSE_LEARNED, predicted)
    assert codes.tolist() == [1, 3, 1] and out[1].all()

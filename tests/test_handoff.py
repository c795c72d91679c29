"""The folder hand-off, as a radiologist's group would run it: `xgal train` on a pool without
labels stops at each round's request (request.csv, hints, a labels.csv to fill), a script
answers as the radiologist would (a wrong ID and a missing answer first, each refused with
nothing recorded), `xgal annotations add` records the answers and the same `xgal train` goes
on: two annotation rounds (the initial set, then the model's selection) to the end."""

import csv
import json

import numpy as np
import pytest
from helpers import run_xgal as xgal
from PIL import Image

from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool
from xgal.pool.writer import PoolWriter


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An unlabelled pool (the archive, its classes named), no test split, and the truth only the
    'radiologist' knows."""
    root = tmp_path_factory.mktemp("handoff")
    labelled = synth_pool(root / "truth", 160, seed=0, image_size=32, shard_size=100)
    d = labelled.read(0, labelled.count, ("ids", "images", "rois", "labels"))
    with PoolWriter(
        root / "data" / "archive", image_shape=(1, 32, 32), class_names=labelled.class_names
    ) as w:
        w.add(d["ids"].tolist(), d["images"], np.zeros_like(d["rois"]), None)
    truth = dict(zip(d["ids"].tolist(), (labelled.class_names[i] for i in d["labels"]), strict=True))
    return root, Pool(root / "data" / "archive"), truth


def _fill(path, answers):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(answers)


def _request(folder):
    return list(csv.DictReader(open(folder / "request.csv")))


def test_two_rounds_through_the_folder_hand_off(archive, tmp_path):
    root, pool, truth = archive
    run = tmp_path / "run"
    train = [
        "train", "--pool", pool.path, "--initial", 12, "--per-round", 6,
        "--rounds", 1, "--epochs", 2, "--out", run,
        # Round 1 ranked by the xgal score (not the default's entropy), so that the note on M,
        # which only a score with M in it has, is shown.
        "--strategy", "xgal", "--cold-start", "none",
    ]  # fmt: skip
    asked: list[str] = []
    for n in range(2):
        res = xgal(*train)
        assert res.returncode == 3, res.stderr  # waiting: neither an error (2) nor done (0)
        folder = run / f"round-{n}"
        assert f"round {n}: {12 if n == 0 else 6} scans wait for a radiologist" in res.stdout
        assert "xgal annotations add" in res.stdout and "32x32 masks named as the scans in" in res.stdout
        if n == 1:  # round 0's model was evaluated as soon as it was trained, and said so
            assert "round 0 trained on 12 scans: accuracy n/a" in res.stdout
        if n == 1:  # the archive has no ROIs: the round says that M could not count
            assert "none of the 160 scored samples has an ROI, so M = 1" in res.stdout + res.stderr
        rows = _request(folder)
        ids = [r["id"] for r in rows]
        assert [int(r["rank"]) for r in rows] == list(range(1, len(ids) + 1))
        assert not set(ids) & set(asked)  # never asked twice
        asked += ids
        assert sorted(p.stem for p in (folder / "hints").iterdir()) == sorted(ids)
        hint = Image.open(folder / "hints" / f"{ids[0]}.png")
        assert hint.size == (296, 292)  # 256 px of scan, the colour scale, a line above and below
        scan = np.asarray(Image.open(folder / "scans" / f"{ids[0]}.png"))  # what masks are drawn on
        assert scan.shape == (32, 32)
        if n == 0:  # the initial set: no model yet, drawn without the pool's labels
            assert all(r["score"] == "" and r["predicted"] == "" for r in rows)
            assert {r["chosen_by"] for r in rows} == {"the initial set: drawn at random, no label read"}
        else:  # the model that chose them: the scores that ranked them, its predicted class
            ranking = json.loads((folder / "ranking.json").read_text())
            assert ids == [r["id"] for r in ranking]
            for row, ranked in zip(rows, ranking, strict=True):
                assert float(row["score"]) == pytest.approx(ranked["score"], rel=1e-5)
                assert float(row["uncertainty"]) == pytest.approx(ranked["uncertainty"], rel=1e-5)
                assert row["predicted"] in truth.values()
        template = list(csv.DictReader(open(folder / "labels.csv")))
        assert [t["id"] for t in template] == ids and all(t["label"] == "" for t in template)

        answers = [[i, truth[i]] for i in ids]
        # A wrong ID, then a missing answer: each refused by name, nothing recorded.
        _fill(tmp_path / "wrong.csv", [*answers[:-1], ["scan-9999999", truth[ids[-1]]]])
        res = xgal("annotations", "add", run, "--labels", tmp_path / "wrong.csv")
        assert res.returncode == 2
        assert "'scan-9999999' is not among the scans this round asked about" in res.stderr
        _fill(tmp_path / "missing.csv", [*answers[:-1], [ids[-1], ""]])
        res = xgal("annotations", "add", run, "--labels", tmp_path / "missing.csv")
        assert res.returncode == 2 and f"1 of {len(ids)} scans have no label ({ids[-1]})" in res.stderr
        if n == 0:  # an unknown class and a scan answered twice: refused too
            _fill(tmp_path / "unknown.csv", [*answers[:-1], [ids[-1], "glioma"]])
            res = xgal("annotations", "add", run, "--labels", tmp_path / "unknown.csv")
            assert res.returncode == 2 and "'glioma' is not a class" in res.stderr
            _fill(tmp_path / "twice.csv", [*answers, answers[0]])
            res = xgal("annotations", "add", run, "--labels", tmp_path / "twice.csv")
            assert res.returncode == 2 and "is answered twice" in res.stderr
        assert not (folder / "answers.npz").exists()
        # The radiologist's answers, with an ROI drawn on one scan in round 1.
        # Round 1 is closed with what was answered: the last scan stays unlabelled.
        _fill(folder / "labels.csv", answers if n == 0 else [*answers[:-1], [ids[-1], ""]])
        extra = []
        if n == 1:
            masks = tmp_path / "masks"
            masks.mkdir()
            drawn = np.zeros((32, 32), dtype=np.uint8)
            drawn[4:12, 20:30] = 255
            Image.fromarray(drawn).save(masks / f"{ids[2]}.png")
            (masks / ".DS_Store").write_bytes(b"\0")  # what a desktop leaves behind: ignored
            extra = ["--masks", masks, "--partial"]
            unanswered = ids[-1]
        res = xgal("annotations", "add", run, "--labels", folder / "labels.csv", *extra)
        answered_now = len(ids) - (n == 1)
        assert res.returncode == 0 and f"recorded {answered_now} answers for round-{n}" in res.stdout, (
            res.stderr
        )
        again = xgal("annotations", "add", run, "--labels", folder / "labels.csv")
        assert again.returncode == 2 and "no round" in again.stderr  # recorded once, never replaced

    res = xgal(*train)
    assert res.returncode == 0 and "done: 17 labelled" in res.stdout, res.stdout + res.stderr
    # No labelled test split (an archive has none): the rounds say so instead of printing NaN.
    assert "no --test-pool" in res.stdout and "round 1: 17 labelled, accuracy n/a" in res.stdout
    ann = np.load(run / "annotations.npz")
    labelled = sorted(set(asked) - {unanswered})
    assert sorted(ann["ids"].tolist()) == labelled  # the unanswered scan is not labelled
    names = pool.class_names
    assert [names[label] for label in ann["labels"]] == [truth[i] for i in ann["ids"]]
    rois = dict(zip(ann["ids"].tolist(), ann["rois"], strict=True))
    marked = _request(run / "round-1")[2]["id"]
    assert rois[marked][4:12, 20:30].all() and rois[marked].sum() == 80
    assert sum(int(r.sum()) for r in rois.values()) == 80  # the archive had no ROIs: only the one drawn

    # What was answered, as MONAI loads a Decathlon datalist: image, ROI mask and class per scan.
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(run / "dataset" / "dataset.json", True, "training")
    assert sorted(i["id"] for i in items) == labelled
    assert all(i["class_name"] == truth[i["id"]] for i in items)
    by_id = {i["id"]: i for i in items}
    assert np.asarray(Image.open(by_id[marked]["label"])).sum() == 80
    scan = np.asarray(Image.open(by_id[marked]["image"]))
    index = {s: k for k, s in enumerate(pool.ids().tolist())}
    np.testing.assert_array_equal(scan, pool.take([index[marked]], ("images",))["images"][0, 0])


def test_file_names_of_ids_never_collide_and_16_bit_hints_are_visible():
    from xgal.annotate.hints import hint_image
    from xgal.annotate.layout import file_name

    assert file_name("scan-0001") == "scan-0001"  # a safe ID is its own name
    names = {file_name(i) for i in ("a/b", "a_b", "a:b", ".hidden", "a b")}
    assert len(names) == 5 and not any(n.startswith(".") or "/" in n for n in names)
    # Case-insensitive file systems: `A` and `a` get two names that differ not only in case;
    # an ID too long for a file name is cut, the hash keeping it apart from its neighbours.
    assert file_name("A").lower() != file_name("a").lower()
    long = ["x" * 300 + "1", "x" * 300 + "2"]
    assert len({file_name(i) for i in long}) == 2 and all(len(file_name(i)) < 120 for i in long)
    # A CT stored as HU + 1024 in a uint16 pool: the hint spans black to white, not 0–3%.
    ct = np.full((1, 32, 32), 24, np.uint16)
    ct[0, 8:24, 8:24] = 1064
    ct[0, 12:16, 12:16] = 2024
    hint = np.asarray(hint_image(ct, np.zeros((32, 32), np.uint8), None, "no model yet"))[18:274, :256]
    assert hint.max() == 255 and hint.min() == 0

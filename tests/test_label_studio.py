"""The hand-off through Label Studio, against a real server on 127.0.0.1 (tests/label_studio_server):
`xgal train` stops at each round, `xgal label-studio push` puts the round into the run's
project (the scan and hint served from the run folder, the predicted class pre-selected, the
pool's ROI as an editable brush region, xgal's score as the prediction's score), a script
annotates through Label Studio's API as the radiologist's browser does, and `xgal label-studio
pull` records the answers as `xgal annotations add` would, for two rounds. Label Studio serves the
pictures from RUN/label-studio only, never the run's models, answers or state; a long run name
fits the project title; annotations
that cannot be read are named by task and count as not answered. Checks that need no server:
tests/test_label_studio_access.py and tests/test_label_studio_answers.py."""

import json
import shutil

import numpy as np
import pytest
from helpers import run_xgal as xgal

from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool
from xgal.pool.writer import PoolWriter

ROUNDS = {0: 12, 1: 6}  # scans asked for: the initial set, then the model's selection


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import label_studio_server

    running = label_studio_server.start(tmp_path_factory.mktemp("label-studio"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def archive(server):
    """An unlabelled pool whose scans carry the ROIs a previous reader drew (on every other
    one), under Label Studio's document root, and the truth only the 'radiologist' knows."""
    root = server.document_root
    labelled = synth_pool(root / "truth", 160, seed=1, image_size=32, shard_size=100)
    d = labelled.read(0, labelled.count, ("ids", "images", "rois", "labels"))
    rois = d["rois"].copy()
    rois[1::2] = 0
    with PoolWriter(root / "archive", image_shape=(1, 32, 32), class_names=labelled.class_names) as w:
        w.add(d["ids"].tolist(), d["images"], rois, None)
    truth = dict(zip(d["ids"].tolist(), (labelled.class_names[i] for i in d["labels"]), strict=True))
    return Pool(root / "archive"), truth, dict(zip(d["ids"].tolist(), rois, strict=True))


@pytest.fixture(scope="module")
def waiting(server, archive):
    """A run stopped at round 0 (no Label Studio project yet), for the tests to copy."""
    run = server.document_root / "waiting"
    res = xgal("train", "--pool", archive[0].path, "--initial", ROUNDS[0], "--per-round", ROUNDS[1],
               "--rounds", 1, "--epochs", 2, "--out", run)  # fmt: skip
    assert res.returncode == 3, res.stdout + res.stderr
    return run


def _copy(run, name):
    return shutil.copytree(run, run.parent / name, symlinks=True)


def _client(server):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=server.url, api_key=server.token_file.read_text())


def _annotate(ls, task, label, roi=None, box=None, prefill=True, cancelled=False):
    """What the labelling page sends when the radiologist submits (or skips) a task: the
    pre-filled regions (the pool's ROI) unless deleted, plus what was drawn, and the prediction it
    started from (`parent_prediction`, as the page sends it: test_label_studio_browser sees it)."""
    result = [] if label is None else [
        {"from_name": "label", "to_name": "scan", "type": "choices", "value": {"choices": [label]}}
    ]  # fmt: skip
    [prediction] = ls.tasks.get(task["id"]).predictions or [None]
    parent = {"parent_prediction": prediction.id} if prediction else {}  # the page starts from it
    if prefill:  # kept, else deleted by the radiologist
        result += [r for r in (prediction.result if prediction else []) if r["type"] == "brushlabels"]
    if roi is not None:
        result.append(_painted(roi))
    if box is not None:  # x, y, width, height in percent of the image, as Label Studio stores them
        x, y, bw, bh = box
        result.append(
            {"from_name": "box", "to_name": "scan", "type": "rectanglelabels", "original_width": 32,
             "original_height": 32, "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0,
                                              "rectanglelabels": ["ROI"]}}
        )  # fmt: skip
    ls.annotations.create(
        task["id"], result=result, was_cancelled=cancelled, lead_time=4.0,
        request_options={"additional_body_parameters": parent},
    )  # fmt: skip


def _painted(mask):
    """A brush region as the web page paints it: the label's colour (green) in RGB, alpha 255."""
    from label_studio_sdk.converter.brush import encode_rle

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[mask > 0] = (0, 255, 0, 255)
    return {"from_name": "roi", "to_name": "scan", "type": "brushlabels", "original_width": 32,
            "original_height": 32, "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_rle(rgba.ravel()), "brushlabels": ["ROI"]}}  # fmt: skip


def test_two_rounds_through_label_studio(server, archive, tmp_path, monkeypatch):
    from label_studio_sdk.converter.brush import decode_rle

    from xgal.annotate import label_studio
    from xgal.annotate.label_studio import pull, push
    from xgal.core.errors import InvalidArgument

    monkeypatch.setattr(label_studio, "PAGE", 5)  # the in-process calls list tasks over pages

    pool, truth, pool_rois = archive
    run = server.document_root / "run"
    train = [
        "train", "--pool", pool.path, "--initial", ROUNDS[0], "--per-round", ROUNDS[1],
        "--rounds", 1, "--epochs", 2, "--out", run,
    ]  # fmt: skip
    ls_args = ["--url", server.url, "--token-file", server.token_file]
    ls = _client(server)
    asked: list[str] = []
    for n, count in ROUNDS.items():
        res = xgal(*train)
        assert res.returncode == 3, res.stdout + res.stderr
        res = xgal("label-studio", "push", run, *ls_args, "--document-root", server.document_root)
        assert res.returncode == 0 and f"round {n}: {count} tasks added to project" in res.stdout, res.stderr
        project = json.loads((run / "label-studio.json").read_text())["project"]
        again = push(run, server.url, server.token_file, server.document_root)  # in-process: quicker
        assert (again.project, again.added, again.present) == (project, 0, count)  # nothing twice

        tasks = _round_tasks(ls, project, n)
        request = [r["id"] for r in _rows(run / f"round-{n}" / "request.csv")]
        assert [t["data"]["id"] for t in tasks] == request  # in rank order
        assert not set(request) & set(asked)
        asked += request
        others = {p.relative_to(run).as_posix() for p in _served_only(server, run, project, ls, tasks)}
        if n == 1:  # what the first round left: its answers, the model trained on them
            assert {"state.json", "round-0/answers.npz"} <= others, sorted(others)
            assert any(o.endswith(".onnx") for o in others) and any(o.endswith(".pt") for o in others)
        for task in tasks:
            full = ls.tasks.get(task["id"])
            sample_id = task["data"]["id"]
            if n == 0 and not pool_rois[sample_id].any():  # nothing to pre-annotate
                assert not full.predictions
                continue
            [prediction] = full.predictions
            by_kind = {r["type"]: r for r in prediction.result}
            if pool_rois[sample_id].any():  # the pool's ROI, an editable brush region
                rle = by_kind["brushlabels"]["value"]["rle"]
                got = decode_rle(rle).reshape(32, 32, 4)[:, :, 3] > 127
                np.testing.assert_array_equal(got, pool_rois[sample_id] > 0)
            else:
                assert "brushlabels" not in by_kind
            if n == 0:  # no model yet: nothing predicted, nothing scored
                assert "choices" not in by_kind and task["data"]["score"] is None
            else:  # the predicted class pre-selected; the score Label Studio sorts by is xgal's
                row = next(r for r in _rows(run / "round-1" / "request.csv") if r["id"] == sample_id)
                assert by_kind["choices"]["value"]["choices"] == [row["predicted"]]
                assert prediction.score == pytest.approx(float(row["score"]), rel=1e-5)

        # The radiologist answers all but one, and skips that one: refused, nothing recorded.
        # Round 0: the first scan answered twice (a slip, then corrected: the newest counts).
        # Round 1: a pre-filled ROI replaced by a painted one, one with a box added, one deleted.
        first, last = tasks[:-1], tasks[-1]
        drawn = np.zeros((32, 32), np.uint8)
        drawn[2:9, 20:30] = 1
        with_roi = [t for t in first if pool_rois[t["data"]["id"]].any()]
        edits = {}
        if n == 1:
            assert len(with_roi) >= 3
            edits = {
                with_roi[0]["id"]: {"roi": drawn, "prefill": False},
                with_roi[1]["id"]: {"box": (25.0, 50.0, 25.0, 12.5)},  # x 8-16, y 16-20
                with_roi[2]["id"]: {"prefill": False},
            }
        for i, task in enumerate(first):
            sample_id = task["data"]["id"]
            if n == 0 and i == 0:
                slip = next(c for c in pool.class_names if c != truth[sample_id])
                _annotate(ls, task, slip)
            _annotate(ls, task, truth[sample_id], **edits.get(task["id"], {}))
        _annotate(ls, last, None, cancelled=True)
        with pytest.raises(
            InvalidArgument, match=rf"1 of {count} scans have no label \({last['data']['id']}\)"
        ):
            pull(run, server.url, server.token_file)
        assert not (run / f"round-{n}" / "answers.npz").exists()
        if n == 0:  # answered after all
            _annotate(ls, last, truth[last["data"]["id"]])
            extra = []
        else:  # closed with what was answered: the skipped scan stays unlabelled
            extra = ["--partial"]
            unanswered = last["data"]["id"]
        res = xgal("label-studio", "pull", run, *ls_args, *extra)
        recorded = count - (n == 1)
        assert res.returncode == 0 and f"recorded {recorded} answers for round-{n}" in res.stdout, res.stderr
        with pytest.raises(InvalidArgument, match="no round"):  # recorded once, never replaced
            pull(run, server.url, server.token_file)

    # What the next `xgal train` reads (the folder hand-off's test runs it to the end on these).
    answers = [np.load(run / f"round-{n}" / "answers.npz") for n in ROUNDS]
    labels = {i: k for a in answers for i, k in zip(a["ids"].tolist(), a["labels"], strict=True) if k >= 0}
    assert sorted(labels) == sorted(set(asked) - {unanswered})
    assert all(pool.class_names[k] == truth[i] for i, k in labels.items())
    rois = {i: r for a in answers for i, r in zip(a["ids"].tolist(), a["rois"], strict=True) if i in labels}
    replaced, boxed, deleted = (ls.tasks.get(t).data["id"] for t in edits)
    np.testing.assert_array_equal(rois[replaced] > 0, drawn > 0)  # painted instead of the pool's
    expected_box = pool_rois[boxed] > 0
    expected_box[16:20, 8:16] = True
    np.testing.assert_array_equal(rois[boxed] > 0, expected_box)  # the pool's and the box
    assert not rois[deleted].any()  # the pre-filled ROI deleted: none
    for sample_id in set(rois) - {replaced, boxed, deleted}:  # kept as pre-filled: the pool's
        np.testing.assert_array_equal(rois[sample_id] > 0, pool_rois[sample_id] > 0)
    assert ls.projects.get(project).model_version == "xgal"  # what Label Studio pre-fills from


def _served_only(server, run, project, ls, tasks):
    """Label Studio serves the tasks' pictures, from RUN/label-studio (the only storage), and no
    other file of the run (models, answers, state, the round folders' own files) nor outside it."""
    import label_studio_server

    served = run / "label-studio"
    others = [p for p in run.rglob("*") if p.is_file() and served not in p.parents]
    names = {p.name for p in others}
    assert {"label-studio.json", "request.json", "labels.csv"} <= names and any(".png" in n for n in names)
    with label_studio_server.login(server) as browser:  # a signed-in radiologist's browser
        for task in tasks:
            for key in ("scan", "hint"):
                url = task["data"][key]
                assert url.startswith(f"/data/local-files/?d={run.name}/label-studio/round-"), url
                got = browser.get(url)
                assert got.status_code == 200 and got.content[:4] == b"\x89PNG", url
        # Label Studio grants a file by its folder: every file at the run's top (state, models,
        # label-studio.json), the answers, and one file of each other folder.
        probe = {p.parent: p for p in sorted(others, reverse=True)}.values()
        probe = {*probe, *(p for p in others if p.parent == run or p.suffix in (".npz", ".pt", ".onnx"))}
        for path in sorted(probe) + [server.document_root / "truth" / "manifest.json"]:
            rel = path.relative_to(server.document_root).as_posix()
            got = browser.get("/data/local-files/", params={"d": rel})
            assert got.status_code in (403, 404), f"{rel} served ({got.status_code})"
    assert [s.path for s in ls.import_storage.local.list(project=project)] == [str(served.resolve())]
    return others


def test_a_bad_or_missing_token_is_refused_by_name(server, tmp_path):
    from xgal.annotate.label_studio import pull
    from xgal.core.errors import InvalidArgument

    run = tmp_path / "run"
    (run / "round-0").mkdir(parents=True)
    (run / "round-0" / "request.json").write_text(json.dumps({"ids": [], "class_names": [], "round": 0}))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(InvalidArgument, match="has no Label Studio project yet"):
        pull(run, server.url, empty)
    (run / "label-studio.json").write_text(
        json.dumps({"url": server.url, "project": 1, "run": str(run.resolve())})
    )
    res = xgal("label-studio", "pull", run, "--url", server.url, "--token-file", empty)
    assert res.returncode == 2 and f"{empty} is empty" in res.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("0123456789abcdef")
    wrong.chmod(0o600)
    with pytest.raises(InvalidArgument, match="refused the token in"):
        pull(run, server.url, wrong)


LONG = "brats2021-densenet121-prototypical-lambda0.3-alpha0.1-initial150-per-round120-seed7"


def test_a_long_run_folder_name_fits_the_project_title(server, waiting):
    run = _copy(waiting, LONG)
    res = xgal("label-studio", "push", run, "--url", server.url, "--token-file", server.token_file,
               "--document-root", server.document_root)  # fmt: skip
    assert res.returncode == 0 and f"round 0: {ROUNDS[0]} tasks added" in res.stdout, res.stdout + res.stderr
    project = _client(server).projects.get(json.loads((run / "label-studio.json").read_text())["project"])
    assert len(LONG) > 80 and len(project.title) == 50  # Label Studio's limit
    assert project.title == f"xgal …{LONG[-44:]}"  # the end, where run names differ
    assert project.description == f"xgal run {run.resolve()}"  # the whole path


def test_unreadable_annotations_are_named_and_count_as_unanswered(server, waiting):
    """Through the server and the CLI: a truncated brush RLE, a rectangle without x and a class
    choice sent as a string, each named by task in one line; without --partial the round is
    refused, nothing recorded; with it the other answers are recorded."""
    from xgal.annotate.label_studio import push

    run = _copy(waiting, "unreadable")
    project = push(run, server.url, server.token_file, server.document_root).project
    ls = _client(server)
    tasks = _round_tasks(ls, project, 0)
    names = json.loads((run / "round-0" / "request.json").read_text())["class_names"]
    rle = _painted(np.ones((32, 32), np.uint8))["value"]["rle"]
    truncated = _painted(np.ones((32, 32), np.uint8))
    truncated["value"]["rle"] = rle[: len(rle) // 2]
    no_x = {
        "from_name": "box",
        "to_name": "scan",
        "type": "rectanglelabels",
        "original_width": 32,
        "original_height": 32,
        "value": {"y": 10, "width": 20, "height": 20, "rectanglelabels": ["ROI"]},
    }
    chosen = {"from_name": "label", "to_name": "scan", "type": "choices", "value": {"choices": [names[1]]}}
    as_string = {**chosen, "value": {"choices": names[0]}}
    for task, result in zip(tasks[:3], [[chosen, truncated], [chosen, no_x], [as_string]], strict=True):
        ls.annotations.create(task["id"], result=result)
    for task in tasks[3:]:
        _annotate(ls, task, names[0])
    reasons = ["a brush region whose RLE is truncated or corrupt", "a rectangle whose x is None",
               f"the class choice '{names[0]}' is not a list"]  # fmt: skip
    lines = [f"Label Studio task {t['id']} ({t['data']['id']}): {why}"
             for t, why in zip(tasks[:3], reasons, strict=True)]  # fmt: skip
    ls_args = ["--url", server.url, "--token-file", server.token_file]

    res = xgal("label-studio", "pull", run, *ls_args)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 4 and f"3 of {ROUNDS[0]} scans have no label" in err[0], res.stderr
    assert all(line in got for line, got in zip(lines, err[1:], strict=True)), res.stderr
    assert not (run / "round-0" / "answers.npz").exists()

    res = xgal("label-studio", "pull", run, *ls_args, "--partial")
    assert res.returncode == 0 and f"recorded {ROUNDS[0] - 3} answers for round-0" in res.stdout, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and all(line in w for line, w in zip(lines, warnings, strict=True)), res.stderr
    answers = np.load(run / "round-0" / "answers.npz")
    labels = dict(zip(answers["ids"].tolist(), answers["labels"].tolist(), strict=True))
    assert [labels[t["data"]["id"]] for t in tasks] == [-1] * 3 + [0] * (ROUNDS[0] - 3)


def _round_tasks(ls, project, n):
    from xgal.annotate.label_studio import project_tasks

    tasks = [t for t in project_tasks(ls, project) if t["data"]["round"] == n]
    return sorted(tasks, key=lambda t: t["data"]["rank"])


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))

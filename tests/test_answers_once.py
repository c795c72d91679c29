"""A round's answers are written once and whole, and the exported dataset follows them.

Two `xgal annotations add` on one round: one records, the other is refused by name, and what
is on disk is what the one that recorded said. An `annotations add` killed at any point of its
writes (each os call that writes, in turn) leaves the round open or closed, never half, and the
user's next command leaves `dataset.json` listing exactly the recorded answers. A pool ID with
spaces around it (which the answers, read stripped, could never match) is refused at import.

Every `xgal` here is a process of its own: RUNNER runs the CLI with the os calls that write
counted (and, on request, dying at the k-th or pausing before the answers are written); the
kill sweep forks it from one process that imported everything once, so a case costs
milliseconds, not an interpreter start.
"""

from __future__ import annotations

import csv
import fcntl
import json
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_xgal
from PIL import Image

from xgal.annotate.annotator import AnnotationRequest, AwaitingAnnotations, PendingRequest
from xgal.annotate.folder import FolderAnnotator
from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool

ROOT = Path(__file__).resolve().parents[1]

RUNNER = r'''
"""`xgal ARGS...` as a job (JSON): run directly (argv[2] is the job) or, with argv[2] == "serve",
one forked process per job line on stdin, answering with its return code (-9: killed)."""
import json
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, sys.argv[1])
os.environ["COLUMNS"] = "200"  # rich does not wrap the messages the tests look for
import io  # noqa: E402

import numpy as np  # noqa: E402
import typer.main  # noqa: E402
from PIL import Image  # noqa: E402

import xgal.annotate.answers  # noqa: E402,F401 - what the command imports on first use
from xgal.cli import app  # noqa: E402

XGAL = typer.main.get_command(app)  # what `xgal` builds on every start (0.1 s), built once
Image.fromarray(np.zeros((2, 2), np.uint8)).save(io.BytesIO(), "PNG")  # PNG's encoder, loaded


def main(args):
    XGAL.main(args=args, prog_name="xgal")


WRITES = ("open", "write", "fsync", "replace", "rename", "link", "unlink", "mkdir")


def patch(job):
    """Count the os calls that touch files; die at the `kill_at`-th (a write: half written), or
    wait before opening the answers for writing until `release` exists (`paused` says so)."""
    count = [0]
    for name in WRITES:
        real = getattr(os, name)

        def call(*args, _name=name, _real=real, **kwargs):
            pause = job.get("pause")
            if pause and _name == "open" and "answers.npz" in str(args[0]) and args[1] & os.O_WRONLY:
                job["pause"] = None
                open(pause["paused"], "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(pause["release"]) and time.monotonic() < deadline:
                    time.sleep(0.01)
            count[0] += 1
            if count[0] == job.get("kill_at"):
                if _name == "write":
                    _real(args[0], bytes(args[1])[: len(args[1]) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(os, name, call)


def run(job):
    fd = os.open(job["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    patch(job)
    code = 0
    try:
        main(job["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if sys.argv[2] != "serve":
    run(json.loads(sys.argv[2]))
# What the command imports as it runs, imported once here rather than in every fork.
saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 2)
try:
    main(["annotations", "add", os.devnull + "/run", "--labels", os.devnull])
except SystemExit:
    pass
sys.stderr.flush()
os.dup2(saved, 2)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        run(json.loads(line))
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
'''

N_ASKED = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small pool, a run whose round 0 waits for answers (written by the folder hand-off
    itself) and the runner script."""
    root = tmp_path_factory.mktemp("answers-once")
    synth_pool(root / "pool", 8, seed=0, image_size=32, shard_size=100)
    pool = Pool(root / "pool")
    ids = pool.ids().tolist()[:N_ASKED]
    images = pool.take(list(range(N_ASKED)), ("images", "rois"))
    request = AnnotationRequest(0, images["images"], images["rois"], tuple(pool.class_names), str(pool.path))
    template = root / "template"
    with pytest.raises(AwaitingAnnotations):
        FolderAnnotator(template).annotate(PendingRequest(0, ids, lambda: request))
    (root / "runner.py").write_text(RUNNER)
    return root, pool, ids


def _run(world, dest: Path) -> Path:
    shutil.copytree(world[0] / "template", dest)
    return dest


def _labels(path: Path, answers: dict[str, str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(answers.items())
    return path


def _job(tmp: Path, name: str, args: list, **extra) -> dict:
    return {"args": [str(a) for a in args], "output": str(tmp / f"{name}.log"), **extra}


def _start(world, job: dict) -> subprocess.Popen:
    runner = world[0] / "runner.py"
    return subprocess.Popen([sys.executable, runner, ROOT, json.dumps(job)])


def _finish(proc: subprocess.Popen, job: dict) -> tuple[int, str]:
    code = proc.wait(timeout=120)
    return code, Path(job["output"]).read_text()


def _refused(code: int, text: str) -> bool:
    """Exit 2 with one error line, no traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    return code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in text


def _recorded(out: Path) -> list[int]:
    return np.load(out / "round-0" / "answers.npz")["labels"].tolist()


def test_two_writers_of_one_round_one_records_the_other_is_refused(world, tmp_path):
    root, pool, ids = world
    names = pool.class_names
    first = _labels(tmp_path / "first.csv", {s: names[0] for s in ids})
    second = _labels(tmp_path / "second.csv", {s: names[1] for s in ids})
    out = _run(world, tmp_path / "run")
    add = ["annotations", "add", out, "--labels"]

    # Another writer holds the round: refused by name at once, nothing written.
    with open(out / "round-0" / ".answers.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = _job(tmp_path, "held", [*add, second])
        code, text = _finish(_start(world, job), job)
    assert _refused(code, text) and "round-0 of" in text and "being recorded right now" in text, text
    assert not (out / "round-0" / "answers.npz").exists()

    # The first writer has checked the round is open and is about to write; a second starts.
    pause = {"paused": str(tmp_path / "paused"), "release": str(tmp_path / "release")}
    winner_job = _job(tmp_path, "winner", [*add, first], pause=pause)
    winner = _start(world, winner_job)
    deadline = time.monotonic() + 60
    while not Path(pause["paused"]).exists():
        assert time.monotonic() < deadline and winner.poll() is None, Path(winner_job["output"]).read_text()
        time.sleep(0.02)
    job = _job(tmp_path, "loser", [*add, second])
    code, text = _finish(_start(world, job), job)
    Path(pause["release"]).touch()
    won, won_text = _finish(winner, winner_job)
    assert won == 0 and f"recorded {N_ASKED} answers for round-0" in won_text, won_text
    assert _refused(code, text) and "round-0" in text, text
    assert _recorded(out) == [0] * N_ASKED  # what the winner said

    # One that starts after the round was recorded: refused by name too.
    res = run_xgal(*add, second, timeout=120)
    assert res.returncode == 2 and "no round of" in res.stderr and "(answered: round-0)" in res.stderr
    assert _recorded(out) == [0] * N_ASKED

    # Two started together, different answers: one records, and what it said is what is kept.
    out = _run(world, tmp_path / "race")
    add = ["annotations", "add", out, "--labels"]
    jobs = [_job(tmp_path, f"race{k}", [*add, f]) for k, f in enumerate((first, second))]
    procs = [_start(world, job) for job in jobs]
    (a, a_text), (b, b_text) = (_finish(p, j) for p, j in zip(procs, jobs, strict=True))
    assert sorted((a, b)) == [0, 2], (a_text, b_text)
    winner_class, loser_text = (0, b_text) if a == 0 else (1, a_text)
    assert _refused(2, loser_text) and "round-0" in loser_text, loser_text
    assert _recorded(out) == [winner_class] * N_ASKED
    listed = json.loads((out / "dataset" / "dataset.json").read_text())["training"]
    assert [e["class"] for e in listed] == [winner_class] * N_ASKED


class Server:
    """The runner forking one process per job."""

    def __init__(self, world):
        runner = world[0] / "runner.py"
        self.proc = subprocess.Popen(
            [sys.executable, runner, ROOT, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def run(self, job: dict, timeout: float = 60) -> int:
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail(f"the job took over {timeout} s: {Path(job['output']).read_text()}")
        return json.loads(self.proc.stdout.readline())["returncode"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _dataset_lists_the_answers(out: Path, pool: Pool, monai: bool = False) -> None:
    """dataset.json lists exactly the recorded answers, with their pictures (read as MONAI
    reads it, or, where `monai` is False, as plain JSON: importing MONAI takes seconds)."""
    answers = np.load(out / "round-0" / "answers.npz")
    want = {
        str(s): int(label) for s, label in zip(answers["ids"], answers["labels"], strict=True) if label >= 0
    }
    path = out / "dataset" / "dataset.json"
    if monai:
        from monai.data import load_decathlon_datalist

        items = load_decathlon_datalist(path, True, "training")
    else:
        items = json.loads(path.read_text())["training"]
        items = [{**i, "image": path.parent / i["image"], "label": path.parent / i["label"]} for i in items]
    assert {i["id"]: i["class"] for i in items} == want
    index = {s: k for k, s in enumerate(pool.ids().tolist())}
    rois = dict(zip(answers["ids"].tolist(), answers["rois"], strict=True))
    for item in items:
        scan = pool.take([index[item["id"]]], ("images",))["images"][0, 0]
        np.testing.assert_array_equal(np.asarray(Image.open(item["image"])), scan)
        np.testing.assert_array_equal(np.asarray(Image.open(item["label"])), rois[item["id"]])


def test_an_answers_add_killed_at_any_point_leaves_the_round_whole_and_the_dataset_catches_up(
    world, tmp_path
):
    root, pool, ids = world
    names = pool.class_names
    # Two of three answered (--partial), one ROI drawn.
    given = {s: names[k % len(names)] for k, s in enumerate(ids[:-1])}
    labels = _labels(tmp_path / "labels.csv", given)
    masks = tmp_path / "masks"
    masks.mkdir()
    drawn = np.zeros((32, 32), np.uint8)
    drawn[3:9, 10:20] = 255
    Image.fromarray(drawn).save(masks / f"{ids[1]}.png")
    want = [names.index(given[s]) if s in given else -1 for s in ids]
    server = Server(world)
    outcomes = {"open": 0, "closed, dataset behind": 0, "closed": 0}
    started = time.monotonic()
    try:
        for k in range(1, 400):
            assert time.monotonic() - started < 240, f"the sweep ran over 240 s at k={k}"
            out = _run(world, tmp_path / f"k{k}")
            add = ["annotations", "add", out, "--labels", labels, "--masks", masks, "--partial"]
            code = server.run(_job(tmp_path, f"k{k}", add, kill_at=k))
            assert code in (0, -9), Path(tmp_path / f"k{k}.log").read_text()
            answers = out / "round-0" / "answers.npz"
            dataset = out / "dataset" / "dataset.json"
            if answers.exists():  # closed: whole, and what was given
                stored = np.load(answers)
                assert stored["ids"].tolist() == ids and stored["labels"].tolist() == want
                assert stored["rois"][1].sum() == 60
            if dataset.exists():  # never torn, never listing a missing picture
                listed = json.loads(dataset.read_text())["training"]
                assert all((dataset.parent / e[f]).is_file() for e in listed for f in ("image", "label"))
            if code == 0:
                _dataset_lists_the_answers(out, pool, monai=True)
                break
            if not answers.exists():
                outcomes["open"] += 1
                again = server.run(_job(tmp_path, f"k{k}-again", add))
                assert again == 0, Path(tmp_path / f"k{k}-again.log").read_text()
                assert not list((out / "round-0").glob(".answers.npz*"))  # the killed one's temporary
            else:
                behind = not dataset.exists() or len(json.loads(dataset.read_text())["training"]) != 2
                outcomes["closed, dataset behind" if behind else "closed"] += 1
                if k % 2:  # the user tries to add again: refused, and the dataset is caught up
                    again = server.run(_job(tmp_path, f"k{k}-again", add))
                    text = Path(tmp_path / f"k{k}-again.log").read_text()
                    assert again == 2 and "(answered: round-0)" in text, text
                else:  # or runs xgal train again, which finds the answers
                    stored_labels, _ = FolderAnnotator(out).annotate(PendingRequest(0, ids, None))
                    assert stored_labels.tolist() == want
            _dataset_lists_the_answers(out, pool)
            shutil.rmtree(out)
        else:
            pytest.fail("annotations add never finished")
    finally:
        server.close()
    assert outcomes["open"] and outcomes["closed, dataset behind"], outcomes


def _import(tmp: Path, out: str, rows: list[list[str]]) -> subprocess.CompletedProcess:
    """`xgal pool import images` of tmp/scans/ with a labels CSV of `rows` (header first)."""
    with open(tmp / "files.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    args = ("pool", "import", "images", tmp / "scans", tmp / out, "--labels", tmp / "files.csv")
    return run_xgal(*args, "--size", 16, timeout=120)


def test_an_id_with_spaces_around_it_is_refused_at_import(tmp_path):
    (tmp_path / "scans").mkdir()
    for k, name in enumerate(["scan1 .png", "scan2.png"]):
        Image.fromarray(np.full((16, 16), 40 * k + 20, np.uint8)).save(tmp_path / "scans" / name)
    # A file name with a space before its extension: its ID, the name's stem, ends with one.
    res = _import(tmp_path, "p", [["image"], ["scan1 .png"], ["scan2.png"]])
    text = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in text, text
    assert "sample ID 'scan1 '" in res.stderr and "rename the file" in res.stderr, text
    # An id cell with spaces.
    res = _import(tmp_path, "q", [["image", "id"], ["scan2.png", " scan-2"]])
    assert res.returncode == 2 and "sample ID ' scan-2'" in res.stderr, res.stdout + res.stderr
    # Fixed, the same import goes through, into the same folder.
    res = _import(tmp_path, "q", [["image", "id"], ["scan2.png", "scan-2"]])
    assert res.returncode == 0, res.stderr
    assert Pool(tmp_path / "q").ids().tolist() == ["scan-2"]

"""A trainer killed with SIGKILL in any stage of a round resumes from where it stopped: the run
ends as the same run never interrupted ends (rounds, metrics, selections, model versions, the
labelled set), and the annotator, a person in the product, is never asked twice for an answer
it gave.

Every run is a process of its own, forked by a runner script (RUNNER, below), and talks to one
real scorer over gRPC on 127.0.0.1. A case runs the loop until it kills itself at one point,
through the loop's `on_stage` hook or, inside a stage, through its annotator or a write, then
resumes it in a new process. The runner's annotator writes down every ID it is asked about as it
is asked, so "asked twice" is seen, not assumed. Training and export are deterministic on CPU,
so a resumed run must equal the reference exactly.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xgal.loop import LoopConfig
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.fit import TrainConfig

CONFIG = LoopConfig(initial=12, per_round=6, rounds=2, train=TrainConfig(epochs=1, alpha=0.1))

RUNNER = r'''
"""Runs the active-learning loop in a process of its own per job (a JSON line on stdin) and
answers each with how that process ended. A fresh interpreter spends seconds of CPU importing
torch, ONNX and gRPC: this one imports them once and forks a process per run, before anything
has computed (no thread pool to inherit)."""
import json
import os
import pickle
import signal
import sys
import traceback

# What a run would import on first use: Adam imports dynamo, the export ONNX Script.
import grpc._channel  # noqa: F401
import onnxscript._framework_apis.torch_2_8  # noqa: F401
import onnxscript.optimizer  # noqa: F401
import onnxscript.rewriter  # noqa: F401
import torch
import torch._dynamo  # noqa: F401
import torch.onnx  # noqa: F401
import torch.profiler  # noqa: F401

from xgal.client import ScorerClient
from xgal.pool.format import Pool
from xgal.annotate.oracle import OracleAnnotator
from xgal.loop import ActiveLearningLoop, LoopConfig

# Every run alike, and none spinning threads against the others on a busy machine.
torch.set_num_threads(1)


def append(path, line):
    # fsync'd: what a process wrote just before it was killed is there to check.
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class LoggingOracle(OracleAnnotator):
    """Writes down every ID it is asked about, as it is asked."""

    def __init__(self, pool, log):
        super().__init__(pool)
        self.log, self.die_when_asked = log, False

    def annotate(self, request):
        append(self.log, json.dumps(request.ids))
        if self.die_when_asked:  # asked, and gone before answering
            die()
        return super().annotate(request)


def tear_state_writes():
    """From now on the process dies half-way through writing state.json (or its temporary)."""
    real = os.write

    def write(fd, data):
        if "state.json" in os.readlink(f"/proc/self/fd/{fd}"):
            real(fd, bytes(data)[: len(data) // 2])
            die()
        return real(fd, data)

    os.write = write


def run(job):
    pool = Pool(job["pool"])
    oracle = LoggingOracle(pool, job["asked"])
    kill = job["kill"]

    def on_stage(r, stage):
        append(job["stages"], f"{r} {stage}")
        if kill is not None and [r, stage] == kill["at"]:
            if kill["how"] == "stage":
                die()
            elif kill["how"] == "unanswered":
                oracle.die_when_asked = True
            elif kill["how"] == "torn":
                tear_state_writes()

    # The first run traces the network (seconds); the others start from its traced graph.
    exporter = None
    if os.path.exists(job["exporter"]):
        with open(job["exporter"], "rb") as f:
            exporter = pickle.load(f)
    with ScorerClient(job["address"]) as client:
        loop = ActiveLearningLoop(
            LoopConfig.from_dict(job["config"]),
            pool,
            Pool(job["test"]),
            client,
            oracle,
            job["out"],
            pool_ref="pool",
            model_name=job["model"],
            exporter=exporter,
            on_stage=on_stage,
        )
        loop.run()
    if exporter is None:
        with open(job["exporter"], "wb") as f:
            pickle.dump(loop.exporter, f)


def child(job):
    fd = os.open(job["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)  # the runner's stdout carries its answers
    os.dup2(fd, 2)
    code = 0
    try:
        run(job)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(job)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
'''


class World:
    """The pools, the scorer's address, and the runner that runs each job in a process."""

    def __init__(self, root: Path, address: str):
        self.root, self.address = root, address
        (root / "runner.py").write_text(RUNNER)
        self.runner = subprocess.Popen(
            [sys.executable, str(root / "runner.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.ref = self.job("ref")

    def job(self, name: str, kill: dict | None = None) -> dict:
        run = self.root / name
        run.mkdir()
        return {
            "pool": str(self.root / "data" / "pool"),
            "test": str(self.root / "data" / "test"),
            "address": self.address,
            "out": str(run / "out"),
            "model": name,  # each run its own versions, numbered from 1 as the reference's
            "config": CONFIG.to_dict(),
            "asked": str(run / "asked.jsonl"),
            "stages": str(run / "stages.log"),
            "output": str(run / "output.log"),
            "exporter": str(self.root / "exporter.pkl"),
            "kill": kill,
        }

    def run(self, job: dict, timeout: float = 120) -> int:
        """Run `job` in a process of its own; its return code (-9: killed by SIGKILL)."""
        self.runner.stdin.write((json.dumps(job) + "\n").encode())
        self.runner.stdin.flush()
        ready, _, _ = select.select([self.runner.stdout], [], [], timeout)
        if not ready:
            self.runner.kill()
            pytest.fail(f"the run took over {timeout} s:\n{output(job)}")
        return json.loads(self.runner.stdout.readline())["returncode"]

    def close(self) -> None:
        self.runner.stdin.close()  # the runner ends with its input
        try:
            self.runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.runner.kill()
            self.runner.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    synth_pool(root / "data" / "pool", 60, seed=0, image_size=32, shard_size=100)
    synth_pool(root / "data" / "test", 30, seed=0, image_size=32, split="test")
    server = RunningServer(ServerConfig(data_root=root / "data", model_repo=root / "repo", port=0))
    w = World(root, server.address)
    try:
        assert w.run(w.ref) == 0, output(w.ref)  # the reference: the run never interrupted
        yield w
    finally:
        w.close()
        server.stop(grace=1)


def output(job: dict) -> str:
    path = Path(job["output"])
    return path.read_text() if path.exists() else ""


def _lines(path: str) -> list[str]:
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


def _asked(job: dict) -> list[list[str]]:
    """Each request the annotator got, in order."""
    return [json.loads(line) for line in _lines(job["asked"])]


def _outcome(job: dict) -> tuple[list[dict], list[str], list[int]]:
    """What a finished run holds that must not depend on its having been interrupted."""
    out = Path(job["out"])
    state = json.loads((out / "state.json").read_text())
    rounds = [{k: v for k, v in r.items() if k != "seconds"} for r in state["rounds"]]
    ann = np.load(out / "annotations.npz")
    return rounds, ann["ids"].tolist(), ann["labels"].tolist()


def _finished_rounds(job: dict) -> int:
    return len(json.loads((Path(job["out"]) / "state.json").read_text())["rounds"])


def test_the_reference_run_asks_for_each_sample_once(world):
    asked = [i for ids in _asked(world.ref) for i in ids]
    assert len(asked) == len(set(asked)) == CONFIG.initial + CONFIG.rounds * CONFIG.per_round
    rounds, ids, _ = _outcome(world.ref)
    assert [r["round"] for r in rounds] == [0, 1, 2] and sorted(ids) == sorted(asked)
    assert [r["model_version"] for r in rounds] == [1, 2, 3]  # the final model is published too


# case: (round, stage where the process dies, how, the stage the resumed run begins with).
# "stage" kills as the stage begins: everything before it is on disk and nothing of it is, the
# state a kill anywhere inside it leaves, since a stage keeps nothing until it ends.
# "recording" begins once the annotator's answers are stored: the worst case of annotation, the
# annotator has answered and the round is not recorded yet. A resumed round that does not begin
# with "training" was not trained again.
CASES = {
    # No round finished yet: the initial set's answers are all the run has kept.
    "training": (0, "training", "stage", "training"),
    # Export and publish again: the same weights are the same bytes, the version the scorer has.
    "export": (1, "export", "stage", "export"),
    "publish": (1, "publish", "stage", "export"),
    "scoring": (1, "scoring", "stage", "export"),
    # Asked, and killed before answering: the same selection is sent again.
    "annotation-unanswered": (1, "annotation", "unanswered", "annotation"),
    "annotation-answered": (1, "recording", "stage", "recording"),
    # Killed half-way through writing state.json.
    "state-write-torn": (1, "recording", "torn", "recording"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_run_resumes_as_if_never_killed(world, case):
    r, stage, how, resumes_at = CASES[case]
    job = world.job(case, {"at": [r, stage], "how": how})
    assert world.run(job) == -signal.SIGKILL, output(job)
    stages_before = _lines(job["stages"])
    assert stages_before[-1] == f"{r} {stage}"
    assert _finished_rounds(job) == r  # state.json reads, and holds the rounds finished
    asked_before = _asked(job)

    assert world.run({**job, "kill": None}) == 0, output(job)
    ref_asked = _asked(world.ref)  # each sample once (the test above)
    asked_after = _asked(job)[len(asked_before) :]
    if how == "unanswered":
        assert asked_before == ref_asked[: len(asked_before)]
        assert asked_after == ref_asked[len(asked_before) - 1 :]
    else:
        assert asked_before + asked_after == ref_asked
    assert _outcome(job) == _outcome(world.ref)
    assert _lines(job["stages"])[len(stages_before)] == f"{r} {resumes_at}"
    # The labelled set is exactly what the annotator's stored answers hold.
    answers = sorted((Path(job["out"]) / "answers").glob("*.npz"))
    assert sorted(_outcome(job)[1]) == sorted(i for f in answers for i in np.load(f)["ids"].tolist())


def test_a_run_folder_from_before_the_answers_journal_resumes(world):
    """A folder as the loop wrote it before answers/ and pending/ (state.json, annotations.npz
    and model.pt after round 0) continues with round 1, asking only for round 1's selection."""
    job = world.job("old-format", {"at": [1, "training"], "how": "stage"})
    assert world.run(job) == -signal.SIGKILL, output(job)
    out = Path(job["out"])
    shutil.rmtree(out / "answers")
    shutil.rmtree(out / "pending")
    assert _finished_rounds(job) == 1
    asked_before = _asked(job)

    assert world.run({**job, "kill": None}) == 0, output(job)
    assert _asked(job)[len(asked_before) :] == _asked(world.ref)[2:]
    assert _outcome(job) == _outcome(world.ref)

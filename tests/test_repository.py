"""The model repository shared by several replica processes: publishes race on one folder."""

import hashlib
import json
import subprocess
import sys
import time

import pytest
import torch
from helpers import wait_for

from xgal.export import export_scoring_graph
from xgal.scorer.repository import ModelRepository
from xgal.train.nets import build_model

# Each process says it is ready (imports done, repository open), waits for the go file, then
# publishes its model; all start within milliseconds.
PUBLISHER = """
import hashlib, json, os, sys, time
from pathlib import Path
from xgal.scorer.repository import ModelRepository
root, go, model = sys.argv[1:]
data = Path(model).read_bytes()
repo = ModelRepository(root)
Path(go + f".ready-{os.getpid()}").touch()
while not os.path.exists(go):
    time.sleep(0.001)
stored = repo.publish("shared", data, hashlib.sha256(data).hexdigest())
print(json.dumps([stored.version, stored.sha256]))
"""


# A publisher that logs each attempt to take the publish lock (filelock tries a non-blocking
# flock on the lock file and polls): "refused" while another process holds it, "taken" once
# it has it. The log says whether it waited and when it got in, with no timing involved.
LOGGED_PUBLISHER = """
import fcntl, hashlib, json, os, sys
from pathlib import Path
from xgal.scorer.repository import LOCK_FILE, ModelRepository
root, model, log = sys.argv[1:]
lock_file = os.path.realpath(os.path.join(root, LOCK_FILE))
flock = fcntl.flock

def logged_flock(fd, op):
    ours = bool(op & fcntl.LOCK_EX) and os.path.realpath(f"/proc/self/fd/{fd}") == lock_file
    try:
        out = flock(fd, op)
    except OSError:
        if ours:
            with open(log, "a") as f:
                f.write("refused\\n")
        raise
    if ours:
        with open(log, "a") as f:
            f.write("taken\\n")
    return out

fcntl.flock = logged_flock
data = Path(model).read_bytes()
stored = ModelRepository(root).publish("shared", data, hashlib.sha256(data).hexdigest())
print(json.dumps([stored.version, stored.sha256]))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two different small scoring graphs, exported once for the module."""
    root = tmp_path_factory.mktemp("models")
    out = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = build_model("small_cnn", "linear", 3, in_channels=1)
        out.append(
            export_scoring_graph(model, "features.stage4.0", root / f"m{seed}.onnx", image_shape=(1, 32, 32))
        )
    return out


def _wait_ready(go, n):
    deadline = time.monotonic() + 120
    while len(list(go.parent.glob(go.name + ".ready-*"))) < n:
        assert time.monotonic() < deadline, "publisher processes did not start"
        time.sleep(0.05)
    for f in go.parent.glob(go.name + ".ready-*"):
        f.unlink()


def _publish_at_once(root, go, models):
    """Start one process per model path, wait until all are ready, then release them together."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(root), str(go), str(m)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in models
    ]
    _wait_ready(go, len(procs))
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(tuple(json.loads(out)))
    go.unlink()
    return results


def test_replicas_publishing_at_once_to_one_folder(models, tmp_path):
    m0, m1 = models
    sha0, sha1 = (hashlib.sha256(m.read_bytes()).hexdigest() for m in (m0, m1))
    root, go = tmp_path / "repo", tmp_path / "go"
    # The client publishing one round to every replica at once: one version.
    assert set(_publish_at_once(root, go, [m0] * 4)) == {(1, sha0)}
    assert sorted(p.name for p in (root / "shared").iterdir()) == ["1"]
    # Two models racing under one name: every publisher succeeds and gets a version that holds
    # exactly its bytes (the same bytes as the latest version reuse it, so rounds may alternate).
    results = _publish_at_once(root, go, [m1, m0, m1, m0, m1, m0])
    repo = ModelRepository(root)
    versions = repo.versions("shared")
    assert versions == list(range(1, len(versions) + 1))
    for version, sha in results:
        assert repo.get("shared", version).sha256 == sha
    assert {sha for _, sha in results} == {sha0, sha1}
    # Nothing half-written is left behind.
    assert sorted(p.name for p in (root / "shared").iterdir()) == sorted(str(v) for v in versions)


def test_a_publish_waits_for_another_process_holding_the_folder(models, tmp_path):
    from filelock import FileLock

    from xgal.scorer.repository import LOCK_FILE

    root, log = tmp_path / "repo", tmp_path / "flock.log"
    root.mkdir()

    def attempts():
        return log.read_text().split() if log.exists() else []

    with FileLock(root / LOCK_FILE):  # another replica in the middle of its publish
        proc = subprocess.Popen(
            [sys.executable, "-c", LOGGED_PUBLISHER, str(root), str(models[0]), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Refused twice: it reached the lock and keeps waiting for it (rather than giving up
            # or going on). A publish that does not take the lock ends here instead.
            wait_for(
                lambda: attempts().count("refused") >= 2 or proc.poll() is not None,
                timeout=120,
                what="the publisher trying the lock",
            )
            assert proc.poll() is None, "published while another process held the lock"
            assert set(attempts()) == {"refused"} and not (root / "shared").exists()
            held = len(attempts())
        except BaseException:
            proc.kill()
            proc.communicate(timeout=30)
            raise
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    # It got the lock once, and only after this process let it go.
    assert attempts().count("taken") == 1 and "taken" not in attempts()[:held]
    assert json.loads(out)[0] == 1 and (root / "shared" / "1" / "model.onnx").is_file()


def test_publish_lock_timeout_and_stale_temp_folders(models, tmp_path):
    from filelock import FileLock

    from xgal.scorer.repository import LOCK_FILE

    data = models[0].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    root = tmp_path / "repo"
    repo = ModelRepository(root, lock_timeout_s=0.5)
    with FileLock(root / LOCK_FILE):
        with pytest.raises(TimeoutError, match="publish again later"):
            repo.publish("m", data, sha)
    # A publisher that died mid-write left its temp folder; the next publish clears it.
    stale = root / "m" / ".1.4242.deadbeef.tmp"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    assert repo.publish("m", data, sha).version == 1
    assert sorted(p.name for p in (root / "m").iterdir()) == ["1"]

"""The model repository shared by several replica processes: publishes race on one folder."""

import hashlib
import json
import subprocess
import sys
import time

import pytest
import torch

from xgal.scorer.repository import ModelRepository
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model

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

    model = models[0]
    root, go = tmp_path / "repo", tmp_path / "go"
    root.mkdir()
    go.touch()
    lock = FileLock(root / LOCK_FILE)
    with lock:  # another replica in the middle of its publish
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(root), str(go), str(model)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_ready(go, 1)
        time.sleep(2)  # ample time to validate and store a small graph, were it not waiting
        assert proc.poll() is None and not (root / "shared" / "1").exists()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
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

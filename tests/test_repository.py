"""The model repository shared by several replica processes: publishes race on one folder."""

import hashlib
import json
import subprocess
import sys
import time

import torch

from xgal.scorer.repository import ModelRepository
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model

# Each process waits for the go file, then publishes its model; all start within milliseconds.
PUBLISHER = """
import hashlib, json, os, sys, time
from pathlib import Path
from xgal.scorer.repository import ModelRepository
root, go, model = sys.argv[1:]
data = Path(model).read_bytes()
repo = ModelRepository(root)
while not os.path.exists(go):
    time.sleep(0.001)
stored = repo.publish("shared", data, hashlib.sha256(data).hexdigest())
print(json.dumps([stored.version, stored.sha256]))
"""


def _export(path, seed):
    torch.manual_seed(seed)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    return export_scoring_graph(model, "features.stage4.0", path, image_shape=(1, 32, 32))


def test_replicas_publishing_at_once_to_one_folder(tmp_path):
    models = [_export(tmp_path / f"m{i}.onnx", i) for i in range(2)]
    root, go = tmp_path / "repo", tmp_path / "go"
    # Four processes publish model 0 (the client publishing one round to every replica) and
    # two publish model 1, all at the same moment.
    which = [0, 0, 0, 0, 1, 1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(root), str(go), str(models[i])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in which
    ]
    time.sleep(3)  # let every process import and open the repository
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(tuple(json.loads(out)))
    shas = [hashlib.sha256(m.read_bytes()).hexdigest() for m in models]
    by_model = {i: {r for r, w in zip(results, which, strict=True) if w == i} for i in (0, 1)}
    # Each model has exactly one version number for all its publishers, and they differ.
    assert all(len(v) == 1 for v in by_model.values()), results
    (v0, sha0), (v1, sha1) = by_model[0].pop(), by_model[1].pop()
    assert (sha0, sha1) == tuple(shas) and v0 != v1
    repo = ModelRepository(root)
    assert repo.versions("shared") == sorted([v0, v1])
    assert repo.get("shared", v0).sha256 == shas[0] and repo.get("shared", v1).sha256 == shas[1]
    # Nothing half-written is left behind.
    assert sorted(p.name for p in (root / "shared").iterdir()) == sorted([str(v0), str(v1)])

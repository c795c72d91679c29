"""Several scorer replicas as separate processes on 127.0.0.1: sharding, exact merge,
failover when a replica dies mid-pool, SIGTERM drain, and the scorer-side import rule."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from xgal.client import ScorerClient
from xgal.pool.synth import synth_pool
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model


class Replica:
    def __init__(self, data_root, repo, *extra):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xgal.cli",
                "serve",
                "--port",
                "0",
                "--data-root",
                str(data_root),
                "--model-repo",
                str(repo),
                "--max-batch",
                "16",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 60
        line = ""
        while "listening on" not in line:
            line = self.proc.stdout.readline()
            if not line and (self.proc.poll() is not None or time.monotonic() > deadline):
                raise RuntimeError("replica did not start")
        self.address = line.split("listening on ")[1].split(",")[0].strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    synth_pool(root / "data" / "pool", 2000, seed=0, image_size=32, shard_size=500)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    replicas = [Replica(root / "data", root / f"repo{i}") for i in range(3)]
    yield root, onnx, replicas
    for r in replicas:
        r.stop()


def test_three_replicas_equal_one_and_survive_a_kill(world):
    root, onnx, replicas = world
    addresses = [r.address for r in replicas]
    with ScorerClient(addresses) as client:
        client.publish_model(onnx, "demo")
        single = {}
        for balance in ("none", "predicted"):
            with ScorerClient(addresses[:1]) as one:
                single[balance] = one.score_pool(
                    "pool", model="demo", top_k=40, balance=balance, progress=False
                )
            multi = client.score_pool("pool", model="demo", top_k=40, balance=balance, progress=False)
            assert multi.top.ids.tolist() == single[balance].top.ids.tolist()
            np.testing.assert_array_equal(multi.top.score, single[balance].top.score)
            assert multi.scored == single[balance].scored == 2000

        killed = []

        def kill_one(done, total):
            if not killed and done > 0:
                replicas[2].proc.kill()
                killed.append(done)

        survived = client.score_pool("pool", model="demo", top_k=40, shards=9, progress=kill_one)
    assert killed and replicas[2].proc.wait(timeout=10) != 0
    assert survived.top.ids.tolist() == single["none"].top.ids.tolist()
    assert survived.scored == 2000


def test_sigterm_drains_in_flight_request(world):
    root, onnx, _ = world
    rep = Replica(root / "data", root / "repo-drain", "--max-delay-ms", "20")
    try:
        with ScorerClient(rep.address) as client:
            client.publish_model(onnx, "demo")
            seen = []

            def term_once(done, total):
                if not seen:
                    rep.proc.send_signal(signal.SIGTERM)
                seen.append(done)

            res = client.score_pool("pool", model="demo", top_k=5, progress=term_once)
        assert res.scored == 2000  # the request in flight finished
        assert rep.proc.wait(timeout=30) == 0  # then the replica exited cleanly
    finally:
        rep.stop()


def test_scorer_and_client_import_no_torch(world, tmp_path):
    root, onnx, _ = world
    code = f"""
import sys
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.client import ScorerClient
cfg = ServerConfig(data_root={str(root / "data")!r}, model_repo={str(tmp_path / "r")!r}, port=0)
srv = RunningServer(cfg)
with ScorerClient(srv.address) as c:
    c.publish_model({str(onnx)!r}, "demo")
    assert c.score_pool("pool", model="demo", top_k=3, progress=False).scored == 2000
srv.stop(1)
bad = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "xgal.trainer"))]
assert not bad, bad
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ})


def test_client_cli_publish_and_score(world, tmp_path):
    root, onnx, replicas = world
    live = [r.address for r in replicas if r.proc.poll() is None]
    targets = [arg for a in live for arg in ("--target", a)]
    cli = [sys.executable, "-m", "xgal.cli", "client"]
    pub = subprocess.run(
        [*cli, "publish", str(onnx), "--name", "cli", *targets], capture_output=True, text=True, timeout=120
    )
    assert pub.returncode == 0, pub.stderr
    assert "published cli version 1" in pub.stdout
    out = tmp_path / "r.json"
    res = subprocess.run(
        [*cli, "score", "--pool", "pool", "--model", "cli", "-k", "5", "--out", str(out), *targets],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "scored 2000 images with cli v1" in res.stdout
    bad = subprocess.run(
        [*cli, "score", "--pool", "../etc", "--model", "cli", *targets],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "PERMISSION_DENIED" in bad.stderr and "Traceback" not in bad.stderr


def test_client_cli_health(tmp_path):
    """What a container health check runs: reachable is exit 0, SERVING (a model loaded) is
    exit 0 with --serving, a closed port is exit 1."""
    (tmp_path / "data").mkdir()
    replica = Replica(tmp_path / "data", tmp_path / "repo")
    cli = [sys.executable, "-m", "xgal.cli", "client", "health"]
    try:

        def health(*args):
            return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

        up = health("--target", replica.address)
        assert up.returncode == 0 and f"{replica.address}  NOT_SERVING" in up.stdout
        assert health("--target", replica.address, "--serving").returncode == 1

        torch.manual_seed(0)
        model = build_model("small_cnn", "linear", 3, in_channels=1)
        onnx = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
        with ScorerClient(replica.address) as client:
            client.publish_model(onnx, "m")
        assert health("--target", replica.address, "--serving").returncode == 0

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        down = health("--target", replica.address, "--target", closed, "--timeout", "2")
        assert down.returncode == 1
        assert f"{closed}  UNREACHABLE" in down.stdout and f"{replica.address}  SERVING" in down.stdout
    finally:
        replica.stop()


def test_replicas_sharing_one_model_repository(world, tmp_path):
    root, onnx, _ = world
    shared = tmp_path / "models"
    pair = [Replica(root / "data", shared) for _ in range(2)]
    try:
        torch.manual_seed(5)
        other = export_scoring_graph(
            build_model("small_cnn", "linear", 3, in_channels=1),
            "features.stage4.0",
            tmp_path / "other.onnx",
            image_shape=(1, 32, 32),
        )
        addresses = [r.address for r in pair]
        a, b = (ScorerClient(address) for address in addresses)
        with a, b:
            # One round published to every replica is stored once, as one version.
            assert [c.publish_model(onnx, "demo").version for c in (a, b)] == [1, 1]
            assert [c.publish_model(other, "demo").version for c in (b, a)] == [2, 2]
            assert sorted(p.name for p in (shared / "demo").iterdir()) == ["1", "2"]
            assert [m.version for m in a.list_models("demo")] == [1, 2]
        with ScorerClient(addresses) as both:
            ranked = both.score_pool("pool", model="demo", top_k=10, progress=False)
            assert len(ranked.top.ids) == 10 and ranked.model.version == 2
    finally:
        for r in pair:
            r.stop()

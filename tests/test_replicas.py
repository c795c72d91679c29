"""Several scorer replicas as separate processes on 127.0.0.1: sharding, exact merge,
failover when a replica dies mid-pool, SIGTERM drain, and the scorer-side import rule."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import Replica, ShardWatch, bounded, run_xgal

from xgal.client import ScorerClient
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.train.nets import build_model

POOL = 2000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    synth_pool(root / "data" / "pool", POOL, seed=0, image_size=32, shard_size=500)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    return root, onnx


@pytest.fixture(scope="module")
def replicas(world):
    """Three replicas the module's tests share; no test stops or kills them."""
    root, _ = world
    started = [Replica(root / "data", root / f"repo{i}") for i in range(3)]
    try:
        assert all(r.address for r in started)
        yield started
    finally:
        for r in started:
            r.stop()


def test_three_replicas_equal_one(world, replicas):
    _, onnx = world
    addresses = [r.address for r in replicas]
    with ScorerClient(addresses, timeout=120) as client:
        client.publish_model(onnx, "demo")
        for balance in ("none", "predicted"):
            with ScorerClient(addresses[:1], timeout=120) as one:
                single = one.score_pool("pool", model="demo", top_k=40, balance=balance, progress=False)
            multi = client.score_pool("pool", model="demo", top_k=40, balance=balance, progress=False)
            assert multi.top.ids.tolist() == single.top.ids.tolist()
            np.testing.assert_array_equal(multi.top.score, single.top.score)
            assert multi.scored == single.scored == POOL


@pytest.fixture
def trio(world, tmp_path):
    """Three replicas of the failover test's own (it kills one). The last one scores one image
    per engine call, so each of its shards (hundreds of images) lasts far longer than killing
    it does: the kill lands mid-shard."""
    root, _ = world
    started = [
        Replica(root / "data", tmp_path / f"repo{i}", max_batch=mb) for i, mb in enumerate((16, 16, 1))
    ]
    try:
        assert all(r.address for r in started)
        yield started
    finally:
        for r in started:
            r.stop()


def test_a_replica_killed_mid_shard_fails_over_exactly(world, trio):
    _, onnx = world
    victim = trio[2]
    with ScorerClient([r.address for r in trio], timeout=120) as client:
        client.publish_model(onnx, "demo")
        with ScorerClient(trio[0].address, timeout=120) as one:
            clean = one.score_pool("pool", model="demo", top_k=40, progress=False)
        watch = client.targets[2].stub = ShardWatch(client.targets[2].stub)
        killed = {}

        def kill_mid_shard(done, total):
            # Called on every event; the first time the victim reports progress on a shard
            # it has not finished, SIGKILL it and wait until it is gone.
            running = watch.running()
            if running and not killed:
                victim.proc.kill()
                victim.proc.wait(timeout=10)
                killed.update(done=done, total=total, running=running)

        survived = bounded(
            lambda: client.score_pool("pool", model="demo", top_k=40, shards=6, progress=kill_mid_shard),
            timeout=180,
            what="score_pool with a replica killed",
        )
    assert killed, "the victim never reported progress on a shard"
    # The kill landed before the pool was done, while the victim was inside a shard...
    assert killed["done"] < killed["total"] == POOL
    [((start, stop), reported)] = killed["running"].items()
    assert 0 < reported < stop - start
    assert victim.proc.returncode == -signal.SIGKILL
    # ...which never finished there: it was cut (UNAVAILABLE) and scored elsewhere.
    assert watch.ended[(start, stop)] == "UNAVAILABLE"
    assert "result" not in watch.ended.values()
    # And the merged ranking is exactly a clean single-replica run's.
    assert survived.top.ids.tolist() == clean.top.ids.tolist()
    np.testing.assert_array_equal(survived.top.score, clean.top.score)
    assert (survived.scored, survived.excluded) == (clean.scored, clean.excluded) == (POOL, 0)


def test_sigterm_drains_in_flight_request(world):
    root, onnx = world
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
        assert seen[0] < seen[-1] == POOL  # SIGTERM went while the request was in flight
        assert res.scored == POOL  # and the request in flight finished
        assert rep.proc.wait(timeout=30) == 0  # then the replica exited cleanly
    finally:
        rep.stop()


def test_sigterm_to_any_thread_of_the_replica_drains_it(world):
    """The kernel hands a process's SIGTERM to whichever of its threads can take it: under load,
    not always the main one, which Python runs signal handlers on. Sent here to one of the
    replica's other threads, the replica must still drain and exit."""
    import ctypes

    root, onnx = world
    rep = Replica(root / "data", root / "repo-thread-signal")
    try:
        with ScorerClient(rep.address) as client:
            client.publish_model(onnx, "demo")  # threads of gRPC and ONNX Runtime running
        others = sorted(int(t) for t in os.listdir(f"/proc/{rep.proc.pid}/task") if int(t) != rep.proc.pid)
        assert others, "the replica runs one thread only"
        libc = ctypes.CDLL(None, use_errno=True)
        # The oldest other thread first (started with the server, it lives as long); one that has
        # exited since the listing (ESRCH) is passed over.
        sent = next((t for t in others if libc.tgkill(rep.proc.pid, t, signal.SIGTERM) == 0), None)
        assert sent is not None, f"no thread took the signal: {os.strerror(ctypes.get_errno())}"
        assert rep.proc.wait(timeout=30) == 0  # handled (a signal left unhandled: no exit)
    finally:
        rep.stop()


def test_scorer_and_client_import_no_torch(world, tmp_path):
    root, onnx = world
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
torch_parts = ("torch.", "xgal.train", "xgal.export", "xgal.loop")
bad = [m for m in sys.modules if m == "torch" or m.startswith(torch_parts)]
assert not bad, bad
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ})


def test_client_cli_publish_and_score(world, replicas, tmp_path):
    _, onnx = world
    targets = [arg for r in replicas for arg in ("--target", r.address)]
    pub = run_xgal("client", "publish", onnx, "--name", "cli", *targets, timeout=120)
    assert pub.returncode == 0, pub.stderr
    assert "published cli version 1" in pub.stdout
    out = tmp_path / "r.json"
    score = ("client", "score", "--pool", "pool", "--model", "cli", "-k", 5, "--out", out)
    res = run_xgal(*score, *targets, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "scored 2000 images with cli v1" in res.stdout
    bad = run_xgal("client", "score", "--pool", "../etc", "--model", "cli", *targets, timeout=120)
    assert bad.returncode == 2 and "PERMISSION_DENIED" in bad.stderr and "Traceback" not in bad.stderr


def test_client_cli_health(tmp_path):
    """What a container health check runs: reachable is exit 0, SERVING (a model loaded) is
    exit 0 with --serving, a closed port is exit 1."""
    (tmp_path / "data").mkdir()
    replica = Replica(tmp_path / "data", tmp_path / "repo")
    try:

        def health(*args):
            return run_xgal("client", "health", *args, timeout=60)

        up = health("--target", replica.address)
        assert up.returncode == 0 and f"{replica.address}  NOT_SERVING" in up.stdout
        assert health("--target", replica.address, "--serving").returncode == 1

        torch.manual_seed(0)
        model = build_model("small_cnn", "linear", 3, in_channels=1)
        onnx = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
        with ScorerClient(replica.address) as client:
            client.publish_model(onnx, "m")
        assert health("--target", replica.address, "--serving").returncode == 0
        models = run_xgal("client", "models", "--target", replica.address, timeout=60)
        assert models.returncode == 0, models.stderr
        assert f"{replica.address}  m v1" in models.stdout
        assert "loaded on CPUExecutionProvider" in models.stdout

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        down = health("--target", replica.address, "--target", closed, "--timeout", "2")
        assert down.returncode == 1
        assert f"{closed}  UNREACHABLE" in down.stdout and f"{replica.address}  SERVING" in down.stdout
    finally:
        replica.stop()


def test_replicas_sharing_one_model_repository(world, tmp_path):
    root, onnx = world
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

"""The client's retries against real servers on 127.0.0.1: a single target that refuses for a
while is tried again, a replica that went down and came back is used again, a target that
stays down ends in a clear, bounded error, and an answer that is not "try again" is not
retried."""

import socket
import threading
import time

import grpc
import pytest
import torch

from xgal.client import RetryPolicy, ScorerClient, ScorerError
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model

FAST = RetryPolicy(attempts=4, backoff_s=0.05, max_backoff_s=0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("retry")
    synth_pool(root / "data" / "pool", 256, seed=0, image_size=32, shard_size=64)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    return root, export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))


def _server(world, repo, port=0):
    return RunningServer(ServerConfig(data_root=world[0] / "data", model_repo=repo, port=port, max_batch=32))


def _count(server, method, code):
    return server.metrics.requests.labels(method, code)._value.get()


def _wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_single_target_that_refuses_for_a_while_is_tried_again(world, tmp_path):
    srv = _server(world, tmp_path / "repo")
    try:
        with ScorerClient(srv.address, retry=RetryPolicy(attempts=6, backoff_s=0.2, max_backoff_s=1.0)) as c:
            c.publish_model(world[1], "m")
            srv.service.draining.set()  # scoring calls answer UNAVAILABLE meanwhile

            def reopen():
                _wait_for(lambda: _count(srv, "ScorePool", "UNAVAILABLE") >= 1)
                srv.service.draining.clear()

            opener = threading.Thread(target=reopen)
            opener.start()
            result = c.score_pool("pool", model="m", top_k=10, progress=False)
            opener.join(timeout=30)
        assert result.scored == 256
        assert _count(srv, "ScorePool", "UNAVAILABLE") >= 1 and _count(srv, "ScorePool", "OK") == 1
    finally:
        srv.stop(grace=1)


def test_a_replica_that_comes_back_is_used_again(world, tmp_path):
    a, b = _server(world, tmp_path / "a"), _server(world, tmp_path / "b")
    port_a = int(a.address.rsplit(":", 1)[1])
    try:
        with ScorerClient([a.address, b.address], retry=FAST) as c:
            c.publish_model(world[1], "m")
            clean = c.score_pool("pool", model="m", top_k=20, progress=False)
            a.stop(grace=0)
            degraded = c.score_pool("pool", model="m", top_k=20, progress=False)
            assert degraded.top.ids.tolist() == clean.top.ids.tolist()
            a = _server(world, tmp_path / "a", port=port_a)  # back on the same address
            # Used again once its channel reconnects: within a few runs, not never.
            for _ in range(20):
                again = c.score_pool("pool", model="m", top_k=20, progress=False)
                assert again.top.ids.tolist() == clean.top.ids.tolist()
                if _count(a, "ScorePool", "OK") > 0:
                    break
        assert _count(a, "ScorePool", "OK") > 0  # the revived replica took shards
    finally:
        a.stop(grace=0)
        b.stop(grace=0)


def test_a_target_that_stays_down_fails_clearly_and_in_bounded_time():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once closed
    t0 = time.monotonic()
    with ScorerClient(address, retry=FAST) as c, pytest.raises(ScorerError, match="after 4 tries") as err:
        c.score_pool("pool", model="m", top_k=5, progress=False)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - t0 < 10


def test_an_answer_that_is_not_try_again_is_not_retried(world, tmp_path):
    srv = _server(world, tmp_path / "repo")
    try:
        with ScorerClient(srv.address, retry=FAST) as c, pytest.raises(ScorerError) as err:
            c.score_pool("pool", model="no-such-model", top_k=5, progress=False)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert _count(srv, "ScorePool", "NOT_FOUND") == 1  # asked once: the answer is final
    finally:
        srv.stop(grace=0)


def test_replicas_serving_different_models_are_not_merged(world, tmp_path):
    torch.manual_seed(7)
    newer = export_scoring_graph(
        build_model("small_cnn", "linear", 3, in_channels=1),
        "features.stage4.0",
        tmp_path / "newer.onnx",
        image_shape=(1, 32, 32),
    )
    a, b = _server(world, tmp_path / "a"), _server(world, tmp_path / "b")
    try:
        with ScorerClient([a.address, b.address], retry=FAST) as c:
            c.publish_model(world[1], "m")
        with ScorerClient(b.address) as only_b:
            only_b.publish_model(newer, "m")  # b's latest is now another graph than a's
        with ScorerClient([a.address, b.address], retry=FAST) as c:
            with pytest.raises(ScorerError, match="different models") as err:
                c.score_pool("pool", model="m", top_k=5, progress=False)
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            pinned = c.score_pool("pool", model="m", version=1, top_k=5, progress=False)  # both have v1
        assert pinned.scored == 256
    finally:
        a.stop(grace=0)
        b.stop(grace=0)

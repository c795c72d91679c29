"""The gRPC service against real servers on 127.0.0.1: scoring (ScorePool and ScoreStream
equal to scoring in process, typed errors), dynamic batching, and cancellation or deadlines
stopping the work."""

import threading

import grpc
import numpy as np
import pytest
from helpers import requests_ended, service_server, service_world, wait_for

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.scorer.batcher import DynamicBatcher, QueueFullError
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.v1 import scorer_pb2 as pb


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool of 300 and two scoring graphs (helpers.service_world), once for this module."""
    return service_world(tmp_path_factory)


@pytest.fixture
def server(world, tmp_path):
    yield from service_server(world, tmp_path)


def test_grpc_ranking_equals_in_process(world, server):
    _, pool, m1, _ = world
    config = AcquisitionConfig(strategy="xgal")
    want = score_pool(OnnxRuntimeEngine(m1), pool, config, 15, exclude_ids=["scan-0000001"], return_all=True)
    seen = []
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        got = client.score_pool(
            "pool",
            model="demo",
            top_k=15,
            exclude_ids=["scan-0000001"],
            return_all=True,
            progress=lambda d, t: seen.append((d, t)),
        )
    assert got.top.ids.tolist() == want.top.ids.tolist()
    np.testing.assert_allclose(got.top.score, want.top.score, rtol=0, atol=1e-12)
    assert got.all is not None and got.all.ids.tolist() == want.all.ids.tolist()
    assert got.scored == 300 and got.excluded == 1
    assert seen and seen[-1][1] == 300


def test_pool_normalised_ranking_over_grpc(world, server):
    _, pool, m1, _ = world
    want = score_pool(OnnxRuntimeEngine(m1), pool, AcquisitionConfig(normalise="rank"), 10)
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        got = client.score_pool("pool", model="demo", top_k=10, normalise="rank", shards=3)
    assert got.top.ids.tolist() == want.top.ids.tolist()


def test_score_stream_matches_engine(world, server):
    _, pool, m1, _ = world
    d = pool.read(0, 40)
    want = OnnxRuntimeEngine(m1).run(d["images"], d["rois"], want_cam=True)
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        got, cams = client.score_arrays(
            d["images"],
            d["rois"],
            d["ids"],
            model="demo",
            batch_size=16,
            want_cam=True,
            strategy="misalignment",
        )
    assert got.ids.tolist() == d["ids"].tolist()
    np.testing.assert_allclose(got.m, 1 - want.dice, atol=1e-6)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
    np.testing.assert_allclose(cams, want.cam, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"pool": "missing"}, grpc.StatusCode.NOT_FOUND, "no pool 'missing'"),
        ({"pool": "../svc"}, grpc.StatusCode.PERMISSION_DENIED, "outside the scorer's data root"),
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "no model named 'nope'"),
        ({"lam": 3.0}, grpc.StatusCode.INVALID_ARGUMENT, "must be in [0, 1]"),
        ({"top_k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "top_k must be at least 1"),
    ],
)
def test_score_pool_errors_are_typed(world, server, kwargs, code, message):
    _, _, m1, _ = world
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        stub = client.targets[0].stub
        req = pb.ScorePoolRequest(
            pool=kwargs.get("pool", "pool"),
            model=pb.ModelRef(name=kwargs.get("model", "demo")),
            top_k=kwargs.get("top_k", 5),
            acquisition=pb.Acquisition(lam=kwargs.get("lam", 0.3)),
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ScorePool(req, timeout=10))
    assert info.value.code() == code
    assert message in info.value.details() and "Traceback" not in info.value.details()


def test_dynamic_batching_shares_calls_and_bounds_the_queue(world):
    _, pool, m1, _ = world
    engine = OnnxRuntimeEngine(m1)
    sizes = []
    batcher = DynamicBatcher(engine, max_batch=32, max_delay_ms=200, observe=lambda n, q, c: sizes.append(n))
    d = pool.read(0, 32)
    futures = [batcher.submit(d["images"][i : i + 8], d["rois"][i : i + 8]) for i in range(0, 32, 8)]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert sizes == [32]  # four requests, one engine call
    want = engine.run(d["images"], d["rois"])
    np.testing.assert_allclose(np.concatenate([r.dice for r in results]), want.dice, atol=1e-6)

    class Held:
        """The engine, but each call waits in it until the test lets it finish."""

        info = engine.info
        name = "held"

        def __init__(self):
            self.entered, self.release = threading.Event(), threading.Event()

        def run(self, image, roi, *a, **k):
            self.entered.set()
            if not self.release.wait(timeout=30):
                raise TimeoutError("the test never released the engine")
            return engine.run(image, roi)

    held = Held()
    slow = DynamicBatcher(held, max_batch=8, max_delay_ms=0, max_queue=1)
    try:
        first = slow.submit(d["images"][:8], d["rois"][:8])
        assert held.entered.wait(timeout=30)  # the worker holds the first in the engine...
        second = slow.submit(d["images"][:8], d["rois"][:8])  # ...the queue takes one more...
        with pytest.raises(QueueFullError, match="queue is full"):  # ...and no third
            slow.submit(d["images"][:8], d["rois"][:8])
    finally:
        held.release.set()
    assert len(first.result(timeout=30).dice) == len(second.result(timeout=30).dice) == 8
    slow.close()


class Gate:
    """Stands in for an engine's `run`: call n goes through once the test has allowed n calls
    (or opened the gate), so the test knows exactly which batch the server is in."""

    def __init__(self, run):
        self._run = run
        self._cond = threading.Condition()
        self.entered = self._allowed = 0
        self._open = False

    def __call__(self, *args, **kwargs):
        with self._cond:
            self.entered += 1
            n = self.entered
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._open or n <= self._allowed, timeout=60):
                raise TimeoutError(f"the test never let engine call {n} through")
        return self._run(*args, **kwargs)

    def allow(self, n):
        with self._cond:
            self._allowed = n
            self._cond.notify_all()

    def open(self):
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def wait_entered(self, n, timeout=30.0):
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= n, timeout), f"engine call {n} never came"


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_cancel_or_deadline_stops_the_work_within_a_batch(world, server, monkeypatch, how):
    """The server stops scoring a pool once its client cancelled or its deadline passed: after
    the batch it is in, its own counters show nothing more scored for that call."""
    _, pool, m1, _ = world
    batch = server.config.max_batch

    def images():
        return server.metrics.registry.get_sample_value("xgal_images_scored_total")

    with ScorerClient(server.address, timeout=60) as client:
        client.publish_model(m1, "demo")
        _, engine = server.repo.loaded("demo")
        gate = Gate(engine.run)
        monkeypatch.setattr(engine, "run", gate)
        gate.allow(2)
        req = pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="demo"), top_k=3)
        call = client.targets[0].stub.ScorePool(req, timeout=2.0 if how == "deadline" else 60)
        try:
            gate.wait_entered(3)  # two batches scored; the third is held in the engine
            at_stop = images()
            assert at_stop == 2 * batch and pool.count > 6 * batch
            if how == "cancel":
                call.cancel()
            with pytest.raises(grpc.RpcError) as info:
                list(call)  # a deadline passes while the third batch is held
            want = grpc.StatusCode.CANCELLED if how == "cancel" else grpc.StatusCode.DEADLINE_EXCEEDED
            assert info.value.code() == want
            # One round trip on the same connection: the server has read the cancellation (and
            # its own deadline, set when the call arrived, has passed) before it answers.
            client.list_models()
        finally:
            gate.open()
        # Until the server ends the call, or (a server that ignores it) has scored the whole pool:
        # then no work of that call is left running into the fixture's teardown.
        wait_for(
            lambda: requests_ended(server, "ScorePool") or images() >= pool.count,
            what="the server ending the call",
        )
        # The call is counted when it ends; its work thread stops at its next batch boundary.
        wait_for(
            lambda: not any(t.name == "xgal-score-pool" for t in threading.enumerate()),
            what="the server's work for the call to stop",
        )
        stopped_at = images()
        # The held batch finishes; at most one more races the cancellation; then nothing.
        assert at_stop + batch <= stopped_at <= at_stop + 2 * batch
        # Counted under why it ended: the client's cancel, or its deadline.
        assert requests_ended(server, "ScorePool") == {want.name: 1.0}
        # The next request is served in full.
        assert client.score_pool("pool", model="demo", top_k=3, progress=False).scored == pool.count
    assert images() == stopped_at + pool.count

"""A replica under more calls than it has workers: idle streams cannot starve health and
control calls, overload is refused with RESOURCE_EXHAUSTED at once, an idle stream is closed,
and a draining replica answers NOT_SERVING and UNAVAILABLE instead of refusing connections."""

import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import bounded, small_scoring_graphs, wait_for

from xgal.client import ScorerClient
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload")
    synth_pool(root / "data" / "pool", 64, seed=0, image_size=32)
    return root, small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")[0]


def _server(world, tmp_path, **config):
    root, onnx = world
    srv = RunningServer(ServerConfig(data_root=root / "data", model_repo=tmp_path / "repo", port=0, **config))
    with ScorerClient(srv.address) as client:
        client.publish_model(onnx, "m")
    return srv


def _batch(n=2):
    return pb.ScoreStreamRequest(
        model=pb.ModelRef(name="m"),
        pixel_dtype="uint8",
        ids=[f"s{i}" for i in range(n)],
        images=np.zeros((n, 1, 32, 32), np.uint8).tobytes(),
        rois=np.ones((n, 32, 32), np.uint8).tobytes(),
    )


class HeldStream:
    """A ScoreStream that sends one batch, gets its answer, then sends nothing until released."""

    def __init__(self, stub):
        self.release = threading.Event()

        def requests():
            yield _batch()
            self.release.wait(60)

        self.call = stub.ScoreStream(requests(), timeout=60)

    def first(self):
        return next(self.call)

    def finish(self):
        self.release.set()
        return list(self.call)


def _score_pool(stub, timeout=30):
    req = pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="m"), top_k=3)
    return list(stub.ScorePool(req, timeout=timeout))


def _count(srv, method, code):
    return srv.metrics.requests.labels(method, code)._value.get()


def test_idle_streams_cannot_starve_health_and_control(world, tmp_path):
    # 4 workers, 2 kept for health and control: scoring gets 2.
    srv = _server(world, tmp_path, workers=4, reserved_workers=2, stream_idle_s=60)
    held = []
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(2):
                held.append(HeldStream(stub))
                assert len(held[-1].first().samples) == 2  # admitted, and holding its worker
            assert srv.admission.in_flight == 2
            # Every worker the scoring calls may have is held by an idle stream. Health and
            # control calls still answer at once...
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
            assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models] == ["m"]
            assert stub.DescribePool(pb.DescribePoolRequest(pool="pool"), timeout=5).count == 64
            # ...and more scoring is refused at once with RESOURCE_EXHAUSTED, not queued.
            for call in (lambda: _score_pool(stub, timeout=5), lambda: list(HeldStream(stub).call)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
                assert "busy" in err.value.details()
            assert _count(srv, "ScorePool", "RESOURCE_EXHAUSTED") == 1
            assert _count(srv, "ScoreStream", "RESOURCE_EXHAUSTED") == 1
            # Once a stream ends, its worker scores again.
            assert held.pop().finish() == []
            wait_for(lambda: srv.admission.in_flight == 1, what="the finished stream to let go")
            assert _score_pool(stub)[-1].result.scored == 64
    finally:
        for h in held:
            h.release.set()
        srv.stop(grace=5)


def test_an_idle_stream_or_upload_is_closed(world, tmp_path):
    srv = _server(world, tmp_path, stream_idle_s=1.0)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            stream = HeldStream(stub)
            assert len(stream.first().samples) == 2
            with pytest.raises(grpc.RpcError) as err:
                bounded(lambda: next(stream.call), timeout=30, what="the idle stream to be closed")
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no message for 1 s" in err.value.details()
            stream.release.set()

            # An upload that stops sending after its header.
            stop = threading.Event()

            def upload():
                header = pb.PublishHeader(name="slow", sha256="0" * 64, size_bytes=10)
                yield pb.PublishModelRequest(header=header)
                stop.wait(60)

            with pytest.raises(grpc.RpcError) as err:
                bounded(lambda: stub.PublishModel(upload(), timeout=60), timeout=30, what="the idle upload")
            stop.set()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models] == ["m"]
            wait_for(lambda: srv.admission.in_flight == 0, what="both calls to let go of their workers")
            assert _count(srv, "ScoreStream", "DEADLINE_EXCEEDED") == 1
            assert _count(srv, "PublishModel", "DEADLINE_EXCEEDED") == 1
    finally:
        srv.stop(grace=5)


def test_a_draining_replica_says_so_instead_of_refusing_connections(world, tmp_path):
    srv = _server(world, tmp_path)
    stopper = None
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            in_flight = HeldStream(stub)
            assert len(in_flight.first().samples) == 2
            stopper = threading.Thread(target=srv.stop, kwargs={"grace": 60})
            stopper.start()
            wait_for(srv.service.draining.is_set, what="the drain to begin")
            # While the stream in flight finishes, the port stays open and says why it refuses.
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                _score_pool(stub, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in err.value.details()
            assert stub.ListModels(pb.ListModelsRequest(), timeout=5).models  # control still answers
            assert stopper.is_alive()  # the drain waits for the stream in flight...
            assert in_flight.finish() == []  # ...which ends normally,
            stopper.join(timeout=30)
            assert not stopper.is_alive()  # and then the replica stops.
            assert _count(srv, "ScoreStream", "OK") == 1
    finally:
        if stopper is None:
            srv.stop(grace=1)

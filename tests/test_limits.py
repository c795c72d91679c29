"""Requests outside what the service accepts get typed errors and the server stays up: top-k
over the pool, λ outside [0, 1] or NaN, unknown enum values, malformed ScoreStream batches; a
stream the client cancels is counted as CANCELLED, never as an internal error."""

import math
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from xgal.client import ScorerClient
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.scorer.stream import MAX_STREAM_BATCH
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    synth_pool(root / "data" / "pool", 50, seed=0, image_size=32)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    srv = RunningServer(ServerConfig(data_root=root / "data", model_repo=root / "repo", port=0))
    with ScorerClient(srv.address) as client:
        client.publish_model(onnx, "m")
    with grpc.insecure_channel(srv.address) as channel:
        yield srv, scorer_pb2_grpc.ScorerStub(channel)
    srv.stop(grace=0)


def _score_pool(stub, **fields):
    request = pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="m"), top_k=5)
    for key, value in fields.items():
        if key == "acquisition":
            request.acquisition.CopyFrom(value)
        else:
            setattr(request, key, value)
    return list(stub.ScorePool(request, timeout=30))


def _batch(n=2, ids=None, roi_value=1, image_bytes=None):
    return pb.ScoreStreamRequest(
        model=pb.ModelRef(name="m"),
        ids=ids if ids is not None else [f"s{i}" for i in range(n)],
        images=image_bytes if image_bytes is not None else np.zeros((n, 1, 32, 32), np.uint8).tobytes(),
        rois=np.full((n, 32, 32), roi_value, np.uint8).tobytes(),
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"top_k": 51}, "larger than the pool"),
        ({"top_k": 4294967295}, "larger than the pool"),  # a raw varint -1
        ({"acquisition": pb.Acquisition(lam=math.nan)}, "lam"),
        ({"acquisition": pb.Acquisition(lam=1.5)}, "lam"),
        ({"acquisition": pb.Acquisition(lam=-0.1)}, "lam"),
        ({"acquisition": pb.Acquisition(strategy=99)}, "unknown strategy"),
        ({"acquisition": pb.Acquisition(balance=42)}, "unknown balance"),
        ({"start": 40, "stop": 10}, "outside the pool"),
        ({"stop": 51}, "outside the pool"),
    ],
)
def test_score_pool_refuses_values_out_of_range(server, fields, message):
    srv, stub = server
    with pytest.raises(grpc.RpcError) as err:
        _score_pool(stub, **fields)
    assert err.value.code() == INVALID, err.value.details()
    assert message in err.value.details()
    assert len(_score_pool(stub)[-1].result.top) == 5  # still serving


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_batch(ids=["a\x00", "b"]), "NUL"),
        (_batch(ids=["", "b"]), "non-empty"),
        (_batch(roi_value=255), "0 (outside) or 1"),
        (_batch(image_bytes=b"\x00" * (2 * 32 * 32 + 1)), "image bytes"),
        (_batch(n=MAX_STREAM_BATCH + 1), f"at most {MAX_STREAM_BATCH}"),
    ],
    ids=["nul-id", "empty-id", "roi-255", "short-images", "huge-batch"],
)
def test_score_stream_refuses_malformed_batches(server, request_, message):
    srv, stub = server
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ScoreStream(iter([request_]), timeout=30))
    assert err.value.code() == INVALID, err.value.details()
    assert message in err.value.details()
    assert len(list(stub.ScoreStream(iter([_batch()]), timeout=30))[0].samples) == 2  # still serving


def test_a_cancelled_stream_is_counted_as_cancelled(server):
    srv, stub = server
    count = srv.metrics.requests.labels

    def value(code):
        return count("ScoreStream", code)._value.get()

    before = {c: value(c) for c in ("CANCELLED", "INTERNAL", "OK")}
    hold = threading.Event()

    def requests():
        yield _batch()
        hold.wait(30)  # the client keeps the stream open, then cancels it

    call = stub.ScoreStream(requests(), timeout=60)
    assert len(next(call).samples) == 2
    call.cancel()
    hold.set()
    deadline = time.monotonic() + 30
    while value("CANCELLED") == before["CANCELLED"]:
        assert time.monotonic() < deadline, "the server never counted the cancellation"
        time.sleep(0.01)
    assert value("INTERNAL") == before["INTERNAL"] and value("OK") == before["OK"]

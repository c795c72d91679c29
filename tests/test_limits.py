"""Requests outside what the service accepts get typed errors and the server stays up: top-k
over the pool, λ outside [0, 1] or NaN, unknown enum values, malformed ScoreStream batches (a
pixel dtype that is missing or not the model's, float NaN bytes of the right length included;
NaN/Inf pixels for a float model, naming the sample); a stream the client cancels is counted as
CANCELLED, never as an internal error."""

import hashlib
import math
import re
import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import torch

from xgal.client import ScorerClient, ScorerError
from xgal.core.acquisition import AcquisitionConfig
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.scorer.stream import MAX_STREAM_BATCH, score_message
from xgal.train.nets import build_model
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


def _batch(n=2, ids=None, roi_value=1, image_bytes=None, dtype="uint8", roi_shape=(32, 32)):
    return pb.ScoreStreamRequest(
        model=pb.ModelRef(name="m"),
        ids=ids if ids is not None else [f"s{i}" for i in range(n)],
        images=image_bytes if image_bytes is not None else np.zeros((n, 1, 32, 32), np.uint8).tobytes(),
        rois=np.full((n, *roi_shape), roi_value, np.uint8).tobytes(),
        pixel_dtype=dtype,
    )


# Float NaNs whose byte count is exactly what 2 uint8 images of 1x32x32 take: only the dtype
# tells them from pixels.
NAN_BYTES = np.full((2, 1, 16, 16), np.nan, np.float32).tobytes()
TAKES = "the model takes uint8 pixels"


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
        (_batch(roi_value=255), "sample 's0': its ROI holds values other than 0 and 1"),
        (_batch(image_bytes=b"\x00" * (2 * 32 * 32 + 1)), "image bytes"),
        (_batch(roi_shape=(32, 16)), "2048 ROI bytes; got 2048 and 1024"),
        (_batch(n=MAX_STREAM_BATCH + 1), f"at most {MAX_STREAM_BATCH}"),
        (_batch(dtype=""), f"no pixel_dtype for its images; {TAKES}"),
        (_batch(image_bytes=NAN_BYTES, dtype=""), f"no pixel_dtype for its images; {TAKES}"),
        (_batch(image_bytes=NAN_BYTES, dtype="float32"), f"images are 'float32'; {TAKES}"),
        (
            _batch(image_bytes=np.full((2, 1, 32, 16), np.nan, np.float16).tobytes(), dtype="float16"),
            f"images are 'float16'; {TAKES}",
        ),
        (_batch(image_bytes=np.zeros((2, 1, 16, 32), "<u2").tobytes(), dtype="uint16"), TAKES),
        (_batch(dtype=">u1,>u1"), TAKES),
        (_batch(dtype="3T,"), TAKES),  # np.dtype("3T,").newbyteorder("<") kills the process
        (_batch(dtype="uint8" * 2000), TAKES),
    ],
    ids=[
        "nul-id",
        "empty-id",
        "roi-255",
        "short-images",
        "roi-wrong-shape",
        "huge-batch",
        "no-dtype",
        "nan-bytes-no-dtype",
        "nan-bytes-float32",
        "nan-bytes-float16",
        "uint16-right-length",
        "structured-dtype",
        "segfaulting-dtype",
        "long-dtype",
    ],
)
def test_score_stream_refuses_malformed_batches(server, request_, message):
    srv, stub = server
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ScoreStream(iter([request_]), timeout=30))
    assert err.value.code() == INVALID, err.value.details()
    assert message in err.value.details()
    assert len(list(stub.ScoreStream(iter([_batch()]), timeout=30))[0].samples) == 2  # still serving


@pytest.mark.parametrize("dtype", ["uint8", "<u1", "|u1"])
def test_score_stream_checks_the_dtype_of_every_message(server, dtype):
    srv, stub = server
    answers = []
    with pytest.raises(grpc.RpcError) as err:
        # Drained, not left open: a stream still running would count in the next test.
        for answer in stub.ScoreStream(iter([_batch(dtype=dtype), _batch(dtype=""), _batch()]), timeout=30):
            answers.append(answer)
    assert [len(a.samples) for a in answers] == [2]  # each name of uint8 is the model's dtype
    assert err.value.code() == INVALID and TAKES in err.value.details()


def test_the_client_says_which_dtype_it_sends(server):
    srv, _ = server
    rois = np.ones((3, 32, 32), np.uint8)
    with ScorerClient(srv.address) as client:
        scores, _ = client.score_arrays(np.zeros((3, 1, 32, 32), np.uint8), rois, model="m")
        assert len(scores) == 3
        with pytest.raises(ScorerError, match=f"images are 'float32'; {TAKES}") as err:
            client.score_arrays(np.full((3, 1, 32, 32), np.nan, np.float32), rois, model="m")
        assert err.value.code == INVALID


class _FloatModel:
    """What `score_message` sees of an engine, for a model that takes float32 pixels (no graph
    of that kind can be exported yet: the check must be in place before one can)."""

    info = SimpleNamespace(input_shape=(1, 4, 4), pixel_dtype="float32")

    def __init__(self):
        self.ran = 0

    def run(self, images, rois, target=None, *, want_cam=False, want_embedding=False, want_views=False):
        self.ran += 1
        raise AssertionError("reached the engine")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"b": np.nan}, "sample 'b': its float32 pixels hold NaN"),
        ({"c": -np.inf, "d": np.nan}, "sample 'c': its float32 pixels hold Inf (1 more"),
    ],
    ids=["nan", "inf-then-nan"],
)
def test_non_finite_float_pixels_are_refused_naming_the_sample(bad, message):
    ids = ["a", "b", "c", "d"]
    images = np.ones((4, 1, 4, 4), np.float32)
    for sample, value in bad.items():
        images[ids.index(sample), 0, 2, 3] = value
    request = pb.ScoreStreamRequest(
        ids=ids, images=images.tobytes(), rois=np.ones((4, 4, 4), np.uint8).tobytes(), pixel_dtype="float32"
    )
    engine = _FloatModel()
    with pytest.raises(ValueError, match=re.escape(message)):
        score_message(engine, request, AcquisitionConfig())
    assert engine.ran == 0
    request.images = np.ones((4, 1, 4, 4), np.float32).tobytes()  # finite: past the checks
    with pytest.raises(AssertionError, match="reached the engine"):
        score_message(engine, request, AcquisitionConfig())


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


def _upload(header, *chunks):
    yield pb.PublishModelRequest(header=header)
    for chunk in chunks:
        yield pb.PublishModelRequest(chunk=chunk)


@pytest.mark.parametrize(
    ("size", "chunks", "message"),
    [
        (1000, [b"x" * 400], "received 400 bytes, the header announced 1000"),  # truncated
        (10, [b"x" * 8, b"x" * 8], "more than the announced 10 bytes"),
        (1 << 40, [b"x"], "exceeds the limit"),  # declared size over the limit: refused up front
        (0, [], "not a loadable ONNX model"),
    ],
)
def test_uploads_that_do_not_add_up_are_refused_and_the_served_version_stays(server, size, chunks, message):
    srv, stub = server

    def served():
        models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        return [(m.name, m.version, m.sha256) for m in models]

    before = served()
    sha = hashlib.sha256(b"".join(chunks)).hexdigest()  # right for what is sent: size decides
    header = pb.PublishHeader(name="m", sha256=sha, size_bytes=size, load=True)
    with pytest.raises(grpc.RpcError) as err:
        stub.PublishModel(_upload(header, *chunks), timeout=30)
    assert err.value.code() == INVALID, err.value.details()
    assert message in err.value.details()
    assert served() == before
    assert len(list(stub.ScoreStream(iter([_batch()]), timeout=30))[0].samples) == 2  # still serving


def test_an_onnx_graph_without_the_scoring_signature_is_refused_over_the_wire(server):
    import onnx
    from onnx import TensorProto, helper

    srv, stub = server
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    data = graph.SerializeToString()
    assert onnx.load_from_string(data).graph.node  # a valid ONNX model, only not a scoring graph
    header = pb.PublishHeader(name="m", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    before = [m.sha256 for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
    with pytest.raises(grpc.RpcError) as err:
        stub.PublishModel(_upload(header, data), timeout=30)
    assert err.value.code() == INVALID and "not an xgal scoring graph" in err.value.details()
    assert [m.sha256 for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models] == before

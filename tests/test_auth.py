"""Bearer-token authentication on a real server: every RPC shape refuses a missing, wrong or
doubled token; an empty token file never turns authentication off."""

import hashlib

import grpc
import numpy as np
import pytest
import torch

from xgal.core.errors import InvalidArgument
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    synth_pool(root / "data" / "pool", 40, seed=0, image_size=32)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    srv = RunningServer(ServerConfig(data_root=root / "data", model_repo=root / "repo", port=0, token=TOKEN))
    yield srv, root / "m.onnx"
    srv.stop(grace=0)


def _calls(stub, onnx):
    """One call of each RPC shape, each made to run to its end."""
    data = onnx.read_bytes()
    header = pb.PublishHeader(name="m", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    stream = pb.ScoreStreamRequest(
        model=pb.ModelRef(name="m"),
        pixel_dtype="uint8",
        ids=["a"],
        images=np.zeros((1, 1, 32, 32), np.uint8).tobytes(),
        rois=np.ones((1, 32, 32), np.uint8).tobytes(),
    )
    return {
        "unary": lambda md: stub.ListModels(pb.ListModelsRequest(), metadata=md, timeout=10),
        "client streaming": lambda md: stub.PublishModel(
            iter([pb.PublishModelRequest(header=header), pb.PublishModelRequest(chunk=data)]),
            metadata=md,
            timeout=30,
        ),
        "server streaming": lambda md: list(
            stub.ScorePool(
                pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="m"), top_k=3),
                metadata=md,
                timeout=30,
            )
        ),
        "bidirectional": lambda md: list(stub.ScoreStream(iter([stream]), metadata=md, timeout=30)),
    }


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", f"Bearer {TOKEN}x"),),
        (("authorization", TOKEN),),
        (("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")),
    ],
    ids=["none", "wrong", "longer", "no-scheme", "wrong-then-right", "right-then-wrong"],
)
def test_every_rpc_shape_refuses_a_bad_token(server, metadata):
    srv, onnx = server
    with grpc.insecure_channel(srv.address) as channel:
        for shape, call in _calls(scorer_pb2_grpc.ScorerStub(channel), onnx).items():
            with pytest.raises(grpc.RpcError) as err:
                call(metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, shape
            assert TOKEN not in (err.value.details() or "")


def test_every_rpc_shape_accepts_the_token(server):
    srv, onnx = server
    good = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(srv.address) as channel:
        calls = _calls(scorer_pb2_grpc.ScorerStub(channel), onnx)
        calls["client streaming"](good)  # publish first: the others need the model
        for shape, call in calls.items():
            assert call(good) is not None, shape


@pytest.mark.parametrize("token", ["", "   \n"])
def test_an_empty_token_is_refused_at_start(tmp_path, token):
    (tmp_path / "data").mkdir()
    with pytest.raises(InvalidArgument, match="token is empty"):
        RunningServer(
            ServerConfig(data_root=tmp_path / "data", model_repo=tmp_path / "repo", port=0, token=token)
        )

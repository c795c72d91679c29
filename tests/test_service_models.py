"""The gRPC service against real servers on 127.0.0.1: model versions (publish, list, load,
unload, and health as they change; a restarted replica's repository; a newer version published
while a request is in flight; publish errors), what ModelInfo says of a graph (precision, the
file's and the graph's SHA-256, also in `xgal client models`) and what a replica's models run on
(providers, ONNX Runtime session threads and spinning)."""

import hashlib

import grpc
import onnx
import pytest
from grpc_health.v1 import health_pb2
from helpers import health_status, service_server, service_world
from typer.testing import CliRunner

from xgal.cli import app
from xgal.client import ScorerClient, ScorerError
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import graph_sha256
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision import half_scoring_graph
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.v1 import scorer_pb2 as pb


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool of 300 and two scoring graphs (helpers.service_world), once for this module."""
    return service_world(tmp_path_factory)


@pytest.fixture
def server(world, tmp_path):
    yield from service_server(world, tmp_path)


def test_publish_list_load_unload_and_health(world, server):
    _, _, m1, m2 = world
    assert health_status(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with ScorerClient(server.address) as client:
        info = client.publish_model(m1, "demo")
        assert (info.name, info.version, info.loaded) == ("demo", 1, True)
        assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert client.publish_model(m1, "demo").version == 1  # same bytes: no new version
        assert client.publish_model(m2, "demo").version == 2
        cpu = ["CPUExecutionProvider"]
        listed = [(m.version, m.loaded, list(m.providers)) for m in client.list_models("demo")]
        assert listed == [(1, True, cpu), (2, True, cpu)]
        client.unload_model("demo", 1)
        listed = [(m.version, m.loaded, list(m.providers)) for m in client.list_models("demo")]
        assert listed == [(1, False, []), (2, True, cpu)]
        client.unload_model("demo", 2)
        assert health_status(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.load_model("demo", 1).loaded
        assert (server.config.model_repo / "demo" / "2" / "model.onnx").is_file()


def test_restarted_replica_serves_its_repository(world, tmp_path):
    root, _, m1, _ = world
    cfg = ServerConfig(data_root=root / "data", model_repo=tmp_path / "repo", port=0)
    first = RunningServer(cfg)
    with ScorerClient(first.address) as client:
        client.publish_model(m1, "demo")
    first.stop(grace=1)
    again = RunningServer(cfg)
    try:
        assert health_status(again.address) == health_pb2.HealthCheckResponse.SERVING
        with ScorerClient(again.address) as client:
            assert client.list_models()[0].loaded
    finally:
        again.stop(grace=1)


def test_newer_version_does_not_disturb_a_request_in_flight(world, server):
    _, pool, m1, m2 = world
    want = score_pool(OnnxRuntimeEngine(m1), pool, AcquisitionConfig(), 10)
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        stub = client.targets[0].stub
        req = pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="demo"), top_k=10)
        stream = stub.ScorePool(req)
        first = next(stream)
        assert first.HasField("progress")
        assert client.publish_model(m2, "demo").version == 2
        result = [e for e in stream if e.HasField("result")][0].result
    assert result.model.version == 1
    assert [s.id for s in result.top] == want.top.ids.tolist()


def test_model_info_names_precision_and_both_hashes(world, server, tmp_path):
    """ModelInfo's `sha256` is the published file's; `graph_sha256` (the graph's xgal metadata)
    and `precision` say which network it is and how it computes, wherever ModelInfo travels."""
    _, _, m1, _ = world
    half = half_scoring_graph(m1, tmp_path / "half.onnx")
    want = {}
    for path, precision in ((m1, "fp32"), (half, "fp16")):
        file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        want[precision] = (precision, file_sha, graph_sha256(onnx.load(path)))
        assert want[precision][2] != file_sha
    assert want["fp32"][2] != want["fp16"][2]  # a conversion is another graph
    with ScorerClient(server.address) as client:
        published = [client.publish_model(p, name) for p, name in ((m1, "fp32"), (half, "fp16"))]
        listed = client.list_models()
        loaded = client.load_model("fp16")
        scored = client.score_pool("pool", model="fp16", top_k=3, progress=False).model
    for info in (*published, *listed, loaded, scored):
        assert (info.precision, info.sha256, info.graph_sha256) == want[info.name], info.name
    res = CliRunner().invoke(app, ["client", "models", "--target", server.address], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name, (precision, file_sha, graph_sha) in want.items():
        line = f"{name} v1  {precision}  file {file_sha[:12]}  graph {graph_sha[:12]}  loaded"
        line = f"{server.address}  {line}"
        assert line in res.output, res.output


def test_publish_errors(world, server, tmp_path):
    _, _, m1, _ = world
    with ScorerClient(server.address) as client:
        stub = client.targets[0].stub
        data = m1.read_bytes()
        bad_hash = [
            pb.PublishModelRequest(header=pb.PublishHeader(name="x", sha256="0" * 64, size_bytes=len(data))),
            pb.PublishModelRequest(chunk=data),
        ]
        with pytest.raises(grpc.RpcError) as info:
            stub.PublishModel(iter(bad_hash))
        assert (
            info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "SHA-256 mismatch" in info.value.details()
        )
        with pytest.raises(ScorerError, match="INVALID_ARGUMENT.*not a loadable ONNX model"):
            client.publish_model(b"not onnx", "junk")
        with pytest.raises(ScorerError, match="INVALID_ARGUMENT: model name"):
            client.publish_model(m1, "../evil")


def test_server_rejects_unknown_providers(world, tmp_path):
    config = ServerConfig(
        data_root=world[0] / "data",
        model_repo=tmp_path / "repo",
        port=0,
        providers=("NoSuchExecutionProvider",),
    )
    with pytest.raises(ValueError, match="not installed"):
        RunningServer(config)


def _spins(engine):
    options = engine.session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except Exception:  # no entry: ONNX Runtime's default, which spins
        return True


@pytest.mark.parametrize("spinning", [False, True])
def test_replica_sessions_spin_and_thread_as_asked(world, tmp_path, spinning):
    """A replica's sessions do not spin by default: several models scored at once would
    hold the cores for one another (`xgal serve --spin` turns it back on)."""
    # Nothing said: the defaults. Said: spinning and one thread per model (`--threads 1`).
    kwargs = {"spinning": True, "intra_op_threads": 1} if spinning else {}
    srv = RunningServer(
        ServerConfig(data_root=world[0] / "data", model_repo=tmp_path / "repo", port=0, **kwargs)
    )
    try:
        with ScorerClient(srv.address, timeout=30) as client:
            client.publish_model(world[2], "m1")
            client.publish_model(world[3], "m2")
            assert client.score_pool("pool", model="m1", top_k=3).scored == 300
        engines = [srv.repo.loaded(name)[1] for name in ("m1", "m2")]
        assert [_spins(e) for e in engines] == [spinning, spinning]
        threads = [e.session.get_session_options().intra_op_num_threads for e in engines]
        assert threads == ([1, 1] if spinning else [0, 0])
    finally:
        srv.stop(grace=1)

"""A replica's models over their life: load, score, unload (nothing left running), and publish
checked the way the replica serves (its own engine factory, so its own providers)."""

import hashlib
import threading

import grpc
import numpy as np
import pytest
import torch

from xgal.client import ScorerClient
from xgal.core.contract import NotAScoringGraphError
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.repository import ModelRepository
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("life")
    synth_pool(root / "data" / "pool", 96, seed=0, image_size=32, shard_size=64)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    return root, export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))


@pytest.fixture
def server(world, tmp_path):
    srv = RunningServer(ServerConfig(data_root=world[0] / "data", model_repo=tmp_path / "repo", port=0))
    yield srv
    srv.stop(grace=2)


def _batcher_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "xgal-batcher" and t.is_alive())


def test_unload_stops_the_batcher_every_cycle(world, server):
    before = _batcher_threads()
    with ScorerClient(server.address) as client:
        client.publish_model(world[1], "m", load=False)
        for _ in range(3):
            client.load_model("m")
            assert client.score_pool("pool", model="m", top_k=5, progress=False).scored == 96
            assert _batcher_threads() == before + 1
            client.unload_model("m")
            # The session and its batcher thread go with the unload, not at process exit.
            assert _batcher_threads() == before
            assert server.service._batchers == {}


def test_unload_waits_for_the_request_using_the_model(world, server):
    with ScorerClient(server.address) as client:
        client.publish_model(world[1], "m")
        _, engine = server.repo.load("m")
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (4, 1, 32, 32), dtype=np.uint8)
        rois = np.ones((4, 32, 32), dtype=np.uint8)
        with server.service._batched(engine) as in_flight:  # a request holding the model
            client.unload_model("m")
            # Still usable by the request that holds it: unloading never breaks work in flight.
            np.testing.assert_allclose(in_flight.run(images, rois).probs, engine.run(images, rois).probs)
            assert _batcher_threads() >= 1
        assert server.service._batchers == {}


def test_publish_is_checked_with_the_replicas_own_engine(world, tmp_path):
    opened = []

    def replica_engine(model):
        # As a replica pinned to a provider that cannot run this graph would answer.
        opened.append(type(model).__name__)
        raise NotAScoringGraphError("this replica's execution provider cannot run the graph")

    repo = ModelRepository(tmp_path / "repo", engine_factory=replica_engine)
    data = world[1].read_bytes()
    with pytest.raises(NotAScoringGraphError, match="execution provider cannot run"):
        repo.publish("m", data, hashlib.sha256(data).hexdigest())
    assert opened == ["bytes"] and repo.names() == []
    ok = ModelRepository(tmp_path / "repo2", engine_factory=lambda m: OnnxRuntimeEngine(m))
    assert ok.publish("m", data, hashlib.sha256(data).hexdigest()).version == 1


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "m\n", "x" * 65, "", "../../etc"])
def test_model_names_that_are_not_one_folder_are_refused(world, tmp_path, name):
    repo_dir = tmp_path / "sub" / "repo"
    repo = ModelRepository(repo_dir)
    data = world[1].read_bytes()
    with pytest.raises(ValueError, match="model name"):
        repo.publish(name, data, hashlib.sha256(data).hexdigest())
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["sub/repo/.publish.lock"] or written == []  # nothing stored, inside or out
    assert repo.versions(name) == []


def test_a_second_replica_on_a_port_in_use_is_refused(world, tmp_path):
    from xgal.scorer.server import AddressInUseError

    first = RunningServer(ServerConfig(data_root=world[0] / "data", model_repo=tmp_path / "a", port=0))
    try:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(AddressInUseError, match="could not bind"):
            RunningServer(ServerConfig(data_root=world[0] / "data", model_repo=tmp_path / "b", port=port))
    finally:
        first.stop(grace=0)


def _graph_with(world, tmp_path, name, edit_model=None, edit_proto=None):
    import onnx

    torch.manual_seed(1)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    if edit_model is not None:
        edit_model(model)
    path = export_scoring_graph(
        model, "features.stage4.0", tmp_path / f"{name}.onnx", image_shape=(1, 32, 32)
    )
    if edit_proto is not None:
        proto = onnx.load(path)
        edit_proto(proto)
        onnx.save(proto, path)
    return path.read_bytes()


def _set_meta(key, value):
    def edit(proto):
        for p in proto.metadata_props:
            if p.key == key:
                p.value = value

    return edit


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan-outputs", "not finite"),
        ("five-classes-declared", "declares 5 classes"),
    ],
)
def test_publish_refuses_graphs_that_do_not_keep_their_contract(world, tmp_path, case, message):
    if case == "nan-outputs":
        data = _graph_with(
            world, tmp_path, case, edit_model=lambda m: m.head.fc.bias.data.fill_(float("nan"))
        )
    else:
        names = '["a", "b", "c", "d", "e"]'
        data = _graph_with(world, tmp_path, case, edit_proto=_set_meta("xgal.class_names", names))
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(NotAScoringGraphError, match=message):
        repo.publish("m", data, hashlib.sha256(data).hexdigest())
    assert repo.names() == []


def test_a_corrupt_stored_version_does_not_stop_the_replica(world, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    repo_dir = tmp_path / "repo"
    repo = ModelRepository(repo_dir)
    good = world[1].read_bytes()
    other = _graph_with(world, tmp_path, "other")
    for name, data in (("m", good), ("m", other), ("solo", good)):
        repo.publish(name, data, hashlib.sha256(data).hexdigest())
    (repo_dir / "m" / "2" / "model.onnx").write_bytes(other[: len(other) // 2])  # cut short on disk
    (repo_dir / "solo" / "1" / "model.onnx").write_bytes(b"not onnx")
    srv = RunningServer(ServerConfig(data_root=world[0] / "data", model_repo=repo_dir, port=0))
    try:
        assert srv.repo.loaded_keys() == [("m", 1)]  # the older version of m; solo has none left
        assert sorted(name for name, _ in srv.load_problems) == ["m", "solo"]
        with grpc.insecure_channel(srv.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            status = {
                s: stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=10).status
                for s in ("xgal.v1.Scorer/m", "xgal.v1.Scorer/solo")
            }
        assert status == {
            "xgal.v1.Scorer/m": health_pb2.HealthCheckResponse.SERVING,
            "xgal.v1.Scorer/solo": health_pb2.HealthCheckResponse.NOT_SERVING,
        }
        with ScorerClient(srv.address) as client:
            assert client.score_pool("pool", model="m", version=1, top_k=3, progress=False).scored == 96
    finally:
        srv.stop(grace=0)


def test_a_closed_batcher_refuses_work_instead_of_leaving_it_waiting(world):
    from xgal.scorer.batcher import DynamicBatcher, QueueFullError

    engine = OnnxRuntimeEngine(world[1])
    batcher = DynamicBatcher(engine, max_batch=8)
    image, roi = np.zeros((2, 1, 32, 32), np.uint8), np.ones((2, 32, 32), np.uint8)
    assert batcher.submit(image, roi).result(timeout=30).probs.shape == (2, 3)
    batcher.close()
    # Before, the item was queued behind the end marker and its future never resolved.
    with pytest.raises(QueueFullError, match="shutting down"):
        batcher.submit(image, roi).result(timeout=5)

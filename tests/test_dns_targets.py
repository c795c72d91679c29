"""Replicas reached through one name, as a Kubernetes headless Service gives them: the client,
given `dns:///name:port`, uses every address the name resolves to, and resolves it again at
each call and when it gives up on a replica. The name is answered by a resolver the test
controls (Python's getaddrinfo for that one name), with replicas on loopback addresses
127.0.0.x sharing one port."""

import socket
import time

import grpc
import pytest
import torch

from xgal.client import RetryPolicy, ScorerClient, ScorerError
from xgal.client.resolve import resolve, split
from xgal.core.acquisition import AcquisitionConfig
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model

NAME = "scorers.xgal.test"


class Successive(list):
    """Answers given one per lookup."""


class HoldUntil:
    """A replica's stub whose ScorePool calls wait for `ready()` (10 s at most) before going out."""

    def __init__(self, stub, ready):
        self._stub, self._ready = stub, ready

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def ScorePool(self, request, **kwargs):  # noqa: N802
        deadline = time.monotonic() + 10
        while not self._ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._stub.ScorePool(request, **kwargs)


@pytest.fixture
def names(monkeypatch):
    """{host: [ip, ...]}: what getaddrinfo answers for the hosts put in it; a list of such lists
    (wrapped in `Successive`) is answered in turn, the last one for good."""
    table: dict[str, object] = {}
    real = socket.getaddrinfo

    def lookup(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        ips = table[host]
        if isinstance(ips, Successive):
            ips = ips.pop(0) if len(ips) > 1 else ips[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return table


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dns")
    pool = synth_pool(root / "data" / "pool", 600, seed=0, image_size=32, shard_size=200)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    return root, pool, onnx


def test_resolve_keeps_plain_targets_and_expands_names(names):
    names[NAME] = ["127.0.0.2", "127.0.0.3", "127.0.0.2"]
    assert resolve(["127.0.0.1:9", f"dns:///{NAME}:50051"]) == [
        "127.0.0.1:9",
        "127.0.0.2:50051",
        "127.0.0.3:50051",
    ]
    v6 = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 7, 0, 0))]
    assert resolve([f"dns:///{NAME}:7"], lookup=lambda *a, **k: v6) == ["[::1]:7"]
    names["empty.xgal.test"] = []
    with pytest.raises(ScorerError, match="resolves to no address"):
        resolve(["dns:///empty.xgal.test:1"])
    for bad in ("dns:///nohostport", "dns:///:50051", "dns:///a:b", "dns:///a/b:1"):
        with pytest.raises(ValueError, match="dns:///host:port"):
            split(bad)


def _server(root, host, port, i):
    return RunningServer(
        ServerConfig(data_root=root / "data", model_repo=root / f"repo-{i}", host=host, port=port)
    )


def _images(server):
    return server.metrics.registry.get_sample_value("xgal_images_scored_total") or 0


def test_one_name_spreads_over_every_replica_and_follows_changes(world, names):
    root, pool, onnx = world
    first = _server(root, "127.0.0.1", 0, 0)
    port = first.port
    servers = [first] + [_server(root, f"127.0.0.{i}", port, i) for i in (2, 3)]
    names[NAME] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    want = score_pool(OnnxRuntimeEngine(onnx), pool, AcquisitionConfig(), 40)
    fourth = None
    try:
        with ScorerClient(f"dns:///{NAME}:{port}", retry=RetryPolicy(attempts=3, backoff_s=0.05)) as client:
            client.publish_model(onnx, "m")  # to every address behind the name
            got = client.score_pool("pool", model="m", top_k=40, progress=False)
            assert list(got.top.ids) == list(want.top.ids)
            assert all(_images(s) > 0 for s in servers), [_images(s) for s in servers]

            # A replica goes away and another appears under the name: the next call uses the
            # new one (it gets the model first) and never the one gone.
            servers[1].stop(0)
            fourth = _server(root, "127.0.0.4", port, 4)
            names[NAME] = ["127.0.0.1", "127.0.0.3", "127.0.0.4"]
            client.publish_model(onnx, "m")
            got = client.score_pool("pool", model="m", top_k=40, progress=False)
            assert list(got.top.ids) == list(want.top.ids)
            assert _images(fourth) > 0
            assert [t.address for t in client.targets] == [f"127.0.0.{i}:{port}" for i in (1, 3, 4)]

            # Mid-run: the name still lists a replica that is down when the run starts, and a
            # replacement only when the run, having given up on the dead one, asks again.
            servers[2].stop(0)
            servers[1] = _server(root, "127.0.0.5", port, 5)
            with ScorerClient(f"127.0.0.5:{port}") as direct:
                direct.publish_model(onnx, "m")
            # Lookups: the call's start (3 still listed), then the run giving up on 3.
            names[NAME] = Successive([["127.0.0.1", "127.0.0.3"], ["127.0.0.1", "127.0.0.5"]])
            # Replica 1 holds its shards until the replacement has scored (10 s at most), so the
            # run cannot end on 1 alone before it has given up on 3.
            one = client.targets[0]
            one.stub = HoldUntil(one.stub, lambda: _images(servers[1]) > 0)
            got = client.score_pool("pool", model="m", top_k=40, progress=False)
            assert list(got.top.ids) == list(want.top.ids)
            assert _images(servers[1]) > 0  # the replacement scored shards of that run
            assert [t.address for t in client.targets] == [f"127.0.0.{i}:{port}" for i in (1, 5)]
    finally:
        for s in [*servers, fourth]:
            if s is not None:
                s.stop(0)


def test_a_name_with_no_replica_left_is_unavailable(world, names):
    names[NAME] = []
    with pytest.raises(ScorerError, match="resolves to no address") as err:
        ScorerClient(f"dns:///{NAME}:1")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE

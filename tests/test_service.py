"""The gRPC service against real servers on 127.0.0.1: every RPC, errors, health,
reflection, metrics, auth, model versions, dynamic batching."""

import shutil
import subprocess
import threading
import urllib.request

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import wait_for

from xgal.client import ScorerClient, ScorerError
from xgal.core.acquisition import AcquisitionConfig
from xgal.pool.synth import synth_pool
from xgal.scorer.batcher import DynamicBatcher, QueueFullError
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model
from xgal.v1 import scorer_pb2 as pb


def _export(path, seed):
    torch.manual_seed(seed)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    return export_scoring_graph(model, "features.stage4.0", path, image_shape=(1, 32, 32))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    (root / "data").mkdir()
    pool = synth_pool(root / "data" / "pool", 300, seed=0, image_size=32, shard_size=128)
    return root, pool, _export(root / "m1.onnx", 0), _export(root / "m2.onnx", 1)


@pytest.fixture
def server(world, tmp_path):
    root = world[0]
    srv = RunningServer(
        ServerConfig(
            data_root=root / "data",
            model_repo=tmp_path / "repo",
            port=0,
            metrics_port=0,
            max_batch=16,
            max_delay_ms=2,
        )
    )
    yield srv
    srv.stop(grace=2)


def _health(address, service="xgal.v1.Scorer"):
    with grpc.insecure_channel(address) as ch:
        return (
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


def test_publish_list_load_unload_and_health(world, server):
    _, _, m1, m2 = world
    assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with ScorerClient(server.address) as client:
        info = client.publish_model(m1, "demo")
        assert (info.name, info.version, info.loaded) == ("demo", 1, True)
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert client.publish_model(m1, "demo").version == 1  # same bytes: no new version
        assert client.publish_model(m2, "demo").version == 2
        assert [(m.version, m.loaded) for m in client.list_models("demo")] == [(1, True), (2, True)]
        client.unload_model("demo", 1)
        client.unload_model("demo", 2)
        assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
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
        assert _health(again.address) == health_pb2.HealthCheckResponse.SERVING
        with ScorerClient(again.address) as client:
            assert client.list_models()[0].loaded
    finally:
        again.stop(grace=1)


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


def test_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name for s in next(responses).list_services_response.service]
    assert "xgal.v1.Scorer" in names and "grpc.health.v1.Health" in names


def test_metrics_count_images_and_requests(world, server):
    _, _, m1, _ = world
    with ScorerClient(server.address) as client:
        client.publish_model(m1, "demo")
        client.score_pool("pool", model="demo", top_k=3)
        with pytest.raises(ScorerError):
            client.score_pool("missing", model="demo", top_k=3)
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    scored = [ln for ln in text.splitlines() if ln.startswith("xgal_images_scored_total")]
    assert float(scored[0].split()[-1]) >= 300
    assert 'xgal_requests_total{code="OK",method="ScorePool"}' in text
    assert 'xgal_requests_total{code="NOT_FOUND",method="DescribePool"}' in text
    assert 'xgal_model_loaded{name="demo",version="1"} 1.0' in text
    assert "xgal_batch_size_bucket" in text and "xgal_queue_seconds_bucket" in text


def test_bearer_token(world, tmp_path):
    root, _, m1, _ = world
    srv = RunningServer(
        ServerConfig(data_root=root / "data", model_repo=tmp_path / "repo", port=0, token="s3cret")
    )
    try:
        with ScorerClient(srv.address) as anon, pytest.raises(ScorerError, match="UNAUTHENTICATED"):
            anon.publish_model(m1, "demo")
        with (
            ScorerClient(srv.address, token="wrong") as bad,
            pytest.raises(ScorerError, match="UNAUTHENTICATED"),
        ):
            bad.list_models()
        with ScorerClient(srv.address, token="s3cret") as good:
            good.publish_model(m1, "demo")
            assert good.score_pool("pool", model="demo", top_k=2).scored == 300
        assert _health(srv.address) == health_pb2.HealthCheckResponse.SERVING  # probes need no token
    finally:
        srv.stop(grace=1)


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


def _score_pool_ended(server):
    """ScorePool calls the server has counted as ended, by status code."""
    return {
        s.labels["code"]: s.value
        for metric in server.metrics.registry.collect()
        for s in metric.samples
        if s.name == "xgal_requests_total" and s.labels["method"] == "ScorePool"
    }


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
            lambda: _score_pool_ended(server) or images() >= pool.count,
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
        assert _score_pool_ended(server) == {want.name: 1.0}
        # The next request is served in full.
        assert client.score_pool("pool", model="demo", top_k=3, progress=False).scored == pool.count
    assert images() == stopped_at + pool.count


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate"
)
def test_tls(world, tmp_path):
    root, _, m1, _ = world
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    srv = RunningServer(
        ServerConfig(
            data_root=root / "data",
            model_repo=tmp_path / "repo",
            port=0,
            tls_cert=tmp_path / "cert.pem",
            tls_key=tmp_path / "key.pem",
        )
    )
    try:
        with ScorerClient(srv.address, tls=tmp_path / "cert.pem") as client:
            client.publish_model(m1, "demo")
            assert client.score_pool("pool", model="demo", top_k=2).scored == 300
        with ScorerClient(srv.address, timeout=5) as plain, pytest.raises(ScorerError, match="UNAVAILABLE"):
            plain.list_models()
    finally:
        srv.stop(grace=1)


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

"""The gRPC service against real servers on 127.0.0.1: how it is reached and watched
(reflection, metrics, bearer-token auth, TLS)."""

import shutil
import subprocess
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import health_status, service_server, service_world

from xgal.client import ScorerClient, ScorerError
from xgal.scorer.server import RunningServer, ServerConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool of 300 and two scoring graphs (helpers.service_world), once for this module."""
    return service_world(tmp_path_factory)


@pytest.fixture
def server(world, tmp_path):
    yield from service_server(world, tmp_path)


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
    assert 'xgal_model_loaded{name="demo",provider="CPUExecutionProvider",version="1"} 1.0' in text
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
        assert health_status(srv.address) == health_pb2.HealthCheckResponse.SERVING  # probes need no token
    finally:
        srv.stop(grace=1)


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

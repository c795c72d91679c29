"""TLS with a test CA, on real servers on 127.0.0.1: a client that trusts only the CA publishes
and scores (ScorePool and ScoreStream); a client that trusts another CA, a certificate issued
for another name, and a plain-text client are all refused at the handshake; with a bearer token
as well, the token is checked inside TLS and never shows in the server's log or in errors."""

import datetime
import ipaddress
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import small_scoring_graphs

from xgal.client import RetryPolicy, ScorerClient, ScorerError
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig

TOKEN = "tls-test-token-7f3a9c"
# A refused handshake is UNAVAILABLE, which the client would try again: once is enough here.
ONCE = RetryPolicy(attempts=1)
POOL = 48


class CertAuthority:
    """A certificate authority made for the test: its key and self-signed certificate."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            _builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def pem(self, folder: Path) -> Path:
        path = folder / f"{self.cert.subject.rfc4514_string().replace('=', '-')}.pem"
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, folder: Path, dns: list[str], ips: list[str]) -> tuple[Path, Path]:
        """A server certificate signed by this CA for these names; returns (cert, key) files."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0])]),
                self.cert.subject,
                key.public_key(),
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = folder / f"server-{(dns or ips)[0]}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    synth_pool(root / "data" / "pool", POOL, seed=0, image_size=32)
    pki = root / "pki"
    pki.mkdir()
    ca, other = CertAuthority("xgal test CA"), CertAuthority("another CA")
    onnx, _ = small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")
    return {
        "root": root,
        "onnx": onnx,
        "ca": ca.pem(pki),
        "other_ca": other.pem(pki),
        "cert": ca.issue(pki, ["localhost"], ["127.0.0.1"]),
        "wrong_name": ca.issue(pki, ["scorer.example"], []),
    }


def _server(world, cert_key, tmp_path, token=None):
    cert, key = cert_key
    return RunningServer(
        ServerConfig(
            data_root=world["root"] / "data",
            model_repo=tmp_path / "repo",
            port=0,
            tls_cert=cert,
            tls_key=key,
            token=token,
        )
    )


@pytest.fixture(scope="module")
def tls_server(world, tmp_path_factory):
    srv = _server(world, world["cert"], tmp_path_factory.mktemp("tls-repo"))
    yield srv
    srv.stop(grace=0)


def _requests(srv, method):
    """How many calls of `method` the server answered, any code (0: none got past TLS)."""
    return sum(
        s.value
        for metric in srv.metrics.requests.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("method") == method
    )


def test_publish_and_score_trusting_only_the_test_ca(world, tls_server):
    port = tls_server.address.rsplit(":", 1)[1]
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
    rois = np.ones((10, 32, 32), np.uint8)
    # The certificate names 127.0.0.1 and localhost: both addresses verify.
    for host in ("127.0.0.1", "localhost"):
        with ScorerClient(f"{host}:{port}", tls=world["ca"], timeout=60, retry=ONCE) as client:
            info = client.publish_model(world["onnx"], "demo")
            assert info.version == 1
            pooled = client.score_pool("pool", model="demo", top_k=5, progress=False)
            assert pooled.scored == POOL and pooled.model.sha256 == info.sha256
            streamed, _ = client.score_arrays(images, rois, model="demo", batch_size=4)
            assert streamed.ids.tolist() == [str(i) for i in range(10)]
            assert streamed.probs.shape == (10, 3)


def test_a_client_trusting_another_ca_is_refused(world, tls_server):
    before = _requests(tls_server, "ListModels")
    with ScorerClient(tls_server.address, tls=world["other_ca"], timeout=10, retry=ONCE) as client:
        with pytest.raises(ScorerError) as err:
            client.list_models()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "handshake" in str(err.value).lower()
    assert _requests(tls_server, "ListModels") == before  # never reached the service


def test_a_certificate_for_another_name_is_refused(world, tmp_path):
    """Signed by the trusted CA, but issued for scorer.example: the client checks the name."""
    srv = _server(world, world["wrong_name"], tmp_path)
    try:
        with ScorerClient(srv.address, tls=world["ca"], timeout=10, retry=ONCE) as client:
            with pytest.raises(ScorerError) as err:
                client.list_models()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "hostname" in str(err.value).lower()
        assert _requests(srv, "ListModels") == 0
    finally:
        srv.stop(grace=0)


def test_a_plain_text_client_is_refused(tls_server):
    before = _requests(tls_server, "ListModels")
    with ScorerClient(tls_server.address, timeout=10, retry=ONCE) as client:
        with pytest.raises(ScorerError) as err:
            client.list_models()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert _requests(tls_server, "ListModels") == before


def test_tls_and_a_bearer_token(world, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level: where a token could leak
    srv = _server(world, world["cert"], tmp_path, token=TOKEN)
    errors = []
    try:
        for token in (None, "wrong-token"):
            with ScorerClient(srv.address, tls=world["ca"], token=token, timeout=30, retry=ONCE) as client:
                with pytest.raises(ScorerError) as err:
                    client.publish_model(world["onnx"], "demo")
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
                errors.append(str(err.value))
        with ScorerClient(srv.address, tls=world["ca"], token=TOKEN, timeout=60, retry=ONCE) as client:
            assert client.publish_model(world["onnx"], "demo").version == 1
            assert client.score_pool("pool", model="demo", top_k=3, progress=False).scored == POOL
            # An error from behind the token check carries no token either.
            with pytest.raises(ScorerError) as err:
                client.score_pool("pool", model="no-such-model", top_k=3, progress=False)
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            errors.append(str(err.value))
    finally:
        srv.stop(grace=0)
    assert "published demo version 1" in caplog.text  # the server's log was captured...
    assert TOKEN not in caplog.text  # ...and holds no token
    assert not [e for e in errors if TOKEN in e or "wrong-token" in e], errors

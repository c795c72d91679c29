"""Faults met while publishing a model, on real replicas (processes of their own on 127.0.0.1, so
that they can be SIGKILLed): model uploads cut by SIGKILL (mid-stream, mid-write) or SIGTERM, a
publish that was stored but whose answer never reached the client, and the same bytes published
twice. Every kill is placed on an observed state (a chunk sent, a file on disk), never on a
sleep, and every wait is bounded."""

import hashlib
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import Replica, bounded, faults_world, wait_for

from xgal.client import RetryPolicy, ScorerClient, ScorerError
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.v1 import scorer_pb2 as pb

# Few, short tries: a dead replica stays dead in these tests, so waiting longer shows nothing.
FAST = RetryPolicy(attempts=2, backoff_s=0.05, max_backoff_s=0.1)

# `xgal serve` with a fault planted first, chosen by XGAL_TEST_FAULT=<fault>:<arg>:
#   hold-rename:V  the publish of version V stops just before its temp folder is renamed into
#                  place, i.e. mid-write: the test kills the replica there
#   hold-answer:V  the publish of version V stops after it was stored, before it is answered
#   grace:S        SIGTERM drains for S seconds instead of 30
FAULTY = """
import os, threading
fault, arg = os.environ["XGAL_TEST_FAULT"].split(":")
if fault == "hold-rename":
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        name = os.path.basename(src)
        if name.startswith(f".{arg}.") and name.endswith(".tmp"):
            threading.Event().wait()  # never returns: the test kills the replica here
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
elif fault == "hold-answer":
    from xgal.scorer.repository import ModelRepository
    real_publish = ModelRepository.publish
    def publish(self, *args, **kwargs):
        stored = real_publish(self, *args, **kwargs)
        if stored.version == int(arg):
            threading.Event().wait()  # stored, never answered: the test kills the replica here
        return stored
    ModelRepository.publish = publish
elif fault == "grace":
    from xgal.scorer import server
    server.serve_forever.__defaults__ = (float(arg),)
else:
    raise SystemExit(f"unknown fault {fault}")
from xgal.cli import main
main()
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data root (a pool of FAULTS_POOL, one of 64) and two scoring graphs that differ in
    their bytes (helpers.faults_world), once for this module."""
    return faults_world(tmp_path_factory)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def in_background(fn: Callable[[], object], what: str) -> Callable[[float], object]:
    """Start fn() in a daemon thread; the returned function waits (at most its timeout) for
    fn's result, or raises fn's exception."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"background-{what}", daemon=True)
    thread.start()

    def result(timeout: float) -> object:
        thread.join(timeout)
        assert not thread.is_alive(), f"{what} did not return within {timeout:g} s"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]

    return result


# -- uploads killed -----------------------------------------------------------------------------


class CutUpload:
    """Stands in for a replica's stub inside a client: sends each PublishModel upload in
    `pieces` chunks, and runs `action` once the first half of them have been sent (gRPC asks
    for the next message only after the previous one was written). Once only."""

    def __init__(self, stub: object, action: Callable[[], None], pieces: int = 8) -> None:
        self._stub, self._action, self.pieces = stub, action, pieces
        self.sent_before_action: int | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._stub, name)

    def PublishModel(self, requests, **kwargs):  # noqa: N802
        return self._stub.PublishModel(self._cut(requests), **kwargs)

    def _cut(self, requests):
        sent = 0
        for msg in requests:
            if not msg.HasField("chunk"):
                yield msg
                continue
            size = -(-len(msg.chunk) // self.pieces)
            for i in range(0, len(msg.chunk), size):
                if sent == self.pieces // 2 and self.sent_before_action is None:
                    self.sent_before_action = sent
                    self._action()
                yield pb.PublishModelRequest(chunk=msg.chunk[i : i + size])
                sent += 1


def assert_repository_holds(repo: Path, versions: dict[int, str]) -> None:
    """On disk: exactly these versions of "demo" (version -> SHA-256), complete, and nothing
    else: no temp folder, no partial file."""
    entries = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*"))
    expected = ["demo", ".publish.lock"]
    for v in versions:
        expected += [f"demo/{v}", f"demo/{v}/meta.json", f"demo/{v}/model.onnx"]
    assert entries == sorted(expected)
    for v, sha in versions.items():
        assert hashlib.sha256((repo / "demo" / str(v) / "model.onnx").read_bytes()).hexdigest() == sha


def assert_serves(client: ScorerClient, version: int, sha: str) -> None:
    """Through the API: only `version` is listed, it is what scoring uses, and no other
    version can be loaded."""
    assert [(m.version, m.sha256) for m in client.list_models("demo")] == [(version, sha)]
    scored = client.score_pool("small", model="demo", top_k=5, progress=False)
    assert (scored.model.version, scored.model.sha256, scored.scored) == (version, sha, 64)
    with pytest.raises(ScorerError) as err:
        client.load_model("demo", version + 1)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_uploads_killed_mid_stream_and_mid_write_leave_the_last_version_served(world, tmp_path):
    data, (m1, m2) = world
    sha1 = sha256(m1)
    repo = tmp_path / "repo"
    hold_v2 = {"launcher": FAULTY, "env": {"XGAL_TEST_FAULT": "hold-rename:2"}}

    # 1. SIGKILL with half of the upload's chunks sent.
    first = Replica(data, repo, **hold_v2)
    try:
        with ScorerClient(first.address, retry=FAST, timeout=60) as client:
            assert client.publish_model(m1, "demo").version == 1
            cut = client.targets[0].stub = CutUpload(client.targets[0].stub, first.kill)
            with pytest.raises(ScorerError) as err:
                bounded(lambda: client.publish_model(m2, "demo"), 60, "publish killed mid-upload")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert cut.sent_before_action == cut.pieces // 2 and first.proc.returncode == -signal.SIGKILL
    finally:
        first.stop()
    assert_repository_holds(repo, {1: sha1})

    # 2. Restarted on the same repository: the half model is neither listed nor served. Then
    # SIGKILL mid-write: the new version's temp folder is complete, its rename not done.
    second = Replica(data, repo, **hold_v2)
    try:
        with ScorerClient(second.address, retry=FAST, timeout=60) as client:
            assert_serves(client, 1, sha1)
            publish = in_background(lambda: client.publish_model(m2, "demo"), "publish killed mid-write")
            wait_for(
                lambda: any((repo / "demo").glob(".2.*.tmp/meta.json")),
                timeout=60,
                what="the temp folder of version 2 written",
            )
            second.kill()
            with pytest.raises(ScorerError) as err:
                publish(60)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        second.stop()
    [temp] = (repo / "demo").glob(".2.*.tmp")  # what a replica killed mid-write leaves
    assert sorted(p.name for p in temp.iterdir()) == ["meta.json", "model.onnx"]

    # 3. Restarted again: the temp folder is gone once the replica is up, before any publish,
    # and version 1 is still what is listed and served, with the same SHA-256.
    log = tmp_path / "third.log"
    third = Replica(data, repo, log=log)
    try:
        with ScorerClient(third.address, retry=FAST, timeout=60) as client:
            assert_repository_holds(repo, {1: sha1})
            assert_serves(client, 1, sha1)
    finally:
        third.stop()
    assert f"removed demo/{temp.name}, left by a publish that did not finish" in log.read_text()


def serving(address: str) -> bool:
    """Whether the replica's health says SERVING (False while it drains, or once it is gone)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("drain", ["completes", "cut"])
def test_sigterm_during_an_upload_commits_all_or_nothing(world, tmp_path, drain):
    """SIGTERM once half the upload is sent. "completes": the rest is sent while the replica
    drains (30 s): the client is told it succeeded, and the version is stored. "cut": the drain
    is 0.5 s and the rest is sent only after the replica exited: the client is told it failed,
    and nothing is stored. Either way the client's outcome and the repository agree."""
    data, (m1, m2) = world
    sha1, sha2 = sha256(m1), sha256(m2)
    repo = tmp_path / "repo"
    fault = {} if drain == "completes" else {"launcher": FAULTY, "env": {"XGAL_TEST_FAULT": "grace:0.5"}}
    rep = Replica(data, repo, **fault)
    try:
        address = rep.address

        def terminate() -> None:
            rep.proc.send_signal(signal.SIGTERM)
            if drain == "completes":
                wait_for(lambda: not serving(address), timeout=30, what="the replica draining")
            else:
                rep.proc.wait(timeout=30)

        with ScorerClient(address, retry=FAST, timeout=60) as client:
            assert client.publish_model(m1, "demo").version == 1
            assert serving(address)
            cut = client.targets[0].stub = CutUpload(client.targets[0].stub, terminate)
            publish = in_background(lambda: client.publish_model(m2, "demo"), "publish during SIGTERM")
            try:
                outcome = ("ok", publish(60))
            except ScorerError as exc:
                outcome = ("failed", exc)
        assert cut.sent_before_action == cut.pieces // 2
        assert rep.proc.wait(timeout=60) == 0  # the replica then exited, drained
    finally:
        rep.stop()
    if drain == "completes":
        assert outcome[0] == "ok", outcome
        assert (outcome[1].version, outcome[1].sha256) == (2, sha2)
        assert_repository_holds(repo, {1: sha1, 2: sha2})
    else:
        assert outcome[0] == "failed", outcome
        assert_repository_holds(repo, {1: sha1})


# -- a publish stored, its answer lost ----------------------------------------------------------


def test_a_publish_stored_but_never_answered_is_safe_to_retry(world, tmp_path):
    data, (m1, _) = world
    sha1 = sha256(m1)
    repo = tmp_path / "repo"
    held = Replica(data, repo, launcher=FAULTY, env={"XGAL_TEST_FAULT": "hold-answer:1"})
    try:
        with ScorerClient(held.address, retry=FAST, timeout=60) as client:
            publish = in_background(lambda: client.publish_model(m1, "demo"), "publish killed after storing")
            # The version appears by one rename, complete; the replica then holds its answer.
            wait_for((repo / "demo" / "1" / "meta.json").is_file, timeout=60, what="version 1 stored")
            held.kill()
            with pytest.raises(ScorerError) as err:
                publish(60)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE  # the client was told it failed...
    finally:
        held.stop()
    assert_repository_holds(repo, {1: sha1})  # ...yet version 1 was stored

    # The client publishes the same file again, to the restarted replica: it gets the version
    # that was stored, and no second one is made.
    log = tmp_path / "again.log"
    again = Replica(data, repo, log=log)
    try:
        with ScorerClient(again.address, retry=FAST, timeout=60) as client:
            info = client.publish_model(m1, "demo")
            assert (info.version, info.sha256) == (1, sha1)
            assert_serves(client, 1, sha1)
    finally:
        again.stop()
    assert_repository_holds(repo, {1: sha1})
    assert f"demo version 1 already holds these bytes ({sha1[:12]}): no new version" in log.read_text()


def test_publishing_the_same_bytes_twice_makes_one_version(world, tmp_path, caplog):
    data, (m1, m2) = world
    sha1, sha2 = sha256(m1), sha256(m2)
    srv = RunningServer(ServerConfig(data_root=data, model_repo=tmp_path / "repo", port=0))
    try:
        with caplog.at_level(logging.INFO, logger="xgal.scorer"), ScorerClient(srv.address) as client:
            assert [client.publish_model(m1, "demo").version for _ in range(2)] == [1, 1]
            assert caplog.text.count("already holds these bytes") == 1
            assert [(m.version, m.sha256) for m in client.list_models("demo")] == [(1, sha1)]
            # Only the latest version counts: other bytes, then the first ones again, are new.
            assert [client.publish_model(m, "demo").version for m in (m2, m2, m1)] == [2, 2, 3]
            assert [(m.version, m.sha256) for m in client.list_models("demo")] == [
                (1, sha1),
                (2, sha2),
                (3, sha1),
            ]
    finally:
        srv.stop(grace=0)

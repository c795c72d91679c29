"""ScorePool replies that hold every row (return_all, pool-level normalisation) against real
servers on 127.0.0.1: the rows come in ScoreRows messages no larger than the server's configured
size and the client joins them into the result one message would have held; a reply larger than
the client takes fails at once with a clear error, tried once (a size limit's RESOURCE_EXHAUSTED
is not load), while a busy replica's RESOURCE_EXHAUSTED is still tried again."""

import threading

import grpc
import numpy as np
import pytest
from helpers import small_scoring_graphs, wait_for
from typer.testing import CliRunner

from xgal.cli import app
from xgal.client import MessageTooLargeError, RetryPolicy, ScorerClient
from xgal.core.errors import InvalidArgument
from xgal.core.ranking import Ranked, ScoreResult
from xgal.core.samples import SkippedSample
from xgal.core.wire import REPLY_MESSAGE_BYTES, join_score_rows, ranked_from_proto, score_pool_replies
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

POOL = 3000  # rows: about 180 KB of them, in messages of 16 KiB
SMALL = 16 * 1024
FAST = RetryPolicy(attempts=4, backoff_s=0.05, max_backoff_s=0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunks")
    synth_pool(root / "data" / "pool", POOL, seed=0, image_size=32, shard_size=1000)
    m1, _ = small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")
    return root, m1


@pytest.fixture(scope="module")
def servers(world):
    """Two replicas of the same model: one sends a reply in messages of the default size (one
    message here), the other in messages of at most SMALL bytes."""
    root, m1 = world
    started = []
    try:
        for name, size in (("whole", None), ("small", SMALL)):
            extra = {} if size is None else {"reply_message_bytes": size}
            config = ServerConfig(data_root=root / "data", model_repo=root / name, port=0, **extra)
            started.append(RunningServer(config))
            with ScorerClient(started[-1].address) as client:
                client.publish_model(m1, "m")
        yield started
    finally:
        for srv in started:
            srv.stop(grace=1)


def _events(srv, **request):
    """Every message of one ScorePool call, as the wire carries them."""
    with grpc.insecure_channel(srv.address) as channel:
        req = pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="m"), top_k=10, **request)
        return list(scorer_pb2_grpc.ScorerStub(channel).ScorePool(req, timeout=60))


def test_every_row_comes_in_bounded_messages(servers):
    whole, small = servers
    one = _events(whole, return_all=True)
    assert [e.WhichOneof("event") for e in one if not e.HasField("progress")] == ["result"]
    parts = [e for e in _events(small, return_all=True) if not e.HasField("progress")]
    kinds = [e.WhichOneof("event") for e in parts]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"rows"} and len(kinds) >= 8, kinds
    assert max(e.ByteSize() for e in parts) <= SMALL
    joined = join_score_rows([e.rows for e in parts[:-1]], parts[-1].result)
    joined.seconds = one[-1].result.seconds  # how long each took is all that may differ
    assert joined == one[-1].result  # the same message, field by field, rows in order
    assert len(joined.all) == POOL


@pytest.mark.parametrize(
    "options", [{"return_all": True}, {"normalise": "minmax"}, {"normalise": "rank", "shards": 3}]
)
def test_the_client_joins_the_rows_into_the_unchunked_result(servers, options):
    whole, small = servers
    with ScorerClient(whole.address) as client:
        want = client.score_pool("pool", model="m", top_k=25, progress=False, **options)
    # A client that takes 100 KiB at most: the rows of one shard (about 60 KB a thousand) come
    # in pieces it takes.
    with ScorerClient(small.address, max_message_mb=0.1) as client:
        got = client.score_pool("pool", model="m", top_k=25, progress=False, **options)
    assert got.scored == want.scored == POOL
    assert got.top.ids.tolist() == want.top.ids.tolist()
    np.testing.assert_array_equal(got.top.score, want.top.score)
    if options.get("return_all"):
        assert got.all.ids.tolist() == want.all.ids.tolist()
        np.testing.assert_array_equal(got.all.probs, want.all.probs)
        np.testing.assert_array_equal(got.all.score, want.all.score)


class _CountedStub:
    """A replica's real stub that counts the ScorePool calls made on it."""

    def __init__(self, stub):
        self._stub, self.calls = stub, 0

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def ScorePool(self, request, **kwargs):  # noqa: N802
        self.calls += 1
        return self._stub.ScorePool(request, **kwargs)


def test_a_reply_larger_than_the_client_takes_fails_at_once_and_clearly(servers):
    whole, _ = servers
    with ScorerClient(whole.address, max_message_mb=0.1, retry=FAST) as client:
        stub = client.targets[0].stub = _CountedStub(client.targets[0].stub)
        with pytest.raises(MessageTooLargeError, match="larger than max.*not load: not tried again") as err:
            client.score_pool("pool", model="m", top_k=10, return_all=True, progress=False)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "try 1 of 4" in str(err.value)
    assert stub.calls == 1


def test_a_busy_replica_is_still_tried_again(servers):
    whole, _ = servers
    # The calls of the tests before have let go of their workers (a call the client gave up on
    # ends on the server a moment later).
    wait_for(lambda: whole.admission.in_flight == 0, what="no call in flight")
    held = 0
    while whole.admission.try_enter():  # every scoring slot held: the replica is busy
        held += 1
    refused = whole.metrics.requests.labels("ScorePool", "RESOURCE_EXHAUSTED")
    before = refused._value.get()

    def free():
        wait_for(lambda: refused._value.get() > before, what="a refusal")
        for _ in range(held):
            whole.admission.leave()

    opener = threading.Thread(target=free)
    try:
        with ScorerClient(whole.address, retry=FAST) as client:
            client.targets[0].stub = stub = _CountedStub(client.targets[0].stub)
            opener.start()
            result = client.score_pool("pool", model="m", top_k=10, progress=False)
    finally:
        opener.join(timeout=30)
    assert result.scored == POOL and stub.calls >= 2


def test_every_list_survives_any_split():
    """score_pool_replies and join_score_rows are each other's inverse, embeddings and skipped
    samples included, whatever the message size (one row per message at the smallest)."""
    rng = np.random.default_rng(0)
    n, k = 200, 3
    probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
    ranked = Ranked(
        ids=np.array([f"id{i:04d}" for i in range(n)]),
        u=rng.random(n),
        m=rng.random(n),
        score=rng.random(n),
        pred=probs.argmax(1),
        probs=probs,
        embedding=rng.random((n, 16)).astype(np.float32),
    )
    result = ScoreResult(
        top=ranked.take(np.arange(40)),
        all=ranked,
        scored=n,
        excluded=2,
        seconds=1.5,
        class_names=("a", "b", "c"),
        skipped=[SkippedSample(f"bad{i}", "ROI values other than 0 and 1") for i in range(30)],
        with_roi=n,
    )
    model = pb.ModelInfo(name="m", version=3, class_names=["a", "b", "c"])
    [single] = score_pool_replies(result, model, 1 << 30)
    for size in (1, 600, 4096):
        replies = list(score_pool_replies(result, model, size))
        assert replies[-1].HasField("result") and all(r.HasField("rows") for r in replies[:-1])
        assert len(replies) > 1
        if size == 4096:
            assert max(r.ByteSize() for r in replies) <= size
        assert join_score_rows([r.rows for r in replies[:-1]], replies[-1].result) == single.result
    assert ranked_from_proto(single.result.top, k).embedding.shape == (40, 16)


def test_the_reply_size_must_fit_the_message_limit(world, tmp_path):
    root, _ = world
    with pytest.raises(InvalidArgument, match="reply message size"):
        RunningServer(
            ServerConfig(
                data_root=root / "data",
                model_repo=tmp_path / "repo",
                port=0,
                max_message_mb=1,
                reply_message_bytes=2 << 20,
            )
        )


def test_serve_takes_the_reply_size(world, tmp_path, monkeypatch):
    """`xgal serve --reply-message-kb` reaches the server's configuration (in KiB)."""
    import xgal.scorer.server as server_module

    seen = []
    monkeypatch.setattr(server_module, "serve_forever", lambda config, grace: seen.append(config))
    args = ["serve", "--data-root", str(world[0] / "data"), "--model-repo", str(tmp_path / "repo")]
    res = CliRunner().invoke(app, [*args, "--reply-message-kb", "16"])
    assert res.exit_code == 0, res.output
    assert seen[0].reply_message_bytes == 16 * 1024
    CliRunner().invoke(app, args)
    assert seen[1].reply_message_bytes == REPLY_MESSAGE_BYTES == 4 << 20

"""A progress callback that raises (the documented way to stop a `score_pool`) on two real
replicas on 127.0.0.1: the call raises that very exception, every replica's ScorePool in flight
is cancelled there, and no worker thread of the client is left."""

import threading

import pytest
from helpers import ShardWatch, bounded, small_scoring_graphs, wait_for

from xgal.client import RetryPolicy, ScorerClient
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig

POOL = 2000


class Stop(Exception):
    """What the test's callback raises to stop the run."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    synth_pool(root / "data" / "pool", POOL, seed=0, image_size=32, shard_size=500)
    return root, small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")[0]


@pytest.fixture
def pair(world, tmp_path):
    """Two replicas that score one image per engine call and report every one: a shard of 500
    lasts far longer than stopping it does."""
    root, onnx = world
    started = []
    try:
        for i in range(2):
            repo = tmp_path / f"repo{i}"
            config = ServerConfig(data_root=root / "data", model_repo=repo, port=0, max_batch=1)
            started.append(RunningServer(config))
            started[-1].service.progress_interval_s = 0.0
        with ScorerClient([s.address for s in started]) as client:
            client.publish_model(onnx, "m")
        yield started
    finally:
        for srv in started:
            srv.stop(grace=1)


def _count(srv, code):
    return srv.metrics.requests.labels("ScorePool", code)._value.get()


def test_a_progress_callback_that_raises_stops_every_replica(pair):
    with ScorerClient([s.address for s in pair], retry=RetryPolicy(attempts=4, backoff_s=0.05)) as client:
        watches = [ShardWatch(t.stub) for t in client.targets]
        for t, watch in zip(client.targets, watches, strict=True):
            t.stub = watch
        raised = []

        def stop_when_both_are_scoring(done, total):
            # Each time it is called once both replicas are inside a shard: a user's "stop" flag.
            if all(w.running() for w in watches):
                raised.append(Stop(f"stopped at {done} of {total}"))
                raise raised[-1]

        with pytest.raises(Stop) as err:
            bounded(
                lambda: client.score_pool("pool", model="m", top_k=10, progress=stop_when_both_are_scoring),
                timeout=60,
                what="score_pool stopped by its callback",
            )
        assert err.value is raised[0]  # the callback's own exception, not a wrapper or another
        # Every worker has ended before score_pool raised.
        assert not [th.name for th in threading.enumerate() if th.name.startswith("xgal-shards-")]
        # Both replicas were inside a shard; each call was cancelled there, none finished.
        for srv, watch in zip(pair, watches, strict=True):
            assert "result" not in watch.ended.values()
            wait_for(lambda srv=srv: _count(srv, "CANCELLED") >= 1, timeout=10, what="the server's cancel")
            wait_for(lambda srv=srv: srv.admission.in_flight == 0, timeout=10, what="the call to let go")
            assert _count(srv, "OK") == 0
            assert srv.metrics.images._value.get() < 500  # less than one shard: cut, not finished

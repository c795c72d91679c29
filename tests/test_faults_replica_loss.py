"""Replicas lost while their shards are in flight, on real replicas (processes of their own on
127.0.0.1, so that they can be SIGKILLed): two of three killed mid-shard (the run's result is
still clean), and all of them (the unscored shards are named, in bounded time). Every kill is
placed on an observed state (a shard's progress), never on a sleep, and every wait is bounded."""

import signal
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from helpers import FAULTS_POOL, Replica, ShardWatch, bounded, faults_world

from xgal.client import RetryPolicy, ScorerClient, ScorerError

POOL = FAULTS_POOL
SHARDS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data root (a pool of FAULTS_POOL, one of 64) and two scoring graphs that differ in
    their bytes (helpers.faults_world), once for this module."""
    return faults_world(tmp_path_factory)


def spans() -> list[tuple[int, int]]:
    """The shards the client cuts the pool into with shards=SHARDS (as ScorerClient does)."""
    bounds = np.linspace(0, POOL, SHARDS + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.fixture
def replicas(world, tmp_path):
    """Start replicas with the given max-batch each (1 = one image per engine call, so that its
    shards, hundreds of images each, last far longer than killing it does); all are killed at
    the end of the test."""
    started: list[Replica] = []

    def start(*batches: int) -> list[Replica]:
        new = [Replica(world[0], tmp_path / f"repo{i}", max_batch=mb) for i, mb in enumerate(batches)]
        started.extend(new)
        assert all(r.address for r in new)
        return new

    yield start
    for r in started:
        r.stop()


def kill_when_all_mid_shard(victims: list[Replica], watches: list[ShardWatch]) -> tuple[Callable, dict]:
    """A progress callback for score_pool: the first time every victim has reported progress on
    a shard it has not finished, SIGKILL them all and wait until they are gone."""
    killed: dict[str, object] = {}

    def progress(done: int, total: int) -> None:
        running = [w.running() for w in watches]
        if all(running) and not killed:
            for v in victims:
                v.proc.kill()
            for v in victims:
                v.proc.wait(timeout=10)
            killed.update(done=done, total=total, running=running, at=time.monotonic())

    return progress, killed


def assert_killed_mid_shard(killed: dict, victims: list[Replica], watches: list[ShardWatch]) -> None:
    assert killed, "the victims never all reported progress on a shard at once"
    assert killed["done"] < killed["total"] == POOL  # the pool was not done...
    for victim, watch, running in zip(victims, watches, killed["running"], strict=True):
        [((start, stop), reported)] = running.items()
        assert 0 < reported < stop - start  # ...and each victim was inside a shard
        assert victim.proc.returncode == -signal.SIGKILL
        assert watch.ended[(start, stop)] == "UNAVAILABLE"  # which it never finished


def test_two_of_three_replicas_killed_mid_shard_give_a_clean_runs_result(world, replicas):
    _, (onnx, _) = world
    survivor, *victims = replicas(16, 1, 1)
    with ScorerClient([survivor.address] + [v.address for v in victims], timeout=120) as client:
        client.publish_model(onnx, "demo")
        with ScorerClient(survivor.address, timeout=120) as one:
            clean = one.score_pool("pool", model="demo", top_k=40, progress=False)
        watches = [ShardWatch(t.stub) for t in client.targets[1:]]
        for t, w in zip(client.targets[1:], watches, strict=True):
            t.stub = w
        progress, killed = kill_when_all_mid_shard(victims, watches)
        survived = bounded(
            lambda: client.score_pool("pool", model="demo", top_k=40, shards=SHARDS, progress=progress),
            timeout=180,
            what="score_pool with two replicas killed",
        )
    assert_killed_mid_shard(killed, victims, watches)
    # The two cut shards were scored again on the survivor: the same ranking, to the bit.
    assert survived.top.ids.tolist() == clean.top.ids.tolist()
    np.testing.assert_array_equal(survived.top.score, clean.top.score)
    assert (survived.scored, survived.excluded) == (clean.scored, clean.excluded) == (POOL, 0)


def test_all_replicas_killed_mid_pool_name_the_unscored_shards_in_bounded_time(world, replicas):
    _, (onnx, _) = world
    trio = replicas(1, 1, 1)
    policy = RetryPolicy(attempts=3, backoff_s=0.1, max_backoff_s=1.0)
    with ScorerClient([r.address for r in trio], timeout=120, retry=policy) as client:
        client.publish_model(onnx, "demo")
        watches = [ShardWatch(t.stub) for t in client.targets]
        for t, w in zip(client.targets, watches, strict=True):
            t.stub = w
        progress, killed = kill_when_all_mid_shard(trio, watches)
        with pytest.raises(ScorerError) as err:
            bounded(
                lambda: client.score_pool("pool", model="demo", top_k=40, shards=SHARDS, progress=progress),
                timeout=120,
                what="score_pool with every replica killed",
            )
        failed_after = time.monotonic() - killed["at"]
    assert_killed_mid_shard(killed, trio, watches)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    message = str(err.value)
    scored = {shard for w in watches for shard, end in w.ended.items() if end == "result"}
    unscored = [s for s in spans() if s not in scored]
    # Every shard without a result is named as [start, stop) (the three cut mid-shard among
    # them), and no shard that was scored is.
    assert {s for r in killed["running"] for s in r} <= set(unscored)
    for start, stop in spans():
        assert (f"[{start}, {stop})" in message) == ((start, stop) in unscored), message
    assert f"{len(unscored)} of {SHARDS} shards not scored" in message
    assert all(r.address in message for r in trio)
    # Bounded: each replica sits out its back-off and probes its channel (each at most one
    # back-off long) `attempts` times, then is given up on; 5 s of slack for a loaded machine.
    bound = 2 * sum(policy.delay(i) for i in range(1, policy.attempts + 1)) + 5.0
    assert failed_after < bound, f"the error came {failed_after:.1f} s after the kill (bound {bound:.1f} s)"

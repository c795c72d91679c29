"""Open files and checks over many shards: a scorer whose process may open 256 files scores a
pool of 1,000 shards (one ScorePool, six at once, in process) with the descriptors of pool files
sampled against the documented bound (`shards.POOL_FILES`), and running out of descriptors is
named as such (RESOURCE_EXHAUSTED), never blamed on the pool (tests/pool_files_child.py is that
process); a shard hashed once per state of its files whichever path reads it (spans, in-process
scoring, ScorePool, Ray's block scorer) and the pool's IDs checked once; the bounded registries
and set of open shards; the prefetch thread gone when its consumer stops in the last batches.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import small_scoring_graphs, wait_for

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.pool import checks
from xgal.pool.format import Pool, PoolWriter
from xgal.pool.shards import OPEN_SHARDS, POOL_FILES, SHARD_MAPS
from xgal.pool.synth import synth_pool
from xgal.scorer.loader import PrefetchLoader
from xgal.scorer.pipeline import score_pool
from xgal.scorer.ray_pool import BlockScorer
from xgal.scorer.server import RunningServer, ServerConfig

LIMIT = 256  # RLIMIT_NOFILE of the process that scores the pool of many shards
MANY = 1000  # shards of one sample each


def _many_shards(path, n):
    rng = np.random.default_rng(0)
    rois = np.zeros((n, 32, 32), np.uint8)
    rois[::2, 8:20, 8:20] = 1
    images = rng.integers(0, 256, (n, 1, 32, 32), np.uint8)
    with PoolWriter(path, image_shape=(1, 32, 32), class_names=["a", "b", "c"], shard_size=1) as w:
        for i in range(n):  # one at a time: the writer joins what it holds at every shard
            w.add([f"s{i:04d}"], images[i : i + 1], rois[i : i + 1])
    return path


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, graph):
    data = tmp_path_factory.mktemp("files") / "data"
    _many_shards(data / "many", MANY)
    synth_pool(data / "small", 64, seed=0, image_size=32, shard_size=16)
    synth_pool(data / "fresh", 16, seed=1, image_size=32)
    return data, graph


@pytest.fixture(scope="module")
def limited(world, tmp_path_factory):
    """What tests/pool_files_child.py saw, run once with RLIMIT_NOFILE lowered to LIMIT."""
    data, graph = world
    child = Path(__file__).with_name("pool_files_child.py")
    repo = tmp_path_factory.mktemp("repo")
    done = subprocess.run(
        [sys.executable, str(child), str(LIMIT), str(data), str(graph), str(repo)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_1000_shards_score_with_256_files_alone_six_at_once_and_in_process(limited):
    """A scorer whose process may open 256 files: one ScorePool of a pool of 1,000 shards (the
    first: every shard checked and hashed), then six at once, then in-process scoring; the pool's
    files open at any time stay under the documented bound."""
    assert any(
        line.startswith("Max open files") and f" {LIMIT} " in line for line in limited["limits"].splitlines()
    )
    scored, top = limited["alone"]
    assert scored == MANY and len(top) == 5
    assert limited["six"] == [[MANY, top]] * 6 and limited["in_process"] == [MANY, top]
    most, most_pool, samples = limited["fds"]
    assert samples > 10 and 0 < most_pool <= POOL_FILES and most < LIMIT, limited["fds"]


def test_running_out_of_files_is_named_never_blamed_on_the_pool(world, limited):
    """Every descriptor taken: ScorePool is refused with RESOURCE_EXHAUSTED naming the limit, a
    read raises `OutOfFiles`, neither blames the pool; with descriptors back the same scorer
    scores again."""
    data, _ = world
    code, details = limited["rpc"]
    assert code == "RESOURCE_EXHAUSTED", limited["rpc"]
    for message in (details, limited["read"]):
        assert f"ran out of file descriptors: its limit (RLIMIT_NOFILE) is {LIMIT} open files" in message
        assert "not a fault of the file" in message and "cannot be read" not in message
        assert str(data) not in message and "pool" not in message
    assert limited["after"][0] == 64


@pytest.fixture
def hashed(monkeypatch):
    """Every file the checks hash, in order."""
    seen = []
    real = checks.sha256_file

    def counting(path):
        seen.append(os.path.relpath(path, path.parents[2]))
        return real(path)

    monkeypatch.setattr(checks, "sha256_file", counting)
    return seen


def _settled(path) -> None:
    """Wait until the pool's files are older than checks.RACY_NS: their state is then remembered."""
    newest = max(max(f.stat().st_mtime_ns, f.stat().st_ctime_ns) for f in path.rglob("*.npy"))
    wait_for(lambda: time.time_ns() - newest > checks.RACY_NS, 5, "the pool's files to settle")


def test_a_shard_is_hashed_once_per_state_whichever_path_reads_it(graph, tmp_path, hashed):
    """Ray's block scorer over blocks of a quarter shard, then spans verified in process,
    in-process scoring and two ScorePools: each file of the pool is hashed once, its IDs
    checked once; a rewritten file has its shard (only) hashed again."""
    pool = synth_pool(tmp_path / "data" / "pool", 64, seed=2, image_size=32, shard_size=16)
    files = sorted(f"pool/{f.parent.name}/{f.name}" for f in pool.path.rglob("*.npy"))
    _settled(pool.path)
    ids_runs, verify_runs = checks.UNIQUE_IDS.runs, checks.VERIFIED.runs

    actor = BlockScorer(graph.read_bytes(), 1, False)
    for a in range(0, 64, 4):  # what an actor runs for each block it is given
        actor.score(str(pool.path), a, a + 4, AcquisitionConfig(), 3, [], False, "fail", 4, True)
    assert sorted(hashed) == files  # each once, not once per block (four a shard)
    assert checks.UNIQUE_IDS.runs - ids_runs == 1 and checks.VERIFIED.runs - verify_runs == 4

    for a, b in ((0, 8), (8, 40), (0, 64)):
        Pool(pool.path).verify(a, b, samples=False)
    from xgal.scorer.engines import OnnxRuntimeEngine

    score_pool(OnnxRuntimeEngine(graph), Pool(pool.path), AcquisitionConfig(), 3, verify=True)
    srv = RunningServer(ServerConfig(data_root=tmp_path / "data", model_repo=tmp_path / "repo", port=0))
    try:
        with ScorerClient(srv.address) as client:
            client.publish_model(graph, "m")
            assert client.score_pool("pool", model="m", top_k=3, shards=2, progress=False).scored == 64
            assert sorted(hashed) == files
            rois = pool.path / "shard-00002" / "rois.npy"
            np.save(rois, np.load(rois))  # the same bytes, a new state
            assert client.score_pool("pool", model="m", top_k=3, shards=1, progress=False).scored == 64
    finally:
        srv.stop(grace=0)
    assert sorted(hashed) == sorted(files + [f for f in files if "shard-00002" in f])
    assert checks.UNIQUE_IDS.runs - ids_runs == 1


def test_the_registries_are_bounded_and_remember_settled_states_only():
    registry, ran = checks.Remembered(2), []
    old = ((), ((1, 2, 3, 0, 0),))  # timestamps far in the past
    for key in ("a", "b", "c", "a"):
        registry.once((key,), lambda: old, lambda k=key: ran.append(k))
    assert ran == ["a", "b", "c", "a"] and len(registry) == 2  # "a" was forgotten, least recent
    registry.once(("c",), lambda: old, lambda: ran.append("c"))
    assert ran[-1] == "a"  # "c" is remembered
    now = time.time_ns()
    fresh = ((), ((1, 2, 3, now, now),))  # written now: could change again unseen
    registry.once(("d",), lambda: fresh, lambda: ran.append("d"))
    registry.once(("d",), lambda: fresh, lambda: ran.append("d"))
    assert ran[-2:] == ["d", "d"]


def _pool_fds(folder) -> int:
    prefix, n = str(folder) + os.sep, 0
    for name in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{name}").startswith(prefix)
        except OSError:
            pass
    return n


def test_reads_past_the_open_shards_wait_for_a_place(tmp_path):
    """OPEN_SHARDS reads each holding a shard: the next read waits (nothing more is opened),
    and goes on when one ends."""
    pool = Pool(_many_shards(tmp_path / "pool", OPEN_SHARDS + 4))
    SHARD_MAPS.close_idle()
    release, holding = threading.Event(), []

    def hold(i: int) -> None:
        with pool.arrays(pool.shards[i]) as array:
            array("ids"), array("images"), array("rois")
            holding.append(i)
            release.wait(30)

    holders = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(OPEN_SHARDS)]
    for t in holders:
        t.start()
    wait_for(lambda: len(holding) == OPEN_SHARDS, 10, "every holder")
    got, beyond = [], OPEN_SHARDS + 1  # samples [beyond, beyond + 2): two shards not open
    reader = threading.Thread(target=lambda: got.append(pool.read(beyond, beyond + 2)), daemon=True)
    reader.start()
    wait_for(lambda: SHARD_MAPS.waiting == 1, 10, "the read to wait")
    assert SHARD_MAPS.counts() == (OPEN_SHARDS, OPEN_SHARDS)
    assert _pool_fds(pool.root) == 3 * OPEN_SHARDS
    release.set()
    reader.join(10)
    assert got and got[0]["ids"].tolist() == [f"s{beyond:04d}", f"s{beyond + 1:04d}"]
    for t in holders:
        t.join(10)
    assert SHARD_MAPS.counts() == (OPEN_SHARDS, 0) and _pool_fds(pool.root) <= 3 * OPEN_SHARDS


def test_the_prefetch_thread_ends_when_its_consumer_stops_in_the_last_batches(tmp_path):
    pool = synth_pool(tmp_path / "pool", 64, seed=0, image_size=32, shard_size=16)
    batches = iter(PrefetchLoader(pool, 16, prefetch=2))  # 4 batches
    for _ in range(2):
        next(batches)
    frame = batches.gi_frame.f_locals
    queue, thread = frame["q"], frame["thread"]
    # The last two batches wait in the queue: the reader is at its last hand-over.
    wait_for(queue.full, 10, "the last batches read")
    batches.close()  # the consumer stops there
    assert not thread.is_alive()
    assert SHARD_MAPS.counts()[1] == 0  # no shard held open for it
    SHARD_MAPS.close_idle()
    assert _pool_fds(pool.root) == 0

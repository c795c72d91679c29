"""32 clients at once against one replica (its own process), mixing ScorePool and ScoreStream
for a bounded time: every call is answered or refused with RESOURCE_EXHAUSTED, the answers are
the same as an unloaded replica's, the replica's memory stays bounded and nothing deadlocks."""

import collections
import socket
import threading
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest
from helpers import Replica, small_scoring_graphs

from xgal.client import ScorerClient
from xgal.pool.synth import synth_pool
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

CLIENTS = 32
PHASE_S = 6.0  # per load phase; two phases
CALL_TIMEOUT_S = 60.0
POOL = 256
MiB = 1 << 20


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    synth_pool(root / "data" / "pool", POOL, seed=0, image_size=32, shard_size=128)
    onnx = small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")[0]
    with socket.socket() as s:  # a free port for /metrics (the replica binds it a moment later)
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    rep = Replica(root / "data", root / "repo", "--metrics-port", str(metrics_port), "--workers", "8")
    try:
        with ScorerClient(rep.address) as client:
            client.publish_model(onnx, "m")
        yield rep, metrics_port, root
    finally:
        rep.stop()


def _stream_batch(i):
    rng = np.random.default_rng(i)
    return pb.ScoreStreamRequest(
        model=pb.ModelRef(name="m"),
        pixel_dtype="uint8",
        ids=[f"c{i}-{j}" for j in range(8)],
        images=rng.integers(0, 256, (8, 1, 32, 32), dtype=np.uint8).tobytes(),
        rois=(rng.random((8, 32, 32)) < 0.3).astype(np.uint8).tobytes(),
    )


def _run_clients(address, seconds, reference):
    """CLIENTS threads, each with its own channel, calling until `seconds` pass. Returns the
    outcomes by (method, code) and any answer that differed from the unloaded one."""
    outcomes = collections.Counter()
    wrong = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    request = pb.ScorePoolRequest(pool="pool", model=pb.ModelRef(name="m"), top_k=10)

    def client(i):
        with grpc.insecure_channel(address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            n = 0
            while time.monotonic() < stop_at:
                method = "ScorePool" if (i + n) % 2 else "ScoreStream"
                n += 1
                try:
                    if method == "ScorePool":
                        result = list(stub.ScorePool(request, timeout=CALL_TIMEOUT_S))[-1].result
                        answer = [s.id for s in result.top]
                        expected = reference["pool"]
                    else:
                        batches = [_stream_batch(i * 1000 + n + k) for k in range(3)]
                        replies = list(stub.ScoreStream(iter(batches), timeout=CALL_TIMEOUT_S))
                        answer = [[s.id for s in r.samples] for r in replies]
                        expected = [list(b.ids) for b in batches]
                    code = "OK"
                    if answer != expected:
                        with lock:
                            wrong.append((method, answer))
                except grpc.RpcError as err:
                    code = err.code().name
                    if code == "RESOURCE_EXHAUSTED":
                        time.sleep(0.05)  # as a client would back off before trying again
                with lock:
                    outcomes[(method, code)] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        # A call started just before the end may take up to its own timeout; more is a deadlock.
        t.join(timeout=seconds + CALL_TIMEOUT_S + 30)
    assert not any(t.is_alive() for t in threads), "a client never returned: deadlock"
    return outcomes, wrong


def _metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return text, sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
    )


def test_32_clients_are_answered_or_refused_and_memory_stays_bounded(replica):
    rep, metrics_port, root = replica
    with ScorerClient(rep.address) as client:
        reference = {"pool": client.score_pool("pool", model="m", top_k=10, progress=False).top.ids.tolist()}
    proc = psutil.Process(rep.proc.pid)
    rss = [proc.memory_info().rss]  # warm: model loaded, one pool scored

    totals = collections.Counter()
    for _ in range(2):
        outcomes, wrong = _run_clients(rep.address, PHASE_S, reference)
        totals.update(outcomes)
        assert not wrong, f"answers under load differ from the unloaded replica's: {wrong[:2]}"
        rss.append(proc.memory_info().rss)

    codes = {code for _, code in totals}
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, totals
    answered = sum(n for (_, code), n in totals.items() if code == "OK")
    refused = sum(n for (_, code), n in totals.items() if code == "RESOURCE_EXHAUSTED")
    assert totals[("ScorePool", "OK")] > 0 and totals[("ScoreStream", "OK")] > 0, totals
    # 32 clients over 6 scoring workers: some are turned away rather than queued.
    assert refused > 0, totals
    print(f"\n{answered} answered, {refused} refused; RSS MiB: {[round(r / MiB) for r in rss]}")

    # Memory: bounded under load, and the second phase does not grow it as the first did
    # (a leak per request would). Figures from this machine: about +20 MiB, then +0 to +5.
    assert rss[1] - rss[0] < 256 * MiB, rss
    assert rss[2] - rss[1] < 64 * MiB, rss

    # Afterwards: no call holds a worker, the replica serves, and /metrics holds only counts.
    text, in_flight = _metric(metrics_port, "xgal_long_calls_in_flight")
    assert in_flight == 0
    assert not any(f"c{i}-" in text for i in range(CLIENTS))  # no sample IDs
    assert str(root) not in text and "pool" not in text  # no paths, no pool names
    with ScorerClient(rep.address) as client:
        after = client.score_pool("pool", model="m", top_k=10, progress=False)
    assert after.top.ids.tolist() == reference["pool"]

"""The serving path under stress (issue 25), on real servers on 127.0.0.1 and real ONNX
Runtime: a batcher whose observer or row splitting fails lives on; the loaded-models gauge and
health stay true while refreshes race scrapes and a drain; calls ended by their deadline or by
the client are counted as such; ScoreStream with the CAM computes the criteria once a batch."""

import sys
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from helpers import bounded, requests_ended, service_server, service_world, wait_for

import xgal
from xgal.client import ScorerClient
from xgal.core import acquisition
from xgal.scorer.batcher import DynamicBatcher
from xgal.scorer.engines.base import BatchScores
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.service import SERVICE
from xgal.v1 import scorer_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool of 300 and two scoring graphs (helpers.service_world), once for this module."""
    return service_world(tmp_path_factory)


@pytest.fixture
def server(world, tmp_path):
    yield from service_server(world, tmp_path)


# -- the dynamic batcher ------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["observer", "rows"])
def test_a_batch_that_fails_after_the_engine_fails_its_waiters_and_the_thread_lives_on(
    world, monkeypatch, fault
):
    _, pool, m1, _ = world
    engine = OnnxRuntimeEngine(m1)
    d = pool.read(0, 8)
    threads, broken = [], threading.Event()

    def observe(n, queued, compute):
        threads.append(threading.current_thread())
        if fault == "observer" and not broken.is_set():
            broken.set()
            raise RuntimeError("the observer broke")

    rows = BatchScores.rows

    def flaky_rows(self, lo, hi):
        if not broken.is_set():
            broken.set()
            raise RuntimeError("splitting the rows broke")
        return rows(self, lo, hi)

    if fault == "rows":
        monkeypatch.setattr(BatchScores, "rows", flaky_rows)
    # Two requests of 4 fill a batch of 8: one engine call for both, whatever the timing.
    batcher = DynamicBatcher(engine, max_batch=8, max_delay_ms=60_000, observe=observe)
    try:
        waiters = [batcher.submit(d["images"][i : i + 4], d["rois"][i : i + 4]) for i in (0, 4)]
        for waiter in waiters:  # each waiter of the failed batch gets its error
            with pytest.raises(RuntimeError, match="broke"):
                waiter.result(timeout=30)
        # The next batch is scored, by the same thread.
        again = batcher.submit(d["images"], d["rois"]).result(timeout=30)
        np.testing.assert_allclose(again.dice, engine.run(d["images"], d["rois"]).dice, atol=1e-6)
        assert len(threads) == (2 if fault == "observer" else 1)
        assert threads[-1] is batcher._thread and batcher._thread.is_alive()
    finally:
        batcher.close()


# -- the loaded-models gauge and health ----------------------------------------------------------
def _loaded(server):
    """(name, version) of every model the scorer's registry says is loaded, as a scrape sees it."""
    return {
        (s.labels["name"], s.labels["version"])
        for metric in server.metrics.registry.collect()
        for s in metric.samples
        if s.name == "xgal_model_loaded" and s.value == 1
    }


def test_a_scrape_racing_refreshes_never_misses_a_loaded_model(world, server):
    _, _, m1, m2 = world
    with ScorerClient(server.address, timeout=60) as client:
        client.publish_model(m1, "a")
        client.publish_model(m2, "b")
    want = {("a", "1"), ("b", "1")}
    assert _loaded(server) == want
    refreshes, scrapes, seen = 2000, 2000, []
    done = threading.Event()

    def refresh():
        try:
            for _ in range(refreshes):
                server.service.refresh_health()
        finally:
            done.set()

    # Switch threads every microsecond or so (not every 5 ms), so that the refreshes and the
    # scrapes interleave at many points of each other.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        refresher = threading.Thread(target=refresh, name="refresher", daemon=True)
        refresher.start()
        for _ in range(scrapes):
            seen.append(_loaded(server))
        refresher.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert done.is_set(), "the refreshes did not end within 60 s"
    wrong = [s for s in seen if s != want]
    assert not wrong, f"{len(wrong)} of {scrapes} scrapes saw another set of models, e.g. {wrong[0]}"
    # Removing a model takes its label set away, and only that one.
    server.repo.unload("a", 1)
    server.service.refresh_health()
    assert _loaded(server) == {("b", "1")}


class WatchedLock:
    """A lock that says when a thread found it held and had to wait."""

    def __init__(self):
        self._lock, self.contended = threading.Lock(), threading.Event()

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def test_a_refresh_that_read_the_models_before_a_load_cannot_write_them_after_it(world, server, monkeypatch):
    """Refresh A reads the loaded models ("a"), and is held; a LoadModel of "b" arrives and
    refreshes (B). A then writes: the gauge must still show "b". B either ran to its end while A
    was held, or waits for A (on the service's refresh lock): A is let go at whichever comes."""
    _, _, m1, m2 = world
    with ScorerClient(server.address, timeout=60) as client:
        client.publish_model(m1, "a")
        client.publish_model(m2, "b", load=False)
    assert _loaded(server) == {("a", "1")}
    watched = WatchedLock()
    monkeypatch.setattr(server.service, "_health_lock", watched, raising=False)
    read, release = threading.Event(), threading.Event()
    real_items = server.repo.loaded_items

    def loaded_items():
        items = real_items()
        if threading.current_thread().name == "refresh-A":
            read.set()
            assert release.wait(30), "the test never let refresh A go on"
        return items

    monkeypatch.setattr(server.repo, "loaded_items", loaded_items)
    refresh_a = threading.Thread(target=server.service.refresh_health, name="refresh-A", daemon=True)
    refresh_a.start()
    assert read.wait(30), "refresh A never read the loaded models"

    def load_b():
        with ScorerClient(server.address, timeout=60) as client:
            client.load_model("b")

    refresh_b = threading.Thread(target=load_b, daemon=True)
    refresh_b.start()
    try:
        wait_for(
            lambda: not refresh_b.is_alive() or watched.contended.is_set(),
            what="the LoadModel's refresh to end or to wait for refresh A",
        )
    finally:
        release.set()
    refresh_a.join(timeout=30)
    refresh_b.join(timeout=30)
    assert not refresh_a.is_alive() and not refresh_b.is_alive()
    assert _loaded(server) == {("a", "1"), ("b", "1")}


def test_a_refresh_that_read_the_state_before_the_drain_cannot_bring_serving_back(world, server, monkeypatch):
    """A LoadModel arriving just before the drain decides SERVING; it is held until the drain
    has said NOT_SERVING, then writes. Health stays NOT_SERVING."""
    _, _, m1, _ = world
    with ScorerClient(server.address, timeout=60) as client:
        client.publish_model(m1, "demo")
    health = server.health
    services = ("", SERVICE, f"{SERVICE}/demo")

    def status(service):
        return health.Check(health_pb2.HealthCheckRequest(service=service), None).status

    assert [status(s) for s in services] == [SERVING] * 3
    held, release = threading.Event(), threading.Event()
    real_set = health.set

    def set_(service, value):
        # The request's refresh (on one of gRPC's workers), at its first SERVING.
        if value == SERVING and threading.current_thread().name.startswith("xgal-rpc") and not held.is_set():
            held.set()
            assert release.wait(30), "the test never let the request's refresh go on"
        real_set(service, value)

    monkeypatch.setattr(health, "set", set_)
    answers = []

    def load():
        with ScorerClient(server.address, timeout=60) as client:
            answers.append(client.load_model("demo").loaded)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    assert held.wait(30), "the LoadModel never refreshed health"
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 30}, daemon=True)
    stopper.start()
    try:
        wait_for(lambda: status("") == NOT_SERVING, what="the drain to say NOT_SERVING")
    finally:
        release.set()
    loader.join(timeout=30)
    stopper.join(timeout=30)
    assert not loader.is_alive() and not stopper.is_alive()
    assert answers == [True]  # the request in flight was answered during the drain
    assert [status(s) for s in services] == [NOT_SERVING] * 3
    # A request arriving later still finds it NOT_SERVING.
    server.service.refresh_health()
    assert [status(s) for s in services] == [NOT_SERVING] * 3


# -- how calls ended -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deadline", "cancel"])
@pytest.mark.parametrize("where", ["in the engine", "waiting for the client"])
def test_a_stream_ended_by_its_deadline_or_its_client_is_counted_so(world, server, monkeypatch, how, where):
    _, pool, m1, _ = world
    d = pool.read(0, 2)
    request = pb.ScoreStreamRequest(
        model=pb.ModelRef(name="demo"),
        ids=["x0", "x1"],
        images=d["images"].tobytes(),
        rois=d["rois"].tobytes(),
        pixel_dtype="uint8",
    )
    with ScorerClient(server.address, timeout=60) as client:
        client.publish_model(m1, "demo")
        _, engine = server.repo.loaded("demo")
        entered, release = threading.Event(), threading.Event()
        if where == "in the engine":
            run = engine.run

            def held(*args, **kwargs):
                entered.set()
                assert release.wait(30), "the test never released the engine"
                return run(*args, **kwargs)

            monkeypatch.setattr(engine, "run", held)

        def requests():
            yield request
            release.wait(30)  # the client keeps the stream open, sending nothing more

        call = client.targets[0].stub.ScoreStream(requests(), timeout=1.0 if how == "deadline" else 60)
        try:
            if where == "in the engine":
                assert entered.wait(30), "the batch never reached the engine"
            else:
                assert len(next(call).samples) == 2  # scored; the server waits for the next message
            if how == "cancel":
                call.cancel()
            with pytest.raises(grpc.RpcError) as err:
                bounded(lambda: list(call), 30, "the call to end")
        finally:
            release.set()
    want = grpc.StatusCode.DEADLINE_EXCEEDED if how == "deadline" else grpc.StatusCode.CANCELLED
    assert err.value.code() == want
    wait_for(lambda: requests_ended(server, "ScoreStream"), what="the server counting the call")
    assert requests_ended(server, "ScoreStream") == {want.name: 1.0}


# -- ScoreStream with the CAM --------------------------------------------------------------------
def test_score_stream_with_the_cam_computes_the_criteria_once_a_batch(world, server, monkeypatch):
    _, pool, m1, _ = world
    d = pool.read(0, 40)
    ids = [f"s{i:03d}" for i in range(40)]
    calls = []
    real = acquisition.criteria

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    # Every module of xgal that holds the function, whichever way a path reaches it.
    for module in list(sys.modules.values()):
        in_xgal = getattr(module, "__name__", "").startswith(xgal.__name__)
        if in_xgal and getattr(module, "criteria", None) is real:
            monkeypatch.setattr(module, "criteria", counted)
    with ScorerClient(server.address, timeout=60) as client:
        client.publish_model(m1, "demo")
        plain, _ = client.score_arrays(d["images"], d["rois"], ids, model="demo", batch_size=16)
        assert calls == [16, 16, 8]
        calls.clear()
        ranked, cams = client.score_arrays(
            d["images"], d["rois"], ids, model="demo", batch_size=16, want_cam=True
        )
    assert calls == [16, 16, 8]  # once a batch, the CAM asked for or not
    # The same answer: the rows of the plain call, and the engine's own maps.
    assert ranked.ids.tolist() == plain.ids.tolist() == ids
    np.testing.assert_array_equal(ranked.score, plain.score)
    np.testing.assert_array_equal(ranked.u, plain.u)
    np.testing.assert_array_equal(ranked.m, plain.m)
    direct = OnnxRuntimeEngine(m1).run(d["images"], d["rois"], want_cam=True)
    np.testing.assert_allclose(cams, direct.cam, rtol=0, atol=1e-6)

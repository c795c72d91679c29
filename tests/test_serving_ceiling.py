"""The serving path's ceiling (xgal bench --ceiling): the null scoring graph is a real scoring
graph that the scorer serves unchanged (engine, self-check, pipeline, gRPC); the dynamic
batcher hands a lone request's pixels to the engine without copying them, and runs a full batch
in its caller's thread, one engine call at a time, admitted as a queued one."""

import threading
import time
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from helpers import wait_for

from xgal.bench.null_graph import CLASS_NAMES, null_scoring_graph, write_null_graph
from xgal.bench.pools import random_pool
from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import graph_sha256, read_metadata
from xgal.scorer.batcher import BatchedEngine, DynamicBatcher, QueueFullError
from xgal.scorer.engines.base import BatchScores
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig


def test_null_graph_is_served_unchanged_and_ranks_a_pool(tmp_path):
    (tmp_path / "data").mkdir()
    pool = random_pool(tmp_path / "data" / "pool", 120, (3, 32, 32), shard_size=50)
    path = write_null_graph(tmp_path / "null.onnx", (3, 32, 32))
    info = read_metadata(onnx.load(path))
    assert (info.arch, info.input_shape, info.class_names) == ("null", (3, 32, 32), CLASS_NAMES)
    assert info.graph_sha256 == graph_sha256(onnx.load(path))
    engine = OnnxRuntimeEngine(path, intra_op_threads=1)
    engine.self_check()  # what publishing and loading check: finite outputs, exact roi_area
    data = pool.read(0, pool.count)
    out = engine.run(data["images"], data["rois"], np.zeros(pool.count, np.int64), want_cam=True)
    # What the module docstring says it computes: channel 0 sampled every 32 // 7 = 4th row
    # and column (7 x 7) as the map, its mean as the "dice", two logits from it, and the ROI's
    # exact pixel count.
    sample = data["images"][:, 0, :28:4, :28:4].astype(np.float32) / 255
    np.testing.assert_allclose(out.cam, sample, atol=1e-6)
    mean = sample.mean(axis=(1, 2))
    np.testing.assert_allclose(out.dice, mean, atol=1e-6)
    logits = np.stack([4 * mean - 2, 2 - 4 * mean], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.probs, probs, atol=1e-6)
    np.testing.assert_allclose(out.entropy, -(probs * np.log(probs)).sum(axis=1), atol=1e-6)
    np.testing.assert_array_equal(out.roi_area, data["rois"].sum(axis=(1, 2)))

    config = AcquisitionConfig()
    want = score_pool(engine, pool, config, 10, batch_size=16)
    assert len(want.top.ids) == 10 and want.scored == pool.count and want.with_roi == pool.count
    # A diversity step runs too (the graph has an embedding).
    spread = score_pool(engine, pool, AcquisitionConfig(diversity="spread"), 10, batch_size=16)
    assert len(set(spread.top.ids)) == 10
    server = RunningServer(
        ServerConfig(data_root=tmp_path / "data", model_repo=tmp_path / "repo", port=0, max_batch=16)
    )
    try:
        with ScorerClient(server.address) as client:
            client.publish_model(path, "null")  # the repository's self-check, as for any graph
            got = client.score_pool("pool", model="null", top_k=10, progress=False)
    finally:
        server.stop(grace=2)
    assert list(got.top.ids) == list(want.top.ids)
    np.testing.assert_allclose(got.top.score, want.top.score, atol=1e-6)


def test_null_graph_takes_uint16_pixels_and_small_images():
    model = null_scoring_graph((1, 5, 9), pixel_dtype="uint16")
    engine = OnnxRuntimeEngine(model.SerializeToString(), intra_op_threads=1)
    engine.self_check()
    assert engine.info.cam_shape == (5, 7)
    with pytest.raises(ValueError, match="pixel_dtype"):
        null_scoring_graph((1, 8, 8), pixel_dtype="float32")


class Recording:
    """An engine that records the arrays it is handed and scores nothing."""

    name = "recording"
    info = SimpleNamespace(has_learned_roi=False)

    def __init__(self):
        self.calls = []

    def run(self, image, roi, *args, **kwargs):
        self.calls.append((image, roi))
        n = len(image)
        zeros = np.zeros(n, np.float32)
        return BatchScores(np.full((n, 2), 0.5, np.float32), zeros, zeros, zeros, None, zeros)


def test_batcher_hands_a_lone_request_over_uncopied():
    engine = Recording()
    batcher = DynamicBatcher(engine, max_batch=8, max_delay_ms=0)
    image, roi = np.ones((8, 1, 4, 4), np.uint8), np.zeros((8, 4, 4), np.uint8)
    assert len(batcher.submit(image, roi).result(timeout=10)) == 8
    batcher.close()
    assert engine.calls[0][0] is image and engine.calls[0][1] is roi
    # Requests that share a call are still joined into one batch.
    engine = Recording()
    batcher = DynamicBatcher(engine, max_batch=8, max_delay_ms=2000)
    futures = [batcher.submit(image[i : i + 4], roi[i : i + 4]) for i in (0, 4)]
    assert [len(f.result(timeout=10)) for f in futures] == [4, 4]
    batcher.close()
    assert len(engine.calls) == 1 and engine.calls[0][0].shape == (8, 1, 4, 4)


class Held(Recording):
    """Records which thread ran each call and how many ran at once; holds calls until released."""

    def __init__(self):
        super().__init__()
        self.info = OnnxRuntimeEngine(
            null_scoring_graph((1, 4, 4)).SerializeToString(), intra_op_threads=1
        ).info
        self.threads, self.inside, self.most, self.delay = [], 0, 0, 0.0
        self.entered, self.release = threading.Semaphore(0), threading.Event()
        self._lock = threading.Lock()

    def run(self, image, roi, *args, **kwargs):
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.threads.append(threading.current_thread().name)
        self.entered.release()
        self.release.wait(30)
        if len(image) == 8:
            time.sleep(self.delay)
        with self._lock:
            self.inside -= 1
        return super().run(image, roi)


def test_a_full_batch_runs_in_its_callers_thread_in_turn_and_admitted_as_queued():
    engine, seen = Held(), []
    batcher = DynamicBatcher(
        engine, max_batch=8, max_delay_ms=0, max_queue=1, observe=lambda *a: seen.append(a)
    )
    batched = BatchedEngine(batcher)
    image, roi = np.ones((8, 1, 4, 4), np.uint8), np.zeros((8, 4, 4), np.uint8)
    out = []
    small = batcher.submit(image[:4], roi[:4])  # a part batch: the batcher's thread runs it
    assert engine.entered.acquire(timeout=10)
    full = [
        threading.Thread(target=lambda: out.append(batched.run(image, roi)), name=f"caller-{i}")
        for i in (0, 1)
    ]
    full[0].start()
    wait_for(lambda: batcher._full_waiting == 1, 10, "the full batch to wait for the engine")
    assert engine.inside == 1  # it waits: one engine call at a time
    with pytest.raises(QueueFullError, match="queue is full"):  # max_queue 1: one waits, no second
        batched.run(image, roi)
    with pytest.raises(QueueFullError, match="queue is full"):  # nor a part batch beside it
        batcher.submit(image[:4], roi[:4])
    engine.release.set()
    full[0].join(10)
    full[1].start()
    full[1].join(10)
    assert len(small.result(timeout=10)) == 4 and [len(o) for o in out] == [8, 8]
    assert engine.threads == ["xgal-batcher", "caller-0", "caller-1"] and engine.most == 1
    assert [n for n, _, _ in seen] == [4, 8, 8]
    batcher.close()
    with pytest.raises(QueueFullError, match="shutting down"):
        batched.run(image, roi)


def test_the_ceiling_profile_runs_on_a_small_pool(tmp_path):
    """scripts/ceiling_profile.py (where docs/benchmarks.md's ceiling figures come from) runs
    against today's pool reader, batcher and loader: every variant timed, both profiles made."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    pool = random_pool(tmp_path / "pool", 96, (3, 32, 32), shard_size=40)
    script = Path(__file__).parents[1] / "scripts" / "ceiling_profile.py"
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, str(script), str(pool.path), "--batch", "16", "--repeats", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["in_turn"]) == {
        "numpy_copy",
        "in_process",
        "in_process_batcher",
        "in_process_batcher_queued",
        "in_process_batcher_queued_copying",
    }
    assert all(v["images_per_s"] > 0 for v in report["in_turn"].values())
    assert "score_pool" in report["profile_in_process"] and "Pool.read" in report["profile_reader_alone"]
    assert report["threads"]["reader_pool_read_wall_us_per_image"] > 0


def test_close_returns_once_the_full_batches_admitted_before_have_run():
    engine = Held()
    batcher = DynamicBatcher(engine, max_batch=8, max_delay_ms=0, max_queue=4)
    image, roi = np.ones((8, 1, 4, 4), np.uint8), np.zeros((8, 4, 4), np.uint8)
    part = batcher.submit(image[:4], roi[:4])
    assert engine.entered.acquire(timeout=10)
    out, closed, seen_at_close = [], threading.Event(), []

    def slow_full():  # takes a while in the engine: close must wait for it, not return meanwhile
        out.append(batcher.run_full(image, roi))

    engine.delay = 0.5
    full = threading.Thread(target=slow_full, name="caller")
    full.start()
    wait_for(lambda: batcher._full_waiting == 1, 10, "the full batch to wait for the engine")
    closer = threading.Thread(target=lambda: (batcher.close(), seen_at_close.append(len(out)), closed.set()))
    closer.start()
    assert not closed.wait(0.5)  # the part batch is held, the full batch still to run
    engine.release.set()
    assert closed.wait(20) and len(part.result(timeout=10)) == 4
    assert seen_at_close == [1] and len(out[0]) == 8  # it ran before close returned
    full.join(10)
    closer.join(10)

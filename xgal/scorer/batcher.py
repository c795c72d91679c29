"""Dynamic batching: requests' batches share engine calls, up to `max_batch` images or
`max_delay_ms` of waiting, like Triton's dynamic batcher. A batch that is full already (a
ScorePool's) shares a call with nothing: it runs in its caller's thread (`run_full`), in turn
with the batcher's calls, sparing two thread hand-overs a batch."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from xgal.scorer.engines.base import BatchScores, Engine, no_learned_roi


class QueueFullError(RuntimeError):
    """More images are waiting than the server accepts; the client should retry later."""


_SHUTTING_DOWN = "the scorer is shutting down this model's batcher; retry on another replica"


def _queue_full(size: int) -> QueueFullError:
    return QueueFullError(f"the scoring queue is full ({size} batches waiting); retry later")


@dataclass
class _Item:
    image: np.ndarray
    roi: np.ndarray
    future: Future[BatchScores]
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 64,
        max_delay_ms: float = 5.0,
        max_queue: int = 64,
        observe: Callable[[int, float, float], None] | None = None,
    ) -> None:
        """`observe(batch_size, queue_seconds, compute_seconds)` is called after each call."""
        self.engine = engine
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_queue)
        self._observe = observe
        self._closing = threading.Condition()  # guards _closed and the full-batch counts
        self._closed = False
        self._engine_lock = threading.Lock()  # one engine call at a time, batched or full
        self._full_waiting = 0  # full batches waiting for the engine (`run_full`)
        self._full_admitted = 0  # full batches admitted and not yet done (`close` waits for them)
        self._thread = threading.Thread(target=self._loop, name="xgal-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, roi: np.ndarray) -> Future[BatchScores]:
        item = _Item(image, roi, Future())
        with self._closing:
            if self._closed:
                # Queued behind the end marker it would never run, and its caller wait forever.
                raise QueueFullError(_SHUTTING_DOWN)
            if self._full_waiting + self._queue.qsize() >= self._queue.maxsize:
                raise _queue_full(self._queue.maxsize)
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                raise _queue_full(self._queue.maxsize) from None
        return item.future

    def run_full(self, image: np.ndarray, roi: np.ndarray) -> BatchScores:
        """Score a batch of `max_batch` images or more in the caller's thread, in turn with the
        batcher's calls. Admission is the queue's: full batches waiting count against
        `max_queue` with the queued ones (QueueFullError past it, and once closing)."""
        queued = time.perf_counter()
        with self._closing:
            if self._closed:
                raise QueueFullError(_SHUTTING_DOWN)
            if self._full_waiting + self._queue.qsize() >= self._queue.maxsize:
                raise _queue_full(self._queue.maxsize)
            self._full_waiting += 1
            self._full_admitted += 1
        try:
            with self._engine_lock:
                with self._closing:
                    self._full_waiting -= 1  # in the engine now, as a queued batch that left the queue
                start = time.perf_counter()
                out = self._engine_run(image, roi)
                done = time.perf_counter()
        finally:
            with self._closing:
                self._full_admitted -= 1
                self._closing.notify_all()
        if self._observe is not None:
            self._observe(len(image), start - queued, done - start)
        return out

    def _engine_run(self, image: np.ndarray, roi: np.ndarray) -> BatchScores:
        # A graph's learned ROI is two floats a sample that it computes anyway: always fetched,
        # so plain calls and --roi learned ones share batches.
        if self.engine.info.has_learned_roi:
            return self.engine.run(image, roi, want_learned=True)
        return self.engine.run(image, roi)

    def close(self) -> None:
        """Run what was submitted before, then stop; later submits raise QueueFullError. Returns
        once every full batch admitted before has run too (the engine is then idle)."""
        with self._closing:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)
        with self._closing:
            self._closing.wait_for(lambda: self._full_admitted == 0, timeout=60)

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        items, n = [first], len(first.image)
        deadline = first.queued_at + self.max_delay
        while n < self.max_batch:
            timeout = deadline - time.perf_counter()
            try:
                nxt = self._queue.get(timeout=max(timeout, 0)) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return items, True
            if n + len(nxt.image) > self.max_batch:
                # Does not fit: run what we have, then start the next call with it.
                self._carry = nxt
                break
            items.append(nxt)
            n += len(nxt.image)
        return items, False

    def _loop(self) -> None:
        self._carry: _Item | None = None
        stop = False
        while not stop:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                return
            items, stop = self._gather(first)
            live = [it for it in items if it.future.set_running_or_notify_cancel()]
            if live:
                self._serve(live)

    def _serve(self, live: list[_Item]) -> None:
        """One engine call for `live`. Whatever fails on the way (the engine, splitting its rows,
        the observer) is handed to every waiter of the batch: escaping, it would end the thread
        and leave every later waiter blocked for good."""
        try:
            with self._engine_lock:
                start = time.perf_counter()
                out = self._engine_run(*_joined(live))
                done = time.perf_counter()
            results, lo = [], 0
            for it in live:
                hi = lo + len(it.image)
                results.append(out.rows(lo, hi))
                lo = hi
            if self._observe is not None:
                self._observe(lo, max(start - it.queued_at for it in live), done - start)
        except BaseException as exc:  # every waiter learns why its batch failed
            for it in live:
                it.future.set_exception(exc)
            return
        for it, rows in zip(live, results, strict=True):
            it.future.set_result(rows)


def _joined(items: list[_Item]) -> tuple[np.ndarray, np.ndarray]:
    """The items' pixels and ROIs as one batch. One item (a ScorePool batch of `max_batch`
    images, the usual case) is passed as it is: np.concatenate copies even a single array, and
    that copy of every batch was a large share of the serving path's own cost (the ceiling rows
    of docs/benchmarks.md)."""
    if len(items) == 1:
        return items[0].image, items[0].roi
    return np.concatenate([it.image for it in items]), np.concatenate([it.roi for it in items])


class BatchedEngine(Engine):
    """An engine whose plain calls go through a shared `DynamicBatcher`.

    Calls that need per-sample targets, the CAM, the embedding or the views go straight to the
    engine (they are rare and cannot share a call with plain ones)."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher
        self.name = f"batched-{batcher.engine.name}"
        self.info = batcher.engine.info

    def run(
        self,
        image: np.ndarray,
        roi: np.ndarray,
        target: np.ndarray | None = None,
        *,
        want_cam: bool = False,
        want_embedding: bool = False,
        want_views: bool = False,
        want_learned: bool = False,
        want_roi_map: bool = False,
    ) -> BatchScores:
        if target is not None or want_cam or want_embedding or want_views or want_roi_map:
            return self.batcher.engine.run(
                image,
                roi,
                target,
                want_cam=want_cam,
                want_embedding=want_embedding,
                want_views=want_views,
                want_learned=want_learned,
                want_roi_map=want_roi_map,
            )
        if want_learned and not self.info.has_learned_roi:
            raise no_learned_roi(self.batcher.engine.name)
        self.check_batch(image, roi, None)
        if len(image) >= self.batcher.max_batch:
            return self.batcher.run_full(image, roi)
        return self.batcher.submit(image, roi).result()

"""Scoring a pool's shards on several replicas, with retries and failover."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from xgal.client.transport import RetryPolicy, ScorerError, Target, error, retryable
from xgal.core.wire import join_score_rows
from xgal.v1 import scorer_pb2 as pb


class Replicas(Protocol):
    """What a run needs of the client: its replicas, its retry policy and call settings."""

    targets: list[Target]
    retry: RetryPolicy
    metadata: Sequence[tuple[str, str]]
    timeout: float | None

    def refresh_targets(self) -> list[Target]: ...


class ShardRun:
    """One ScorePool over the client's replicas: a worker per replica takes shards from a
    queue. A shard that meets a retryable code goes back to the queue and its replica sits out
    a back-off (then it is used again); after the policy's attempts on one shard, on any
    other code, or once every replica is given up on, the run stops with an error that names
    every shard not scored, as [start, stop). A `report` (the progress callback) that raises
    stops the run too, and the run raises that exception. However the run stops, every call
    still in flight is cancelled on its replica and every worker has ended before `run`
    returns or raises."""

    def __init__(
        self,
        client: Replicas,
        spans: Sequence[tuple[int, int]],
        request: Callable[[int, int], pb.ScorePoolRequest],
        report: Callable[[int | None], None],
    ) -> None:
        self.client, self.request, self.report = client, request, report
        self.spans = list(spans)
        self.todo: queue.Queue[tuple[int, int]] = queue.Queue()
        for span in spans:
            self.todo.put(span)
        self.shards = len(spans)
        self.tries: dict[int, int] = {}
        self.results: dict[int, pb.ScoreResult] = {}
        self.done: dict[int, int] = {}
        self.error: BaseException | None = None  # what stopped the run; `run` raises it
        self.calls: set[grpc.Future] = set()  # ScorePool calls in flight, cancelled if the run stops
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.out: set[str] = set()  # replicas given up on in this run
        self.started: set[str] = set()  # replicas with a worker in this run
        self.threads: list[threading.Thread] = []

    def run(self) -> dict[int, pb.ScoreResult]:
        with self.lock:  # a worker that gives up at once may start others (_out)
            for t in self.client.targets:
                if t.address not in self.started:
                    self._start(t)
        while True:  # workers started later (a replica that appeared) join the list
            with self.lock:
                alive = [th for th in self.threads if th.is_alive()]
            if not alive:
                break
            alive[0].join()
        if self.error is not None:
            raise self.error
        return self.results

    def _start(self, t: Target) -> None:
        th = threading.Thread(target=self._worker, args=(t,), name=f"xgal-shards-{t.address}", daemon=True)
        self.started.add(t.address)
        self.threads.append(th)
        th.start()

    def _worker(self, t: Target) -> None:
        try:
            self._take_shards(t)
        except BaseException as exc:  # the progress callback raised (the way to stop a run), or a bug
            with self.lock:
                self._halt(exc)

    def _take_shards(self, t: Target) -> None:
        probes = 0  # readiness checks of this replica in this run that found it down
        while not self.finished.wait(t.wait_s()):  # a failed replica sits out its back-off
            if t.failures and not self._ready(t, self.client.retry.delay(probes + 1)):
                # Down before (in this run or an earlier one) and not back yet: take no shard,
                # so a dead replica spends no shard's tries; give up on it after `attempts`.
                probes += 1
                t.failed(self.client.retry)
                if probes >= self.client.retry.attempts:
                    self._out(t)
                    return
                continue
            try:
                start, stop = self.todo.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                self._score(t, start, stop)
            except grpc.RpcError as err:
                self._failed(t, start, stop, err)
            else:
                t.succeeded()

    def _ready(self, t: Target, timeout: float) -> bool:
        """Whether the replica's channel connects within `timeout` (cut short when the run ends)."""
        ready = grpc.channel_ready_future(t.channel)
        deadline = time.monotonic() + timeout
        try:
            while not self.finished.is_set():
                try:
                    ready.result(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                    return True
                except grpc.FutureTimeoutError:
                    if time.monotonic() >= deadline:
                        return False
            return False
        finally:
            ready.cancel()

    def _out(self, t: Target) -> None:
        try:
            # A name target may list other replicas by now (a replaced pod has a new address).
            current = self.client.refresh_targets()
        except ScorerError:
            current = self.client.targets
        with self.lock:
            self.out.add(t.address)
            for fresh in current:
                if fresh.address not in self.started and not self.finished.is_set():
                    self._start(fresh)
            if all(x.address in self.out for x in current):
                self._halt(
                    ScorerError(
                        f"no scorer could be reached ({', '.join(sorted(self.out))} each tried "
                        f"{self.client.retry.attempts} times); {self._unscored()}",
                        grpc.StatusCode.UNAVAILABLE,
                    )
                )

    def _halt(self, exc: BaseException) -> None:
        """Stop the run with `exc` (the first one wins; called holding the lock): no shard is
        taken any more, and every call in flight is cancelled, so that its replica stops
        scoring now and its worker, woken with CANCELLED, ends."""
        if self.error is not None:
            return
        self.error = exc
        self.finished.set()
        for call in self.calls:
            call.cancel()

    def _unscored(self) -> str:
        """Which shards have no result, as `[start, stop)` (called holding the lock). Taken from
        the results, not the queue: a shard in flight elsewhere when the run stops is not
        scored either, and the caller needs all of them to score the rest again."""
        left = [f"[{a}, {b})" for a, b in self.spans if a not in self.results]
        return f"{len(left)} of {self.shards} shards not scored: {', '.join(left)}"

    def _score(self, t: Target, start: int, stop: int) -> None:
        call = t.stub.ScorePool(
            self.request(start, stop), metadata=self.client.metadata, timeout=self.client.timeout
        )
        with self.lock:
            if self.error is not None:  # the run stopped meanwhile
                call.cancel()
                return
            self.calls.add(call)
        rows: list[pb.ScoreRows] = []  # a large result's rows come first, in parts
        try:
            for event in call:
                if event.HasField("rows"):
                    rows.append(event.rows)
                    continue
                with self.lock:
                    if self.error is not None:  # the run stopped: _halt cancelled this call
                        return
                    if event.HasField("progress"):
                        self.done[start] = event.progress.done
                    else:
                        self.results[start] = join_score_rows(rows, event.result)
                        self.done[start] = stop - start
                        if len(self.results) == self.shards:
                            self.finished.set()
                    self.report(sum(self.done.values()))
        finally:
            with self.lock:
                self.calls.discard(call)
            call.cancel()  # a no-op once the call ended; cancels it if the callback raised

    def _failed(self, t: Target, start: int, stop: int, err: grpc.RpcError) -> None:
        policy = self.client.retry
        with self.lock:
            if self.error is not None:
                return
            self.done.pop(start, None)
            tries = self.tries[start] = self.tries.get(start, 0) + 1
            if retryable(err) and tries < policy.attempts:
                t.failed(policy)
                self.todo.put((start, stop))
                return
            suffix = f" (shard [{start}, {stop}), try {tries} of {policy.attempts}); {self._unscored()}"
            self._halt(error(t, err, suffix))

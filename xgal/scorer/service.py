"""The `xgal.v1.Scorer` servicer: each RPC maps onto the repository and the pool pipeline.

Every RPC wears `status.rpc`, which maps exceptions to typed gRPC codes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from xgal.core.wire import (
    REPLY_MESSAGE_BYTES,
    acquisition_from_proto,
    model_info_to_proto,
    on_bad_sample_from_proto,
    score_pool_replies,
)
from xgal.pool.format import PoolFormatError
from xgal.scorer.admission import idle_bounded
from xgal.scorer.batcher import BatchedEngine, DynamicBatcher
from xgal.scorer.engines.base import Engine
from xgal.scorer.metrics import Metrics
from xgal.scorer.pipeline import score_pool
from xgal.scorer.pools import Pools
from xgal.scorer.repository import ModelNotFoundError, ModelRepository, StoredModel
from xgal.scorer.status import Cancelled, rpc
from xgal.scorer.stream import score_message
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

log = logging.getLogger("xgal.scorer")
SERVICE = "xgal.v1.Scorer"


@dataclass
class _Batching:
    """A loaded engine's batcher and how many requests use it now."""

    batcher: DynamicBatcher
    users: int = 0


def engine_device(engine: Engine) -> str:
    """What a loaded model runs on, as metrics and logs name it: the ONNX Runtime provider in
    use (its first), or the engine's own name."""
    providers = getattr(engine, "providers", None)
    return providers[0] if providers else engine.name


def model_info(stored: StoredModel, loaded: bool, providers: list[str] | None = None) -> pb.ModelInfo:
    """What ListModels, LoadModel and a result say of a stored version: the file's SHA-256,
    and from the graph's metadata its precision and its own graph SHA-256."""
    return model_info_to_proto(
        stored.name, stored.version, stored.sha256, stored.info, loaded=loaded, providers=providers or ()
    )


class ScorerService(scorer_pb2_grpc.ScorerServicer):
    def __init__(
        self,
        repository: ModelRepository,
        data_root: str | Path,
        *,
        metrics: Metrics,
        health_servicer: health.HealthServicer,
        max_batch: int = 64,
        max_delay_ms: float = 5.0,
        max_queue: int = 64,
        max_model_bytes: int = 1 << 30,
        progress_interval_s: float = 0.25,
        stream_idle_s: float = 60.0,
        reply_message_bytes: int = REPLY_MESSAGE_BYTES,
    ) -> None:
        self.repo = repository
        self.data_root = Path(data_root).resolve()
        self.metrics = metrics
        self.health = health_servicer
        self.max_batch, self.max_delay_ms, self.max_queue = max_batch, max_delay_ms, max_queue
        self.max_model_bytes = max_model_bytes
        self.progress_interval_s = progress_interval_s
        self.stream_idle_s = stream_idle_s
        self.reply_message_bytes = reply_message_bytes  # ScorePool's rows go in messages this large
        self._batchers: dict[int, _Batching] = {}
        self._lock = threading.Lock()
        self._health_lock = threading.Lock()  # one refresh_health at a time
        self.draining = threading.Event()
        self.pools = Pools(self.data_root)
        self.unloadable: set[str] = set()  # models whose stored versions failed to load at start
        self.refresh_health()

    # -- helpers ------------------------------------------------------------------------------
    def refresh_health(self) -> None:
        """Health and the loaded-models gauge from the repository's loaded versions. One refresh
        at a time, reading and writing as one: a refresh that read the repository before another
        cannot write its older view after it. Draining is final (`RunningServer.stop` puts the
        health servicer into graceful shutdown, which ignores later sets): a refresh that read
        the flag just before the drain began cannot bring SERVING back."""
        with self._health_lock:
            items = self.repo.loaded_items()
            keys = [key for key, _ in items]
            self.metrics.set_models_loaded(
                (name, str(version), engine_device(engine)) for (name, version), engine in items
            )
            draining = self.draining.is_set()
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if keys and not draining
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            self.health.set("", status)
            self.health.set(SERVICE, status)
            # Per model ("xgal.v1.Scorer/<name>"): SERVING while a version of it is loaded, so a
            # probe can tell one model that failed to load from a replica that is down.
            loaded_names = {name for name, _ in keys}
            for name in loaded_names | self.unloadable:
                self.health.set(
                    f"{SERVICE}/{name}",
                    health_pb2.HealthCheckResponse.SERVING
                    if name in loaded_names and not draining
                    else health_pb2.HealthCheckResponse.NOT_SERVING,
                )

    @contextmanager
    def _batched(self, engine: Engine) -> Iterator[BatchedEngine]:
        """The engine behind its shared batcher, for the length of one request. A batcher (its
        thread and the session it holds) lives while its version is loaded or in use."""
        with self._lock:
            entry = self._batchers.get(id(engine))
            if entry is None:
                entry = _Batching(
                    DynamicBatcher(
                        engine,
                        max_batch=self.max_batch,
                        max_delay_ms=self.max_delay_ms,
                        max_queue=self.max_queue,
                        observe=self.metrics.observe_batch,
                    )
                )
                self._batchers[id(engine)] = entry
            entry.users += 1
        try:
            yield BatchedEngine(entry.batcher)
        finally:
            with self._lock:
                entry.users -= 1
            self._release_unloaded()

    def _release_unloaded(self) -> None:
        """Close the batchers of versions no longer loaded, once no request uses them."""
        loaded = {id(engine) for engine in self.repo.loaded_engines()}
        with self._lock:
            idle = [k for k, e in self._batchers.items() if e.users == 0 and k not in loaded]
            released = [self._batchers.pop(k).batcher for k in idle]
        for batcher in released:
            batcher.close()
            batcher.engine.close()

    def _engine(self, ref: pb.ModelRef) -> tuple[pb.ModelInfo, Engine]:
        if not ref.name:
            raise ValueError("no model name given")
        stored, engine = self.repo.load(ref.name, ref.version)
        self.refresh_health()
        return model_info(stored, True, getattr(engine, "providers", None)), engine

    def close(self) -> None:
        with self._lock:
            for entry in self._batchers.values():
                entry.batcher.close()
            self._batchers.clear()

    # -- models -------------------------------------------------------------------------------
    @rpc
    def PublishModel(
        self, request_iterator: Iterator[pb.PublishModelRequest], context: grpc.ServicerContext
    ) -> pb.PublishModelResponse:  # noqa: N802
        request_iterator = idle_bounded(request_iterator, self.stream_idle_s, context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise ValueError("the first PublishModel message must carry the header")
        header = first.header
        if header.size_bytes > self.max_model_bytes:
            raise ValueError(
                f"model of {header.size_bytes} bytes exceeds the limit of {self.max_model_bytes}"
            )
        parts, received = [], 0
        for msg in request_iterator:
            if msg.HasField("header"):
                raise ValueError("only the first PublishModel message may carry a header")
            received += len(msg.chunk)
            if received > header.size_bytes:
                raise ValueError(f"received more than the announced {header.size_bytes} bytes")
            parts.append(msg.chunk)
        if received != header.size_bytes:
            raise ValueError(f"received {received} bytes, the header announced {header.size_bytes}")
        stored = self.repo.publish(header.name, b"".join(parts), header.sha256)
        loaded, providers = False, None
        if header.load:
            _, engine = self.repo.load(stored.name, stored.version)
            loaded, providers = True, getattr(engine, "providers", None)
            self.refresh_health()
        log.info("published %s version %d (%s)", stored.name, stored.version, stored.sha256[:12])
        return pb.PublishModelResponse(model=model_info(stored, loaded, providers))

    @rpc
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:  # noqa: N802
        names = [request.name] if request.name else self.repo.names()
        out = []
        loaded = {key: engine for key, engine in self.repo.loaded_items()}
        for name in names:
            for version in self.repo.versions(name):
                engine = loaded.get((name, version))
                providers = getattr(engine, "providers", None) if engine is not None else None
                out.append(model_info(self.repo.get(name, version), engine is not None, providers))
        if request.name and not out:
            raise ModelNotFoundError(f"no model named {request.name!r} in the repository")
        return pb.ListModelsResponse(models=out)

    @rpc
    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:  # noqa: N802
        info, _ = self._engine(request.model)
        return info

    @rpc
    def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.ServicerContext
    ) -> pb.UnloadModelResponse:  # noqa: N802
        self.repo.unload(request.model.name, request.model.version)
        self._release_unloaded()
        self.refresh_health()
        return pb.UnloadModelResponse()

    # -- pools ----------------------------------------------------------------------------------
    @rpc
    def DescribePool(
        self, request: pb.DescribePoolRequest, context: grpc.ServicerContext
    ) -> pb.PoolDescription:  # noqa: N802
        pool = self.pools.open(request.pool)
        return pb.PoolDescription(
            pool=request.pool,
            count=pool.count,
            image_shape=list(pool.image_shape),
            pixel_dtype=pool.pixel_dtype,
            class_names=pool.class_names,
            has_labels=pool.has_labels,
        )

    @rpc
    def ScorePool(
        self, request: pb.ScorePoolRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ScorePoolResponse]:  # noqa: N802
        if request.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {request.top_k}")
        config = acquisition_from_proto(request.acquisition)
        pool = self.pools.open(request.pool)
        self.pools.verify(pool, request.start, request.stop or pool.count)
        if request.top_k > pool.count:
            raise ValueError(f"top_k {request.top_k} is larger than the pool ({pool.count} samples)")
        info, engine = self._engine(request.model)
        stop = request.stop or pool.count
        if not request.start <= stop <= pool.count:
            raise ValueError(f"shard [{request.start}, {stop}) is outside the pool of {pool.count}")
        events: queue.Queue[Any] = queue.Queue()
        t0 = time.perf_counter()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if not context.is_active():
                raise Cancelled("the client cancelled or its deadline passed")
            now = time.perf_counter()
            if now - last[0] >= self.progress_interval_s or done == total:
                last[0] = now
                rate = done / (now - t0) if now > t0 else 0.0
                events.put(
                    pb.ScorePoolResponse(progress=pb.Progress(done=done, total=total, images_per_s=rate))
                )

        def work() -> None:
            try:
                with self._batched(engine) as batched:
                    result = score_pool(
                        batched,
                        pool,
                        config,
                        request.top_k,
                        exclude_ids=list(request.exclude_ids),
                        return_all=request.return_all,
                        batch_size=self.max_batch,
                        start=request.start,
                        stop=stop,
                        progress=progress,
                        on_bad_sample=on_bad_sample_from_proto(request.on_bad_sample),
                        # The client merges every shard's candidates, then chooses once.
                        candidates_only=True,
                    )
                events.put(result)
            except PoolFormatError as exc:  # say where in the pool, not where on the server's disks
                events.put(PoolFormatError(str(exc).replace(str(pool.path), request.pool)))
            except BaseException as exc:
                events.put(exc)

        worker = threading.Thread(target=work, name="xgal-score-pool", daemon=True)
        worker.start()
        while True:
            try:
                # Bounded, so that a call whose client went away is let go even while the work
                # thread is held up (in the batcher's queue, or in a long engine call).
                item = events.get(timeout=0.5)
            except queue.Empty:
                if not context.is_active():
                    raise Cancelled("the client cancelled or its deadline passed") from None
                continue
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, pb.ScorePoolResponse):
                yield item
                continue
            note = item.misalignment_note(config)
            if note:  # an operator reading the logs sees it too, not only the client
                log.warning("%s [%d, %d): %s", request.pool, request.start, stop, note)
            yield from score_pool_replies(item, info, self.reply_message_bytes)
            return

    @rpc
    def ScoreStream(
        self, request_iterator: Iterator[pb.ScoreStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreStreamResponse]:  # noqa: N802
        requests = idle_bounded(request_iterator, self.stream_idle_s, context)
        first = next(requests, None)
        if first is None:
            return
        _, raw = self._engine(first.model)
        config = acquisition_from_proto(first.acquisition)
        if not config.pointwise:
            raise ValueError("ScoreStream scores batch by batch: pool-level normalisation needs ScorePool")
        with self._batched(raw) as engine:
            req: pb.ScoreStreamRequest | None = first
            while req is not None:
                yield score_message(engine, req, config)
                req = next(requests, None)

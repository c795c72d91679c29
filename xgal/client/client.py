"""`ScorerClient`: publish models, score pools (sharded over replicas, with failover), score
arrays the server cannot read.

    with ScorerClient(["127.0.0.1:50051", "127.0.0.1:50052"]) as client:
        client.publish_model("round3.onnx", name="brats")
        result = client.score_pool("brats/train", model="brats", top_k=120, exclude_ids=labelled)
        next_ids = result.top.ids
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from xgal.scorer.acquisition import AcquisitionConfig, Criteria, combine
from xgal.scorer.ranking import Ranked, TopK, merge
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

CHUNK = 1 << 20
# Codes after which a shard is moved to another replica; any other code is the caller's error.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


class ScorerError(RuntimeError):
    """A scoring request failed; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PoolScores:
    top: Ranked
    all: Ranked | None
    scored: int
    excluded: int
    seconds: float
    model: pb.ModelInfo
    class_names: tuple[str, ...]


def to_proto(config: AcquisitionConfig) -> pb.Acquisition:
    """AcquisitionConfig -> message; enum values are named after the config's values
    ("least_confidence" -> UNCERTAINTY_LEAST_CONFIDENCE), so no table is kept by hand."""
    return pb.Acquisition(
        strategy=pb.Strategy.Value(f"STRATEGY_{config.strategy.value.upper()}"),
        lam=config.lam,
        uncertainty=pb.UncertaintyKind.Value(f"UNCERTAINTY_{config.uncertainty.value.upper()}"),
        entropy_over_log_k=config.entropy_over_log_k,
        missing_roi=pb.MissingRoiPolicy.Value(f"MISSING_ROI_{config.missing_roi.value.upper()}"),
        normalisation=pb.Normalisation.Value(f"NORMALISATION_{config.normalise.value.upper()}"),
        balance=pb.Balance.Value(f"BALANCE_{config.balance.value.upper()}"),
        seed=config.seed,
    )


def to_ranked(samples: Sequence[pb.ScoredSample], num_classes: int) -> Ranked:
    n = len(samples)
    if n == 0:
        return Ranked.empty(num_classes)
    return Ranked(
        ids=np.array([s.id for s in samples], dtype=str),
        u=np.array([s.uncertainty for s in samples]),
        m=np.array([s.misalignment for s in samples]),
        score=np.array([s.score for s in samples]),
        pred=np.array([s.predicted for s in samples], dtype=np.int64),
        probs=np.array([list(s.probs) for s in samples], dtype=np.float32).reshape(n, num_classes),
        group=np.array([s.group for s in samples], dtype=np.int64),
        has_roi=np.array([s.has_roi for s in samples], dtype=bool),
    )


class _Target:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None, options: list) -> None:
        self.address = address
        self.channel = (
            grpc.secure_channel(address, credentials, options)
            if credentials
            else grpc.insecure_channel(address, options)
        )
        self.stub = scorer_pb2_grpc.ScorerStub(self.channel)
        self.alive = True


class ScorerClient:
    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        token: str | None = None,
        tls: bytes | str | os.PathLike[str] | bool | None = None,
        max_message_mb: int = 64,
        timeout: float | None = None,
    ) -> None:
        """`tls`: True for the system's roots, or a PEM root certificate (bytes or path).
        `timeout`: deadline in seconds for each RPC (None = no deadline)."""
        addresses = [targets] if isinstance(targets, str) else list(targets)
        if not addresses:
            raise ValueError("give at least one target host:port")
        creds = None
        if tls:
            root = None if tls is True else (tls if isinstance(tls, bytes) else Path(tls).read_bytes())
            creds = grpc.ssl_channel_credentials(root_certificates=root)
        limit = max_message_mb * 1024 * 1024
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        self.targets = [_Target(a, creds, options) for a in addresses]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        for t in self.targets:
            t.channel.close()

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., object], request: object, **kw: object) -> object:
        try:
            return fn(request, metadata=self.metadata, timeout=self.timeout, **kw)
        except grpc.RpcError as err:
            raise ScorerError(f"{err.code().name}: {err.details()}", err.code()) from None

    # -- operations ---------------------------------------------------------------------------
    def health(self, service: str = "xgal.v1.Scorer", timeout: float = 5.0) -> dict[str, str]:
        """grpc.health.v1 status of every target: SERVING, NOT_SERVING (no model loaded, or
        draining), or UNREACHABLE with the reason. Needs grpcio-health-checking (the scorer
        extra), which the base client does not."""
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:
            raise ScorerError(
                "health checks need grpcio-health-checking: pip install 'xgal[scorer]'"
            ) from None
        out = {}
        for t in self.targets:
            stub = health_pb2_grpc.HealthStub(t.channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
                out[t.address] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                out[t.address] = f"UNREACHABLE ({err.code().name}: {err.details()})"
        return out

    # -- models -------------------------------------------------------------------------------
    def publish_model(
        self, model: str | os.PathLike[str] | bytes, name: str, *, load: bool = True
    ) -> pb.ModelInfo:
        """Upload a scoring graph to every target; returns the first target's model info."""
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        header = pb.PublishHeader(
            name=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), load=load
        )

        def messages() -> Iterator[pb.PublishModelRequest]:
            yield pb.PublishModelRequest(header=header)
            for i in range(0, len(data), CHUNK):
                yield pb.PublishModelRequest(chunk=data[i : i + CHUNK])

        infos = [self._call(t.stub.PublishModel, messages()).model for t in self.targets]  # type: ignore[attr-defined]
        return infos[0]

    def list_models(self, name: str = "") -> list[pb.ModelInfo]:
        return list(self._call(self.targets[0].stub.ListModels, pb.ListModelsRequest(name=name)).models)  # type: ignore[attr-defined]

    def load_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        infos = [
            self._call(t.stub.LoadModel, pb.LoadModelRequest(model=pb.ModelRef(name=name, version=version)))
            for t in self.targets
        ]
        return infos[0]  # type: ignore[return-value]

    def unload_model(self, name: str, version: int = 0) -> None:
        for t in self.targets:
            self._call(
                t.stub.UnloadModel, pb.UnloadModelRequest(model=pb.ModelRef(name=name, version=version))
            )

    def describe_pool(self, pool: str) -> pb.PoolDescription:
        last: ScorerError | None = None
        for t in self.targets:
            try:
                return self._call(t.stub.DescribePool, pb.DescribePoolRequest(pool=pool))  # type: ignore[return-value]
            except ScorerError as err:
                if err.code not in RETRYABLE:
                    raise
                last = err
        raise last or ScorerError("no target answered")

    # -- scoring ------------------------------------------------------------------------------
    def score_pool(
        self,
        pool: str,
        *,
        model: str,
        version: int = 0,
        top_k: int = 20,
        exclude_ids: Sequence[str] = (),
        return_all: bool = False,
        shards: int | None = None,
        progress: bool | Callable[[int, int], None] | None = None,
        **acquisition: object,
    ) -> PoolScores:
        """Rank a pool the scorers can read. Acquisition options are AcquisitionConfig's
        (strategy, lam, uncertainty, missing_roi, normalise, balance, seed, ...).

        With several targets the pool is split into `shards` (default 2 per target), scored
        in parallel, and a failed replica's shards move to the others. Pointwise scores merge
        exactly from the shards' top-k; a pool-level normalisation fetches every score and
        ranks here."""
        config = AcquisitionConfig(**acquisition)  # type: ignore[arg-type]
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        desc = self.describe_pool(pool)
        k_classes = None
        n_shards = max(1, shards or (1 if len(self.targets) == 1 else 2 * len(self.targets)))
        bounds = np.linspace(0, desc.count, n_shards + 1).astype(int)
        todo: queue.Queue[tuple[int, int]] = queue.Queue()
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if b > a or desc.count == 0:
                todo.put((int(a), int(b)))
        need_all = return_all or not config.pointwise
        results: dict[int, pb.ScoreResult] = {}
        done_by_shard: dict[int, int] = {}
        errors: list[ScorerError] = []
        lock = threading.Lock()
        report = self._progress(progress, desc.count)

        def worker(t: _Target) -> None:
            while t.alive and not errors:
                try:
                    start, stop = todo.get_nowait()
                except queue.Empty:
                    return
                request = pb.ScorePoolRequest(
                    pool=pool,
                    model=pb.ModelRef(name=model, version=version),
                    acquisition=to_proto(config),
                    top_k=top_k,
                    exclude_ids=list(exclude_ids),
                    start=start,
                    stop=stop or desc.count,
                    return_all=need_all,
                )
                try:
                    for event in t.stub.ScorePool(request, metadata=self.metadata, timeout=self.timeout):
                        if event.HasField("progress"):
                            with lock:
                                done_by_shard[start] = event.progress.done
                                report(sum(done_by_shard.values()))
                        else:
                            with lock:
                                results[start] = event.result
                                done_by_shard[start] = stop - start
                except grpc.RpcError as err:
                    with lock:
                        done_by_shard.pop(start, None)
                    if err.code() in RETRYABLE and len(self.targets) > 1:
                        t.alive = False  # this replica is out; another takes the shard
                        todo.put((start, stop))
                        return
                    errors.append(ScorerError(f"{t.address}: {err.code().name}: {err.details()}", err.code()))
                    return

        while True:
            threads = [
                threading.Thread(target=worker, args=(t,), daemon=True) for t in self.targets if t.alive
            ]
            if not threads:
                break
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors or todo.empty():
                break
        report(None)
        if errors:
            raise errors[0]
        if not todo.empty():
            raise ScorerError("every scorer failed; shards left unscored", grpc.StatusCode.UNAVAILABLE)

        parts = [results[s] for s in sorted(results)]
        info = parts[0].model
        k_classes = len(info.class_names)
        tops = [to_ranked(p.top, k_classes) for p in parts]
        everything = Ranked.concat([to_ranked(p.all, k_classes) for p in parts]) if need_all else None
        if config.pointwise:
            best = merge(tops, top_k, k_classes, config.balance)
        else:
            assert everything is not None and everything.has_roi is not None
            everything.score = combine(
                Criteria(
                    everything.u, everything.m, everything.score, everything.has_roi, everything.has_roi
                ),
                everything.ids,
                config,
            )
            acc = TopK(top_k, k_classes, config.balance)
            acc.update(everything)
            best = acc.result()
        return PoolScores(
            top=best,
            all=everything if return_all else None,
            scored=sum(p.scored for p in parts),
            excluded=sum(p.excluded for p in parts),
            seconds=max(p.seconds for p in parts),
            model=info,
            class_names=tuple(info.class_names),
        )

    def score_arrays(
        self,
        images: np.ndarray,
        rois: np.ndarray,
        ids: Sequence[str] | None = None,
        *,
        model: str,
        version: int = 0,
        batch_size: int = 32,
        want_cam: bool = False,
        **acquisition: object,
    ) -> tuple[Ranked, np.ndarray | None]:
        """Score arrays held here (pool order, not ranked) over ScoreStream, on the first target.
        Returns the scores and, with `want_cam`, the CAMs [N, h, w]."""
        config = AcquisitionConfig(**acquisition)  # type: ignore[arg-type]
        if len(images) != len(rois):
            raise ValueError(f"{len(images)} images but {len(rois)} ROIs")
        ids = [str(i) for i in (ids if ids is not None else range(len(images)))]
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} IDs for {len(images)} images")
        proto_acq = to_proto(config)
        ref = pb.ModelRef(name=model, version=version)

        def requests() -> Iterator[pb.ScoreStreamRequest]:
            for lo in range(0, len(images), batch_size):
                hi = lo + batch_size
                yield pb.ScoreStreamRequest(
                    model=ref,
                    acquisition=proto_acq,
                    ids=ids[lo:hi],
                    images=np.ascontiguousarray(images[lo:hi])
                    .astype(images.dtype.newbyteorder("<"))
                    .tobytes(),
                    rois=np.ascontiguousarray(rois[lo:hi], dtype=np.uint8).tobytes(),
                    want_cam=want_cam,
                )

        samples: list[pb.ScoredSample] = []
        cams: list[np.ndarray] = []
        try:
            for resp in self.targets[0].stub.ScoreStream(
                requests(), metadata=self.metadata, timeout=self.timeout
            ):
                samples.extend(resp.samples)
                if want_cam:
                    cams.append(
                        np.frombuffer(resp.cams, dtype="<f4").reshape(len(resp.samples), *resp.cam_shape)
                    )
        except grpc.RpcError as err:
            raise ScorerError(f"{err.code().name}: {err.details()}", err.code()) from None
        k = len(samples[0].probs) if samples else 0
        return to_ranked(samples, k), (np.concatenate(cams) if want_cam and cams else None)

    @staticmethod
    def _progress(
        progress: bool | Callable[[int, int], None] | None, total: int
    ) -> Callable[[int | None], None]:
        if callable(progress):
            return lambda done: progress(done, total) if done is not None else None
        if progress is False or (progress is None and not sys.stderr.isatty()):
            return lambda done: None
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("scoring", total=total)
        bar.start()

        def update(done: int | None) -> None:
            if done is None:
                bar.stop()
            else:
                bar.update(task, completed=done)

        return update

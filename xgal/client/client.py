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
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from xgal.client.resolve import is_name, resolve, split
from xgal.client.shards import ShardRun
from xgal.client.transport import RetryPolicy, ScorerError, Target, error, retryable
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.ranking import Ranked, ScoreResult, from_shards
from xgal.core.samples import OnBadSample
from xgal.core.wire import acquisition_to_proto, on_bad_sample_to_proto, ranked_from_proto, skipped_from_proto
from xgal.v1 import scorer_pb2 as pb

CHUNK = 1 << 20


@dataclass
class PoolScores(ScoreResult):
    model: pb.ModelInfo = field(default_factory=pb.ModelInfo)


class ScorerClient:
    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        token: str | None = None,
        tls: bytes | str | os.PathLike[str] | bool | None = None,
        max_message_mb: float = 64,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`tls`: True for the system's roots, or a PEM root certificate (bytes or path).
        `timeout`: deadline in seconds for each RPC (None = no deadline). `retry`: how requests
        that meet an unavailable or overloaded replica are tried again (`RetryPolicy()`).
        `max_message_mb`: the largest message sent or taken (a reply past it fails at once with
        MessageTooLargeError; a scorer sends a result's rows in messages of its
        `--reply-message-kb`, 4 MiB unless told otherwise)."""
        addresses = [targets] if isinstance(targets, str) else list(targets)
        if not addresses:
            raise ValueError("give at least one target host:port (or dns:///name:port)")
        for spec in addresses:
            if is_name(spec):
                split(spec)  # a malformed name target fails here, not at the first call
        creds = None
        if tls:
            root = None if tls is True else (tls if isinstance(tls, bytes) else Path(tls).read_bytes())
            creds = grpc.ssl_channel_credentials(root_certificates=root)
        limit = int(max_message_mb * 1024 * 1024)
        self.retry = retry or RetryPolicy()
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # gRPC's own reconnect back-off grows to 120 s: a replica that restarts would sit
            # unused for minutes. Keep it within the retry policy's longest back-off.
            ("grpc.initial_reconnect_backoff_ms", max(50, int(self.retry.backoff_s * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(50, int(self.retry.backoff_s * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.retry.max_backoff_s * 1000))),
        ]
        self._specs, self._channel = addresses, (creds, options)
        self._lock = threading.Lock()
        self._retired: list[Target] = []
        self.targets = [Target(a, creds, options) for a in resolve(addresses)]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        for t in self.targets + self._retired:
            t.channel.close()

    def refresh_targets(self) -> list[Target]:
        """Resolve the `dns:///` targets again (xgal.client.resolve): replicas still listed keep
        their channel and back-off state, new ones are added, those gone are dropped (their
        channels closed with the client: a call may still be using one). Called at the start of
        each call and when a scoring run gives up on a replica; plain targets never change."""
        if not any(is_name(s) for s in self._specs):
            return self.targets
        addresses = resolve(self._specs)
        with self._lock:
            have = {t.address: t for t in self.targets}
            self._retired += [t for a, t in have.items() if a not in addresses]
            self.targets = [have.get(a) or Target(a, *self._channel) for a in addresses]
            return self.targets

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, targets: Sequence[Target], method: str, request: Callable[[], object]) -> object:
        """A unary call, tried on `targets` in turn (the first usable one first) until one
        answers, a non-retryable code comes back, or the retry policy's attempts are spent.
        `request()` makes the request anew for each try (a stream is consumed by a try)."""
        last: grpc.RpcError | None = None
        for attempt in range(self.retry.attempts):
            t = min(targets, key=lambda t: t.down_until)
            time.sleep(t.wait_s() if attempt else 0.0)
            try:
                reply = getattr(t.stub, method)(request(), metadata=self.metadata, timeout=self.timeout)
            except grpc.RpcError as err:
                if not retryable(err):
                    raise error(t, err) from None
                t.failed(self.retry)
                last = err
                continue
            t.succeeded()
            return reply
        assert last is not None
        raise error(None, last, f" after {self.retry.attempts} tries") from None

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
        for t in self.refresh_targets():
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
        """Upload a scoring graph to every target; returns the first target's model info.
        Publishing the same bytes again is a no-op on the server, so retries are safe."""
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        header = pb.PublishHeader(
            name=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), load=load
        )

        def messages() -> Iterator[pb.PublishModelRequest]:
            yield pb.PublishModelRequest(header=header)
            for i in range(0, len(data), CHUNK):
                yield pb.PublishModelRequest(chunk=data[i : i + CHUNK])

        infos = [self._call([t], "PublishModel", messages).model for t in self.refresh_targets()]  # type: ignore[attr-defined]
        return infos[0]

    def list_models(self, name: str = "") -> list[pb.ModelInfo]:
        reply = self._call(self.refresh_targets(), "ListModels", lambda: pb.ListModelsRequest(name=name))
        return list(reply.models)  # type: ignore[attr-defined]

    def load_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        request = pb.LoadModelRequest(model=pb.ModelRef(name=name, version=version))
        infos = [self._call([t], "LoadModel", lambda: request) for t in self.refresh_targets()]
        return infos[0]  # type: ignore[return-value]

    def unload_model(self, name: str, version: int = 0) -> None:
        request = pb.UnloadModelRequest(model=pb.ModelRef(name=name, version=version))
        for t in self.refresh_targets():
            self._call([t], "UnloadModel", lambda: request)

    def describe_pool(self, pool: str) -> pb.PoolDescription:
        return self._call(self.refresh_targets(), "DescribePool", lambda: pb.DescribePoolRequest(pool=pool))  # type: ignore[return-value]

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
        on_bad_sample: OnBadSample | str = OnBadSample.FAIL,
        **acquisition: object,
    ) -> PoolScores:
        """Rank a pool the scorers can read. Acquisition options are AcquisitionConfig's
        (strategy, lam, uncertainty, missing_roi, normalise, balance, seed, ...).
        `on_bad_sample`: "fail" (a sample with a bad ROI or NaN pixels fails the run, naming
        it) or "skip" (it is left out and listed in the result's `skipped`, in pool order).

        With several targets the pool is split into `shards` (default 2 per target), scored
        in parallel; a shard that meets an unavailable or overloaded replica is tried again on
        another (or the same, after a back-off) up to the retry policy's attempts. Pointwise
        scores merge exactly from the shards' top-k; a pool-level normalisation fetches every
        score and ranks here. A diversity step (`diversity="spread"` or `"typical"`) chooses
        here, once, among the merged candidates.

        `progress`: False, True (a bar on a terminal) or a callback `(done, total)`. A callback
        that raises stops the run: every replica's call in flight is cancelled and
        `score_pool` raises that exception."""
        config = AcquisitionConfig(**acquisition)  # type: ignore[arg-type]
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        desc = self.describe_pool(pool)
        n_shards = max(1, shards or (1 if len(self.targets) == 1 else 2 * len(self.targets)))
        bounds = np.linspace(0, desc.count, n_shards + 1).astype(int)
        spans = sorted({(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a})
        need_all = return_all or not config.pointwise
        proto_config = acquisition_to_proto(config)
        policy = on_bad_sample_to_proto(on_bad_sample)

        def request(start: int, stop: int) -> pb.ScorePoolRequest:
            return pb.ScorePoolRequest(
                pool=pool,
                model=pb.ModelRef(name=model, version=version),
                acquisition=proto_config,
                top_k=top_k,
                exclude_ids=list(exclude_ids),
                start=start,
                stop=stop,
                return_all=need_all,
                on_bad_sample=policy,
            )

        report = self._progress(progress, desc.count)
        try:
            results = ShardRun(self, spans or [(0, 0)], request, report).run()
        finally:
            report(None)
        parts = [results[s] for s in sorted(results)]
        info = parts[0].model
        served = {(p.model.sha256, p.model.version) for p in parts}
        if len({sha for sha, _ in served}) > 1:
            # Replicas whose repositories differ would merge rankings of different models.
            raise ScorerError(
                f"the replicas scored {model!r} with different models (version, SHA-256: "
                f"{sorted((v, sha[:12]) for sha, v in served)}); publish it to every replica, or name "
                "a version every replica has",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        k_classes = len(info.class_names)
        tops = [ranked_from_proto(p.top, k_classes) for p in parts]
        everything = Ranked.concat([ranked_from_proto(p.all, k_classes) for p in parts]) if need_all else None
        best = from_shards(tops, everything, top_k, k_classes, config)
        return PoolScores(
            top=best,
            all=everything if return_all else None,
            scored=sum(p.scored for p in parts),
            excluded=sum(p.excluded for p in parts),
            seconds=max(p.seconds for p in parts),
            class_names=tuple(info.class_names),
            # Shards in pool order, each in pool order: the pool's bad samples in pool order.
            skipped=[s for p in parts for s in skipped_from_proto(p.skipped)],
            with_roi=sum(p.with_roi for p in parts),
            model=info,
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
        """Score arrays held here over ScoreStream; returns the scores in the order given (not
        ranked; samples the missing-ROI policy excludes are left out) and, with `want_cam`, the
        CAMs [N, h, w]. A stream cut by an unavailable replica resumes, on another replica
        when there is one, from the first batch not answered."""
        config = AcquisitionConfig(**acquisition)  # type: ignore[arg-type]
        if len(images) != len(rois):
            raise ValueError(f"{len(images)} images but {len(rois)} ROIs")
        ids = [str(i) for i in (ids if ids is not None else range(len(images)))]
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} IDs for {len(images)} images")
        proto_acq = acquisition_to_proto(config)
        ref = pb.ModelRef(name=model, version=version)
        starts = range(0, len(images), batch_size)
        # Said in every message: the server refuses bytes whose type is not the model's (float
        # NaNs of the right length would otherwise be read as pixels).
        wire = images.dtype.newbyteorder("<")

        def requests(first: int) -> Iterator[pb.ScoreStreamRequest]:
            for lo in starts[first:]:
                hi = lo + batch_size
                yield pb.ScoreStreamRequest(
                    model=ref,
                    acquisition=proto_acq,
                    ids=ids[lo:hi],
                    images=np.ascontiguousarray(images[lo:hi]).astype(wire).tobytes(),
                    pixel_dtype=wire.name,
                    rois=np.ascontiguousarray(rois[lo:hi], dtype=np.uint8).tobytes(),
                    want_cam=want_cam,
                )

        self.refresh_targets()
        samples: list[pb.ScoredSample] = []
        cams: list[np.ndarray] = []
        answered = 0  # one response per request batch, in order
        for attempt in range(1, self.retry.attempts + 1):
            t = min(self.targets, key=lambda t: t.down_until)
            time.sleep(t.wait_s())
            try:
                for resp in t.stub.ScoreStream(
                    requests(answered), metadata=self.metadata, timeout=self.timeout
                ):
                    samples.extend(resp.samples)
                    if want_cam:
                        cams.append(
                            np.frombuffer(resp.cams, dtype="<f4").reshape(len(resp.samples), *resp.cam_shape)
                        )
                    answered += 1
            except grpc.RpcError as err:
                if not retryable(err) or attempt == self.retry.attempts:
                    raise error(t, err, f" (try {attempt} of {self.retry.attempts})") from None
                t.failed(self.retry)
                continue
            t.succeeded()
            break
        k = len(samples[0].probs) if samples else 0
        return ranked_from_proto(samples, k), (np.concatenate(cams) if want_cam and cams else None)

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

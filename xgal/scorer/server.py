"""Start a scorer: gRPC service, health, reflection, metrics, TLS and bearer token, drain on
SIGTERM.

    xgal serve --port 50051 --data-root /data/pools --model-repo /data/models --metrics-port 9100

Message size limits: requests up to `max_message_mb` (default 64 MiB) in both directions, so
that a ScoreStream batch of 64 images of 512x512x3 uint8 (48 MiB) fits; models are published in
chunks of 1 MiB and may be up to 1 GiB. A ScorePool reply that holds every row of a shard (0.8M
rows pass 64 MiB) goes in messages of at most `reply_message_bytes` (4 MiB; `--reply-message-kb`).
"""

from __future__ import annotations

import hmac
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xgal.core.errors import InvalidArgument, UserError
from xgal.core.wire import REPLY_MESSAGE_BYTES
from xgal.scorer.admission import Admission, AdmissionInterceptor
from xgal.scorer.engines.ort import OnnxRuntimeEngine, check_providers
from xgal.scorer.engines.providers import ProviderSettings
from xgal.scorer.metrics import Metrics
from xgal.scorer.parsing import ParseRequestsInterceptor
from xgal.scorer.repository import ModelRepository
from xgal.scorer.service import SERVICE, ScorerService
from xgal.v1 import scorer_pb2, scorer_pb2_grpc

log = logging.getLogger("xgal.scorer")


class AddressInUseError(UserError, OSError):
    """The gRPC address cannot be bound (in use, or not an address of this host)."""


UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
SIGNAL_POLL_S = 0.5  # how often the main thread wakes to run a signal handler another thread took


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>`; health and reflection stay open
    so orchestrators can probe the replica."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _allowed(self, metadata: Any) -> bool:
        sent = [v for k, v in (metadata or ()) if k == "authorization"]
        if len(sent) != 1:  # none, or several that would leave the choice to header order
            return False
        value = sent[0].encode() if isinstance(sent[0], str) else bytes(sent[0])
        return hmac.compare_digest(value, self._expected)  # constant time: no timing oracle

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if method.startswith(UNAUTHENTICATED_METHODS):
            return continuation(handler_call_details)
        if self._allowed(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        # Answer with the right streaming shape, else the client sees a protocol error.
        def deny(_req: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


@dataclass
class ServerConfig:
    data_root: Path
    model_repo: Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    max_batch: int = 64
    max_delay_ms: float = 5.0
    max_queue: int = 64
    workers: int = 8
    # Worker threads kept for health and control calls: scoring and uploads get the others.
    reserved_workers: int = 2
    # A ScoreStream or upload that sends nothing for this long is closed (it holds a worker).
    stream_idle_s: float = 60.0
    max_message_mb: int = 64
    # ScorePool's rows (every row, with return_all or a pool-level normalisation) are sent in
    # messages of at most this many bytes; at most max_message_mb, and within what clients take.
    reply_message_bytes: int = REPLY_MESSAGE_BYTES
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers, best first; () = all installed
    provider_settings: ProviderSettings = field(default_factory=ProviderSettings)
    # ONNX Runtime's threads spin-wait between runs: no gain for one model here, and 25% fewer
    # images/s when a replica scores two models at once (each one's spinning holds the cores).
    spinning: bool = False
    # ONNX Runtime intra-op threads per loaded model; 0 = one per core. Replicas that share a
    # host should split its cores between them rather than each take them all.
    intra_op_threads: int = 0


class RunningServer:
    """A started scorer. `stop(grace)` drains: new requests are refused, in-flight ones finish."""

    def __init__(self, config: ServerConfig) -> None:
        if not Path(config.data_root).is_dir():
            raise FileNotFoundError(f"data root {config.data_root} is not a folder")
        if config.token is not None and not config.token.strip():
            # An empty token file must not quietly turn authentication off.
            raise InvalidArgument("the bearer token is empty; put a token in the file or drop --token-file")
        check_providers(config.providers)
        if not 1024 <= config.reply_message_bytes <= config.max_message_mb * 1024 * 1024:
            raise InvalidArgument(
                f"the reply message size must be between 1 KiB and --max-message-mb "
                f"({config.max_message_mb} MiB); got {config.reply_message_bytes} bytes"
            )
        self.config = config
        self.metrics = Metrics()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        providers = list(config.providers) or None
        self.repo = ModelRepository(
            config.model_repo,
            engine_factory=lambda path: OnnxRuntimeEngine(
                path,
                providers=providers,
                intra_op_threads=config.intra_op_threads,
                spinning=config.spinning,
                settings=config.provider_settings,
            ),
        )
        served, self.load_problems = self.repo.load_latest_all()
        for stored in served:
            _, engine = self.repo.loaded(stored.name, stored.version)
            log.info(
                "serving %s version %d from the repository on %s",
                stored.name,
                stored.version,
                ", ".join(getattr(engine, "providers", [engine.name])),
            )
        for _, problem in self.load_problems:
            log.error("%s", problem)
        self.service = ScorerService(
            self.repo,
            config.data_root,
            metrics=self.metrics,
            health_servicer=self.health,
            max_batch=config.max_batch,
            max_delay_ms=config.max_delay_ms,
            max_queue=config.max_queue,
            stream_idle_s=config.stream_idle_s,
            reply_message_bytes=config.reply_message_bytes,
        )
        self.service.unloadable = {name for name, _ in self.load_problems} - {m.name for m in served}
        self.service.refresh_health()
        limit = config.max_message_mb * 1024 * 1024
        if not 0 <= config.reserved_workers < config.workers:
            raise InvalidArgument(
                f"--reserved-workers must leave at least one of the {config.workers} workers for "
                f"scoring; got {config.reserved_workers}"
            )
        self.admission = Admission(config.workers - config.reserved_workers, self.service.draining)
        # The token first: a caller without it learns nothing, not even that the replica is busy.
        interceptors: list[grpc.ServerInterceptor] = (
            [BearerTokenInterceptor(config.token)] if config.token else []
        )
        interceptors.append(AdmissionInterceptor(self.admission, self.metrics.count_refused))
        interceptors.append(ParseRequestsInterceptor(self.metrics.count_refused))  # innermost
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="xgal-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # gRPC lets a second server bind a port in use (SO_REUSEPORT): two replicas
                # started on one port would split its traffic without a word.
                ("grpc.so_reuseport", 0),
            ],
        )
        scorer_pb2_grpc.add_ScorerServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name,
            reflection.SERVICE_NAME,
            "grpc.health.v1.Health",
        )
        reflection.enable_server_reflection(names, self.server)
        address = f"{config.host}:{config.port}"
        if bool(config.tls_cert) != bool(config.tls_key):
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
        try:
            if config.tls_cert and config.tls_key:
                creds = grpc.ssl_server_credentials(
                    [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
                )
                self.port = self.server.add_secure_port(address, creds)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            self.service.close()
            raise AddressInUseError(f"could not bind {address}: is another process listening there?")
        self.metrics_port = (
            self.metrics.serve(config.metrics_port, config.host) if config.metrics_port is not None else None
        )
        self.server.start()
        self.address = f"{config.host}:{self.port}"
        log.info("xgal scorer on %s (metrics: %s)", self.address, self.metrics_port)

    def stop(self, grace: float | None = 30.0) -> None:
        """Drain, then stop. While calls in flight finish (up to `grace` seconds), the port stays
        open: health answers NOT_SERVING and new scoring calls UNAVAILABLE, so that balancers
        and clients move on with a reason instead of meeting a refused connection."""
        self.service.draining.set()
        # Every status NOT_SERVING, for good: the servicer ignores later sets, so a request's
        # refresh that read the flag before it was set cannot write SERVING back.
        self.health.enter_graceful_shutdown()
        self.service.refresh_health()
        t0 = time.monotonic()
        if not self.admission.wait_idle(grace):
            busy = self.admission.in_flight
            log.warning("drain: %d call(s) still running after %s s; cancelling them", busy, grace)
        left = None if grace is None else max(0.0, grace - (time.monotonic() - t0))
        self.server.stop(left).wait()
        self.service.close()
        self.metrics.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve_forever(config: ServerConfig, grace: float = 30.0) -> None:
    """Run until SIGTERM or SIGINT, then drain for up to `grace` seconds."""
    running = RunningServer(config)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: draining (up to %.0f s)", signum, grace)
        threading.Thread(target=lambda: (running.stop(grace), done.set()), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"xgal scorer listening on {running.address}"
        + (
            f", metrics on http://{config.host}:{running.metrics_port}/metrics"
            if running.metrics_port
            else ""
        ),
        flush=True,
    )
    # Woken every SIGNAL_POLL_S: the kernel may hand the signal to any thread that does not block
    # it (gRPC's, ONNX Runtime's), and Python then runs the handler only once the main thread
    # next runs Python code; blocked in an untimed wait it never would, and the replica would
    # never drain.
    while not done.wait(SIGNAL_POLL_S):
        pass


__all__ = ["SERVICE", "RunningServer", "ServerConfig", "serve_forever"]

"""Prometheus metrics of one scorer, in a registry of its own (several servers per process
in tests must not collide)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "xgal_requests", "RPCs by method and status code", ["method", "code"], registry=r
        )
        self.images = Counter("xgal_images_scored", "Images run through an engine", registry=r)
        self.batch_size = Histogram(
            "xgal_batch_size",
            "Images per engine call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_seconds = Histogram(
            "xgal_queue_seconds",
            "Longest wait of a batch in the dynamic batcher",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "xgal_compute_seconds", "Engine time per call", buckets=_TIME_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "xgal_long_calls_in_flight", "Scoring and upload calls holding a worker now", registry=r
        )
        self.models_loaded = Gauge(
            "xgal_model_loaded",
            "1 for each loaded model version, labelled with the execution provider it runs on",
            ["name", "version", "provider"],
            registry=r,
        )
        self._loaded_lock = threading.Lock()
        self._loaded: set[tuple[str, str, str]] = set()

    def set_models_loaded(self, loaded: Iterable[tuple[str, str, str]]) -> None:
        """Make the loaded-models gauge hold exactly `loaded` ((name, version, provider) labels).
        The new label sets are set before those that went away are removed, never cleared and
        refilled, so a scrape meanwhile never misses a model that is loaded."""
        new = set(loaded)
        with self._loaded_lock:
            for labels in new:
                self.models_loaded.labels(*labels).set(1)
            for labels in self._loaded - new:
                self.models_loaded.remove(*labels)
            self._loaded = new

    def observe_batch(self, size: int, queued: float, compute: float) -> None:
        self.images.inc(size)
        self.batch_size.observe(size)
        self.queue_seconds.observe(queued)
        self.compute_seconds.observe(compute)

    def count_refused(self, method: str, code: object) -> None:
        """A call turned away before it started (busy, or draining)."""
        self.requests.labels(method, getattr(code, "name", str(code))).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the bound port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()

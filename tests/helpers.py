"""Shared test helpers: small images, models with mixed predictions, CAM post-processing,
bounded waits on real conditions (instead of sleeps), scorer replicas as processes of their own,
a watch on the shards a replica scores, and the worlds (pools, scoring graphs, a server in this
process) that the service's and the fault modules share."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import pytest

    from xgal.pool.format import Pool
    from xgal.scorer.server import RunningServer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

T = TypeVar("T")


def run_xgal(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """The `xgal` command as a user runs it, in a process of its own (output wide enough that
    rich does not wrap the messages the tests look for)."""
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "xgal.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def spoil_rois(path: Path, bad: dict[int, int]) -> None:
    """Write each value of `bad` (row -> value) into one pixel of that row's ROI and re-sign the
    pool's manifest (checksum and ROI count): the files are intact, the samples are bad (a writer
    refuses such masks; an importer bug would not)."""
    import json

    from xgal.core.checksum import sha256_file
    from xgal.core.masks import roi_present

    manifest = json.loads((path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        f = path / shard["path"] / "rois.npy"
        rois = np.load(f)
        for i, value in bad.items():
            if shard["start"] <= i < shard["stop"]:
                rois[i - shard["start"], 1, 1] = value
        np.save(f, rois)
        shard["sha256"]["rois"] = sha256_file(f)
        shard["with_roi"] = int(roi_present(rois).sum())
    (path / "manifest.json").write_text(json.dumps(manifest))


def labelled_pool(path: Path, labels: np.ndarray | list[int], class_names: list[str]) -> Pool:
    """A pool of blank 8x8 scans `s000`, `s001`, ... with these labels and no ROIs."""
    from xgal.pool.format import Pool
    from xgal.pool.writer import PoolWriter

    n = len(labels)
    with PoolWriter(path, image_shape=(1, 8, 8), class_names=class_names, with_labels=True) as w:
        w.add(
            [f"s{i:03d}" for i in range(n)],
            np.zeros((n, 1, 8, 8), np.uint8),
            np.zeros((n, 8, 8), np.uint8),
            labels,
        )
    return Pool(path)


def blob_images(n: int, c: int, size: int, seed: int, dtype: str = "uint8") -> np.ndarray:
    """Noise plus one bright blob per image at a random place: CAMs with structure."""
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == "uint8" else 65535
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, c, size, size), dtype=dtype)
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.08, 0.25) * size
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = 0.3 * rng.random((c, size, size)) + 0.7 * blob * rng.uniform(0.3, 1.0, (c, 1, 1))
        out[i] = (np.clip(img, 0, 1) * hi).astype(dtype)
    return out


def box_rois(n: int, size: int, seed: int, empty: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    roi = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if i in empty:
            continue
        y0, x0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        roi[i, y0 : y0 + h, x0 : x0 + w] = 1
    return roi


def mix_predictions(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Adjust the head so that a batch `x` (already normalised) spans several predicted classes.

    Random networks tend to predict one class for everything; recentring the final bias (or,
    for prototypes, placing each prototype on a different sample) spreads the argmax.
    """
    head = model.head
    with torch.no_grad():
        if head.kind == "prototypical":
            emb = head.embed(model.pooled(x))
            k = head.prototypes.shape[0]
            # Push each prototype out from the batch mean past one sample: that sample (and
            # its look-alikes) then predicts the class, without sitting on the prototype.
            centre = emb.mean(0, keepdim=True)
            head.prototypes.copy_(centre + 3.0 * (emb[:k] - centre))
            return
        last = head.fc if head.kind == "linear" else head.fc2
        logits = model(x)
        last.bias -= logits.mean(0)
        last.bias += logits.std(0) * torch.linspace(-0.5, 0.5, logits.shape[1])


def normalised_upsampled(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(cam)[:, None].double(), size=size, mode="bilinear")[:, 0]
    up = up.numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return (up - lo) / (hi - lo + 1e-7)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` (a real state: a counter, a file, a process) until it is true; fail the
    test if it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:g} s"
        time.sleep(0.005)


def bounded(fn: Callable[[], T], timeout: float, what: str = "call") -> T:
    """`fn()` in a daemon thread: its result or its exception, or a test failure (not a hang)
    when it has not returned within `timeout` seconds."""
    out: list = []

    def target() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:
            out.append((False, exc))

    thread = threading.Thread(target=target, name=f"bounded-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    assert out, f"{what} did not return within {timeout:g} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value


class Replica:
    """`xgal serve` in a process of its own. Starting does not wait: `address` waits (at most
    60 s) for the "listening on" line, so several replicas start side by side.

    `launcher`: Python source run with `python -c` instead of `-m xgal.cli` (it must end by
    calling `xgal.cli.main()`), e.g. to plant a fault in the replica before it serves. `env`:
    extra environment variables. `log`: a file for the replica's stderr (its log)."""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        repo: str | os.PathLike[str],
        *extra: str,
        max_batch: int = 16,
        launcher: str | None = None,
        env: dict[str, str] | None = None,
        log: str | os.PathLike[str] | None = None,
    ) -> None:
        entry = ["-c", launcher] if launcher is not None else ["-m", "xgal.cli"]
        self._log = open(log, "ab") if log is not None else None  # closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *entry,
                "serve",
                "--port",
                "0",
                "--data-root",
                str(data_root),
                "--model-repo",
                str(repo),
                "--max-batch",
                str(max_batch),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._address: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def address(self) -> str:
        deadline = time.monotonic() + 60
        while self._address is None:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("replica did not start within 60 s") from None
            if line is None:
                raise RuntimeError(f"replica exited with {self.proc.wait(timeout=10)} before listening")
            if "listening on" in line:
                self._address = line.split("listening on ")[1].split(",")[0].strip()
        return self._address

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone (its port closed, its locks released)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()


class ShardWatch:
    """Stands in for one replica's stub inside a client: sees each ScorePool event that replica
    sends before the client does, and how each of its shards ended."""

    def __init__(self, stub: object) -> None:
        self._stub = stub
        self._lock = threading.Lock()
        self._running: dict[tuple[int, int], int] = {}  # shard -> images done, as last reported
        self.ended: dict[tuple[int, int], str] = {}  # shard -> "result" or the status code

    def __getattr__(self, name: str) -> object:
        return getattr(self._stub, name)

    def ScorePool(self, request: object, **kwargs: object) -> _WatchedCall:  # noqa: N802
        call = self._stub.ScorePool(request, **kwargs)  # type: ignore[attr-defined]
        return _WatchedCall(call, (request.start, request.stop), self)  # type: ignore[attr-defined]

    def running(self) -> dict[tuple[int, int], int]:
        """Shards this replica has reported progress on and not finished."""
        with self._lock:
            return dict(self._running)

    def _saw(self, shard: tuple[int, int], event: object = None, code: str | None = None) -> None:
        with self._lock:
            if code is not None or not event.HasField("progress"):  # type: ignore[attr-defined]
                self._running.pop(shard, None)
                self.ended[shard] = code or "result"
            else:
                self._running[shard] = event.progress.done  # type: ignore[attr-defined]


class _WatchedCall:
    def __init__(self, call: object, shard: tuple[int, int], watch: ShardWatch) -> None:
        self._call, self._shard, self._watch = call, shard, watch

    def __iter__(self) -> _WatchedCall:
        return self

    def __next__(self) -> object:
        try:
            event = next(self._call)  # type: ignore[call-overload]
        except grpc.RpcError as err:
            self._watch._saw(self._shard, code=err.code().name)
            raise
        self._watch._saw(self._shard, event)
        return event

    def __getattr__(self, name: str) -> object:  # cancel(), code(), ...
        return getattr(self._call, name)


def small_scoring_graphs(folder: Path) -> tuple[Path, Path]:
    """Two scoring graphs (small_cnn, 1x32x32 uint8, 3 classes) whose bytes and SHA-256 differ:
    the second is the first with another round number in its metadata. Made once per folder
    (exporting costs seconds; editing the metadata does not), so test modules that share a
    session folder share them."""
    import onnx
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    first, second = folder / "round0.onnx", folder / "round1.onnx"
    with FileLock(folder / ".lock"):  # pytest-xdist workers may ask at once
        if not second.is_file():
            from xgal.export import export_scoring_graph
            from xgal.train.nets import build_model

            torch.manual_seed(0)
            model = build_model("small_cnn", "linear", 3, in_channels=1)
            export_scoring_graph(model, "features.stage4.0", first, image_shape=(1, 32, 32))
            graph = onnx.load(first)
            for prop in graph.metadata_props:
                if prop.key == "xgal.round":
                    prop.value = "1"
            onnx.save(graph, second)
    return first, second


def service_graphs(folder: Path) -> tuple[Path, Path]:
    """Two scoring graphs (small_cnn, 1x32x32 uint8, 3 classes) of two networks (seeds 0 and 1),
    for the service's tests. Made once per folder (exporting costs seconds), as
    small_scoring_graphs, so the service's test modules share them."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    first, second = folder / "m1.onnx", folder / "m2.onnx"
    with FileLock(folder / ".lock"):  # pytest-xdist workers may ask at once
        if not second.is_file():
            from xgal.export import export_scoring_graph
            from xgal.train.nets import build_model

            for seed, path in enumerate((first, second)):
                torch.manual_seed(seed)
                model = build_model("small_cnn", "linear", 3, in_channels=1)
                export_scoring_graph(model, "features.stage4.0", path, image_shape=(1, 32, 32))
    return first, second


def service_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pool, Path, Path]:
    """The world of the service's test modules (one per module): a folder whose data/ holds a
    pool of 300 (shards of 128), and the two scoring graphs of service_graphs."""
    from xgal.pool.synth import synth_pool

    root = tmp_path_factory.mktemp("svc")
    (root / "data").mkdir()
    pool = synth_pool(root / "data" / "pool", 300, seed=0, image_size=32, shard_size=128)
    m1, m2 = service_graphs(tmp_path_factory.getbasetemp() / "service-graphs")
    return root, pool, m1, m2


def service_server(world: tuple[Path, Pool, Path, Path], tmp_path: Path) -> Iterator[RunningServer]:
    """The body of the service modules' `server` fixture: a server in this process on the
    world's data, a repository of its own, metrics on, batches of at most 16 within 2 ms;
    stopped after the test."""
    from xgal.scorer.server import RunningServer, ServerConfig

    root = world[0]
    srv = RunningServer(
        ServerConfig(
            data_root=root / "data",
            model_repo=tmp_path / "repo",
            port=0,
            metrics_port=0,
            max_batch=16,
            max_delay_ms=2,
        )
    )
    yield srv
    srv.stop(grace=2)


def health_status(address: str, service: str = "xgal.v1.Scorer") -> int:
    """What the gRPC health service at `address` says of `service`."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        return (
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


FAULTS_POOL = 2000  # images in the fault modules' pool: long enough for kills to land mid-shard


def faults_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    """The world of the fault modules (one per module): a pool of FAULTS_POOL (long enough for
    kills to land mid-shard), one of 64 (to see which model a replica serves), and two scoring
    graphs that differ in their bytes. Returns the data root and the graphs."""
    from xgal.pool.synth import synth_pool

    root = tmp_path_factory.mktemp("faults")
    synth_pool(root / "data" / "pool", FAULTS_POOL, seed=0, image_size=32, shard_size=500)
    synth_pool(root / "data" / "small", 64, seed=1, image_size=32)
    graphs = small_scoring_graphs(tmp_path_factory.getbasetemp() / "scoring-graphs")
    return root / "data", graphs


def requests_ended(server, method: str) -> dict[str, float]:
    """Calls of `method` the server has counted as ended (xgal_requests_total), by status code."""
    return {
        s.labels["code"]: s.value
        for metric in server.metrics.registry.collect()
        for s in metric.samples
        if s.name == "xgal_requests_total" and s.labels["method"] == method
    }

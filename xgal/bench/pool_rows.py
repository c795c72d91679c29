"""Pool-level rows (the whole pipeline: reader, engine, acquisition, bounded top-k): in process,
and ScorePool over gRPC on 1..N replica processes sharing this host."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xgal.bench.record import Recorder
from xgal.bench.timing import timed, timed_in_turn

TOP_K = 20
# The console script's entry point (pyproject: xgal = "xgal.cli:main"), run by this interpreter:
# no `xgal` on PATH needed, and it does not depend on xgal.cli having a __main__.
XGAL_CLI = [sys.executable, "-c", "from xgal.cli import main; main()"]


def pool_rows(rec: Recorder, scoring: Path, pool: Any, engine: Any) -> dict[str, float]:
    """`engine` is the fp32 engine of the engine rows; the replicas load `scoring` themselves.
    Each replica count is timed in turn with the in-process pipeline, and its ratio comes
    from that pair: timed one after the other, the machine's drift alone moved it by 20%."""
    from xgal.core.acquisition import AcquisitionConfig
    from xgal.scorer.pipeline import score_pool

    cfg = rec.cfg

    def in_process() -> object:
        return score_pool(engine, pool, AcquisitionConfig(), TOP_K, batch_size=cfg.batch)

    sec = timed(in_process, cfg.repeats)
    rec.row("pool: in process fp32", sec, pool.count, batch=cfg.batch, threads=cfg.n_threads)
    return grpc_rows(
        rec, pool, scoring, in_process, "pool: gRPC ScorePool, {n} replica(s)", "grpc_{n}_vs_in_process"
    )


def grpc_rows(
    rec: Recorder,
    pool: Any,
    model: Path,
    in_process: Callable[[], object],
    name: str,
    key: str,
    extra: Callable[[float], dict[str, Any]] = lambda sec: {},
) -> dict[str, float]:
    """For each of the bench's replica counts: ScorePool of `model` over gRPC, timed in turn
    with `in_process`; a row `name` and a ratio `key` (both formatted with n, the replicas),
    the row carrying `extra(seconds)` too."""
    cfg = rec.cfg
    out: dict[str, float] = {}
    for n in cfg.replicas:
        with replicas(rec, n, pool.path.parent, model) as (client, per_replica):
            sec_in, sec = timed_in_turn(
                [
                    in_process,
                    lambda c=client: c.score_pool(pool.path.name, model="bench", top_k=TOP_K, progress=False),
                ],
                cfg.repeats,
            )
        rec.row(
            name.format(n=n),
            sec,
            pool.count,
            batch=cfg.batch,
            threads=cfg.n_threads,
            replicas=n,
            threads_per_replica=per_replica,
            in_process_images_per_s_in_turn=pool.count / sec_in,
            **extra(sec),
        )
        out[key.format(n=n)] = sec_in / sec
    return out


@contextmanager
def replicas(rec: Recorder, n: int, data_root: Path, model: Path) -> Iterator[tuple[Any, int]]:
    """`n` replica processes on this host serving `model` as "bench": (a client of them all,
    threads per replica). The replicas share this host: each gets its share of the bench's
    threads, as replicas sharing a host should (`xgal serve --threads`)."""
    from xgal.client import ScorerClient

    cfg = rec.cfg
    per_replica = max(1, cfg.n_threads // n)
    procs: list[tuple[subprocess.Popen, str]] = []
    try:
        for i in range(n):
            repo = rec.work / f"repo-{model.stem}-{i}"
            procs.append(start_replica(data_root, repo, cfg.batch, cfg.providers, per_replica))
        with ScorerClient([addr for _, addr in procs]) as client:
            client.publish_model(model, "bench")
            yield client, per_replica
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=30)


def start_replica(
    data_root: Path, repo: Path, max_batch: int, providers: list[str], threads: int
) -> tuple[subprocess.Popen, str]:
    """`xgal serve` on a free port in a process of its own; returns it and its address once
    it says it listens."""
    proc = subprocess.Popen(
        [
            *XGAL_CLI,
            "serve",
            "--port",
            "0",
            "--data-root",
            str(data_root),
            "--model-repo",
            str(repo),
            "--max-batch",
            str(max_batch),
            "--threads",
            str(threads),
            *(arg for p in providers for arg in ("--provider", p)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while True:
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc, line.split("listening on ")[1].split(",")[0].strip()
        if not line and (proc.poll() is not None or time.monotonic() > deadline):
            proc.kill()
            proc.wait()
            raise RuntimeError("a scorer replica did not start")

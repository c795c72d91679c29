"""Where the serving path's time goes with a scoring graph of negligible cost (the null graph of
`xgal bench --ceiling`): pyinstrument over one in-process pass (the consumer's thread) and over
the reader's work alone (what the prefetch thread does), each thread's time per image, page
faults per pass, and variants timed in turn with a NumPy copy of the same bytes:

- the pipeline as it is;
- the pipeline through the dynamic batcher in process (what ScorePool adds, without gRPC): as
  it is (a full batch runs in its caller's thread); with every batch handed to the batcher's
  thread; and that with the copy the batcher made of a lone request (both as before 2026-12-07).

    python scripts/ceiling_profile.py POOL [--batch 32] [--threads 2] [--repeats 5] [--json out.json]

POOL: a pool of the bench's (xgal bench --ceiling N --workdir W writes W/ceiling-pool).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import xgal.scorer.batcher as batcher_module
import xgal.scorer.loader as loader_module
from xgal.bench.ceiling_rows import copy_pass, sample_bytes
from xgal.bench.null_graph import write_null_graph
from xgal.bench.timing import open_engine, timed_in_turn
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.samples import sample_problems
from xgal.pool.format import Pool
from xgal.scorer.batcher import BatchedEngine, DynamicBatcher
from xgal.scorer.pipeline import score_pool


def _old_joined(items: list) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([it.image for it in items]), np.concatenate([it.roi for it in items])


def profile_text(fn: Callable[[], object]) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    fn()
    profiler.stop()
    return profiler.output_text(unicode=False, color=False)


def faults(fn: Callable[[], object]) -> dict[str, float]:
    """Minor page faults, system and user CPU seconds of one call (this process)."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "minor_faults": r1.ru_minflt - r0.ru_minflt,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "user_s": r1.ru_utime - r0.ru_utime,
    }


def thread_split(pool: Pool, run: Callable[[], object]) -> dict[str, float]:
    """Per image: the reader thread's wall and CPU time in Pool.read and the sample check, and
    the consumer's wall time waiting for the reader, over one pass of `run`."""
    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)

    def read(self: Any, lo: int) -> Any:
        t, c = time.perf_counter(), time.thread_time()
        data = self.pool.read(lo, min(lo + self.batch_size, self.stop), self.keys)
        wall["reader_pool_read"] += time.perf_counter() - t
        cpu["reader_pool_read"] += time.thread_time() - c
        t, c = time.perf_counter(), time.thread_time()
        problems = sample_problems(data["rois"], data["images"])
        wall["reader_sample_problems"] += time.perf_counter() - t
        cpu["reader_sample_problems"] += time.thread_time() - c
        return loader_module.Batch(lo, data["ids"], data["images"], data["rois"], None, problems)

    product_iter = loader_module.PrefetchLoader.__iter__

    def iterate(self: Any) -> Any:
        batches = product_iter(self)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            wall["consumer_waiting_for_reader"] += time.perf_counter() - t
            if batch is None:
                return
            yield batch

    product_read = loader_module.PrefetchLoader._read
    loader_module.PrefetchLoader._read = read  # type: ignore[method-assign]
    loader_module.PrefetchLoader.__iter__ = iterate  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        run()
        total = time.perf_counter() - t
    finally:
        loader_module.PrefetchLoader._read = product_read  # type: ignore[method-assign]
        loader_module.PrefetchLoader.__iter__ = product_iter  # type: ignore[method-assign]
    out = {"pass_us_per_image": 1e6 * total / pool.count}
    out |= {f"{k}_wall_us_per_image": 1e6 * v / pool.count for k, v in wall.items()}
    out |= {f"{k}_cpu_us_per_image": 1e6 * v / pool.count for k, v in cpu.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pool", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pool, b = Pool(args.pool), args.batch
    folder = Path(tempfile.mkdtemp())
    graph = write_null_graph(folder / "null.onnx", tuple(pool.image_shape), pool.pixel_dtype)
    engine = open_engine(graph, ["CPUExecutionProvider"], args.threads)
    batched = BatchedEngine(DynamicBatcher(engine, max_batch=b))
    config = AcquisitionConfig()

    def in_process(eng: Any = engine) -> Callable[[], object]:
        return lambda: score_pool(eng, pool, config, 20, batch_size=b)

    def queued(copying: bool) -> Callable[[], object]:
        def run() -> object:
            product_run, product_joined = BatchedEngine.run, batcher_module._joined
            BatchedEngine.run = lambda self, image, roi, *a, **k: self.batcher.submit(image, roi).result()
            if copying:
                batcher_module._joined = _old_joined  # type: ignore[assignment]
            try:
                return in_process(batched)()
            finally:
                BatchedEngine.run, batcher_module._joined = product_run, product_joined  # type: ignore[method-assign]

        return run

    def read_alone() -> None:
        for lo in range(0, pool.count, b):
            data = pool.read(lo, min(lo + b, pool.count))
            sample_problems(data["rois"], data["images"])

    copy = copy_pass(pool, b)
    copy()
    in_process()()
    report: dict[str, Any] = {
        "pool": str(args.pool),
        "count": pool.count,
        "pixel_bytes_per_image": sample_bytes(pool),
    }
    report["profile_in_process"] = profile_text(in_process())
    report["profile_reader_alone"] = profile_text(read_alone)
    report["threads"] = thread_split(pool, in_process())
    report["faults_per_pass"] = {
        "numpy_copy": faults(copy),
        "pool_read_alone": faults(read_alone),
        "in_process": faults(in_process()),
    }
    variants = {
        "numpy_copy": copy,
        "in_process": in_process(),
        "in_process_batcher": in_process(batched),
        "in_process_batcher_queued": queued(False),
        "in_process_batcher_queued_copying": queued(True),
    }
    seconds = timed_in_turn(list(variants.values()), args.repeats)
    per = sample_bytes(pool) * pool.count
    report["in_turn"] = {
        name: {"images_per_s": pool.count / s, "pixel_bytes_per_s": per / s, "of_copy": seconds[0] / s}
        for name, s in zip(variants, seconds, strict=True)
    }
    batched.batcher.close()
    print(report["profile_in_process"])
    print(report["profile_reader_alone"])
    print(json.dumps({k: report[k] for k in ("threads", "faults_per_pass", "in_turn")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

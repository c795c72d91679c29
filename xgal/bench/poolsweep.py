"""One point of the pool-size sweep, in a process of its own so its peak RSS is its own:

    python -m xgal.bench.poolsweep POOL MODEL BATCH THREADS

prints one JSON line: images, seconds, seconds per image, RSS before and after the pass and
the process's peak RSS (MB)."""

from __future__ import annotations

import json
import resource
import sys
import time


def _memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB. Linux keeps getrusage's ru_maxrss across
    exec, so a child started by a large parent would report the parent's peak; VmHWM belongs to
    this process's own address space."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):  # not Linux: the best available, with the caveat above
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def main(argv: list[str]) -> None:
    pool_path, model_path, batch, threads = argv[0], argv[1], int(argv[2]), int(argv[3])
    from xgal.core.acquisition import AcquisitionConfig
    from xgal.pool.format import Pool
    from xgal.scorer.engines.ort import OnnxRuntimeEngine
    from xgal.scorer.pipeline import score_pool

    pool = Pool(pool_path)
    engine = OnnxRuntimeEngine(model_path, intra_op_threads=threads, spinning=False)
    rss_before, _ = _memory_mb()
    t0 = time.perf_counter()
    result = score_pool(engine, pool, AcquisitionConfig(), 100, batch_size=batch)
    seconds = time.perf_counter() - t0
    rss_after, peak = _memory_mb()
    print(
        json.dumps(
            {
                "pool_size": pool.count,
                "seconds": seconds,
                "seconds_per_image": seconds / pool.count,
                "images_per_s": pool.count / seconds,
                "top": len(result.top),
                "rss_before_mb": rss_before,
                "rss_after_mb": rss_after,
                "peak_rss_mb": peak,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])

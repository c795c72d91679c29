"""How the bench times things: medians of calls made in turn, on sessions that do not spin."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn` over `repeats` calls after `warmup` calls."""
    return timed_in_turn([fn], repeats, warmup)[0]


def timed_in_turn(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall seconds of each function, the functions called in turn, so that all see the
    same drift of a shared machine's clock speed (figures here move by 15% over minutes). The
    bench opens every ONNX Runtime session without spinning (`open_engine`): a session whose
    threads still spin after its run slows the next one (see `session_options`)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, own in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            own.append(time.perf_counter() - t0)
    return [statistics.median(own) for own in times]


def open_engine(model: Path, providers: Sequence[str], threads: int) -> Any:
    """A scoring engine as the bench opens them all: without spinning, since it times them in
    turn (see `timed_in_turn`). It refuses a silent fallback to another provider."""
    from xgal.scorer.engines.ort import OnnxRuntimeEngine

    return OnnxRuntimeEngine(model, providers=providers, intra_op_threads=threads, spinning=False)

"""Prints images/s per benchmark, its ratio to its group's baseline and, where a benchmark was
paired, the ratio measured in turn with its reference.

A benchmark marks itself as the baseline with `benchmark.extra_info["baseline"] = True` and
records `benchmark.extra_info["images"]` (images per call). Ratios of two benchmarks' means take
whatever the machine did between them (figures drift by ±15% here), so a benchmark can also be
paired: `measure(fn, paired_with=ref, paired_label=...)` calls `ref` right before every round
of `fn` (outside pytest-benchmark's timer) and records the median of the per-round ratios as
`extra_info["paired_ratio"]`, with `extra_info["paired_with"]` naming the reference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest


@pytest.fixture
def measure(benchmark):  # noqa: ANN001, ANN201
    """measure(fn, group=..., images=..., baseline=False, paired_with=None, paired_label="",
    rounds=5, warmup=1): time fn with pytest-benchmark and tag it for the summary below."""

    def run(
        fn: Callable[[], object],
        *,
        group: str,
        images: int,
        baseline: bool = False,
        paired_with: Callable[[], object] | None = None,
        paired_label: str = "",
        rounds: int = 5,
        warmup: int = 1,
    ) -> None:
        benchmark.group = group
        benchmark.extra_info["images"] = images
        benchmark.extra_info["baseline"] = baseline
        reference_s: list[float] = []

        def time_reference() -> None:
            start = time.perf_counter()
            paired_with()
            reference_s.append(time.perf_counter() - start)

        benchmark.pedantic(
            fn,
            setup=time_reference if paired_with else None,
            rounds=rounds,
            iterations=1,
            warmup_rounds=warmup,
        )
        if paired_with is None or benchmark.stats is None:  # None under --benchmark-disable
            return
        own_s = benchmark.stats.stats.data  # this benchmark's rounds, in the order they ran
        # The setup ran before warm-up rounds too; the last `rounds` references pair with `own_s`.
        ratios = [ref / own for ref, own in zip(reference_s[-len(own_s) :], own_s, strict=True)]
        benchmark.extra_info["paired_ratio"] = round(statistics.median(ratios), 4)
        benchmark.extra_info["paired_with"] = paired_label or getattr(paired_with, "__name__", "")

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ANN201
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or "", []).append(bench)
    tr = terminalreporter
    tr.section("throughput (images/s), ratio to the group's baseline, paired ratio")
    for name, benches in groups.items():
        base = next((b for b in benches if b.extra_info.get("baseline")), None)
        base_ips = base.extra_info["images"] / base.stats.mean if base else None
        tr.write_line(f"[{name}]")
        for b in benches:
            ips = b.extra_info["images"] / b.stats.mean
            b.extra_info["images_per_s"] = round(ips, 2)
            ratio = f"{ips / base_ips:.3f}x" if base_ips else "-"
            if base_ips:
                b.extra_info["ratio_to_baseline"] = round(ips / base_ips, 4)
            paired = ""
            if "paired_ratio" in b.extra_info:
                paired = f"   {b.extra_info['paired_ratio']:.3f}x {b.extra_info['paired_with']}, in turn"
            tr.write_line(f"  {b.name:<48} {ips:9.1f} images/s   {ratio}{paired}")

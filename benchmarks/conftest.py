"""Prints images/s per benchmark and each one's ratio to its group's baseline.

A benchmark marks itself as the baseline with `benchmark.extra_info["baseline"] = True` and
records `benchmark.extra_info["images"]` (images per call), so the ratios come from runs in the
same process on the same machine state.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def measure(benchmark):  # noqa: ANN001, ANN201
    """measure(fn, group=..., images=..., baseline=False, rounds=5, warmup=1): time fn with
    pytest-benchmark and tag it for the images/s and ratio summary below."""

    def run(
        fn: Callable[[], object],
        *,
        group: str,
        images: int,
        baseline: bool = False,
        rounds: int = 5,
        warmup: int = 1,
    ) -> None:
        benchmark.group = group
        benchmark.extra_info["images"] = images
        benchmark.extra_info["baseline"] = baseline
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ANN201
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or "", []).append(bench)
    tr = terminalreporter
    tr.section("throughput (images/s) and ratio to the group's baseline")
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
            tr.write_line(f"  {b.name:<48} {ips:9.1f} images/s   {ratio}")

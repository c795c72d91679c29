"""What a bench run has measured so far: its rows, its other figures, and the JSON report."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xgal.bench.config import BenchConfig


@dataclass
class Recorder:
    """Shared by the parts of a run: each adds rows (`row`) and named figures (`extra`)."""

    cfg: BenchConfig
    work: Path
    log: Callable[[str], None] = print
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def row(
        self,
        name: str,
        seconds: float,
        images: int,
        *,
        batch: int,
        threads: int,
        flops_per_image: float = 0,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record `images` scored in `seconds` (a median) as a row, and log it."""
        r: dict[str, Any] = {
            "name": name,
            "images_per_s": images / seconds,
            "ms_per_image": 1000 * seconds / images,
            "batch": batch,
            "threads": threads,
            **extra,
        }
        if flops_per_image:
            r["gflops_per_s"] = flops_per_image * images / seconds / 1e9
            if self.cfg.peak_gflops:
                r["peak_fraction"] = r["gflops_per_s"] / self.cfg.peak_gflops
        self.rows.append(r)
        self.log(f"{name:<40} {r['images_per_s']:9.1f} images/s  {r['ms_per_image']:8.2f} ms/image")
        return r

    def skip(self, key: str, reason: str) -> None:
        """Record that `key` was not measured, and why (a report must say which figures are
        missing on purpose)."""
        if not reason.strip():
            raise ValueError(f"skipping {key} needs a reason")
        self.extra[key] = {"skipped": reason}
        self.log(f"{key:<40} skipped ({reason})")

    def report(self) -> dict[str, Any]:
        import onnxruntime

        return {
            "machine": {
                "python": platform.python_version(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "onnxruntime": onnxruntime.__version__,
            },
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()},
            "rows": self.rows,
            **self.extra,
        }

"""What `xgal bench` measures: its configuration, checked before anything is exported."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xgal.core.errors import InvalidArgument
from xgal.scorer.engines.providers import GPU_PROVIDERS

# ImageNet's statistics: the bench's three-channel networks are fed as pretrained ones are.
MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class BenchConfig:
    arch: str = "resnet18"
    image_size: int = 224
    channels: int = 3
    batch: int = 32
    threads: int = 0  # 0 = all cores
    pool_size: int = 256
    repeats: int = 5
    peak_gflops: float | None = None
    int8: bool = True
    # Measure INT8 on this scoring graph and pool (e.g. a trained round's) instead of the
    # bench's untrained network on the built-in synthetic scans.
    int8_model: Path | None = None
    int8_pool: Path | None = None
    # FP16 is the GPU path: None = measured when the first provider is a GPU one.
    fp16: bool | None = None
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    baselines: bool = True
    replicas: list[int] = field(default_factory=lambda: [1, 2])
    ray_actors: list[int] = field(default_factory=list)  # Ray actor counts; empty: not measured
    # Images in the pool of the serving path's ceiling rows (a graph of negligible cost, in
    # process and over gRPC, against a NumPy copy of the same bytes); 0: not measured.
    ceiling: int = 0
    sweep_batch: list[int] = field(default_factory=list)
    sweep_threads: list[int] = field(default_factory=list)
    pool_sweep: list[int] = field(default_factory=list)
    pool_sweep_image_size: int = 64
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if (self.int8_model is None) != (self.int8_pool is None):
            raise InvalidArgument(
                "--int8-model and --int8-pool go together: a scoring graph and the pool to rank"
            )
        if not self.providers:
            raise InvalidArgument("name at least one execution provider")
        from xgal.scorer.engines.ort import check_providers

        check_providers(self.providers)
        if self.image_size < 16 or self.channels < 1 or self.batch < 1 or self.repeats < 1:
            raise InvalidArgument("image_size must be >= 16 and channels, batch and repeats >= 1")
        if self.ceiling < 0:
            raise InvalidArgument(f"--ceiling takes a number of images (0: not measured), got {self.ceiling}")

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in GPU_PROVIDERS

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def mean_std(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """The normalisation the bench's networks are exported with (none for grayscale)."""
        return (MEAN3, STD3) if self.channels == 3 else (None, None)

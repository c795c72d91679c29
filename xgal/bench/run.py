"""`xgal bench`: throughput of pool scoring, and what it is measured against, in one process.

All figures come from one run on one machine state, so their ratios are meaningful:
- engine (in memory, one batch): scoring graph fp32, forward-only graph (the ceiling), the
  eager PyTorch Grad-CAM reference, pytorch-grad-cam when installed, INT8 scoring graph;
- pool (whole pipeline: reader, engine, acquisition, bounded top-k): in process fp32 and INT8
  (with ranking agreement against fp32), and ScorePool over gRPC on 1..N replica processes;
- sweeps: batch size x threads for the scoring graph; pool size (time per image and peak RSS,
  each size in a fresh process).
The JSON written with --json holds every row (name, images_per_s, ms_per_image, batch,
threads, gflops_per_s, peak_fraction, ...) plus `ratios`, `int8` and `pool_sweep`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    sweep_batch: list[int] = field(default_factory=list)
    sweep_threads: list[int] = field(default_factory=list)
    pool_sweep: list[int] = field(default_factory=list)
    pool_sweep_image_size: int = 64
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if (self.int8_model is None) != (self.int8_pool is None):
            raise ValueError("--int8-model and --int8-pool go together: a scoring graph and the pool to rank")
        if not self.providers:
            raise ValueError("name at least one execution provider")
        from xgal.scorer.engines.ort import check_providers

        check_providers(self.providers)
        if self.image_size < 16 or self.channels < 1 or self.batch < 1 or self.repeats < 1:
            raise ValueError("image_size must be >= 16 and channels, batch and repeats >= 1")

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in GPU_PROVIDERS

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn` over `repeats` calls after `warmup` calls."""
    return timed_in_turn([fn], repeats, warmup)[0]


def timed_in_turn(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall seconds of each function, the functions called in turn, so that all see the
    same drift of a shared machine's clock speed (figures here move by 15% over minutes). The
    bench opens every ONNX Runtime session without spinning (`_engine`): a session whose threads still
    spin after its run slows the next one (see `session_options`)."""
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


def _engine(model: Path, providers: Sequence[str], threads: int) -> Any:
    """A scoring engine as the bench opens them all: without spinning, since it times them in
    turn (see `timed_in_turn`)."""
    from xgal.scorer.engines.ort import OnnxRuntimeEngine

    return OnnxRuntimeEngine(model, providers=providers, intra_op_threads=threads, spinning=False)


class Bench:
    def __init__(self, config: BenchConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.log = log
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self._tmp = tempfile.TemporaryDirectory() if config.workdir is None else None
        self.work = Path(self._tmp.name) if self._tmp else Path(config.workdir)  # type: ignore[arg-type]
        self.work.mkdir(parents=True, exist_ok=True)

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

    # -- models and data ---------------------------------------------------------------------------
    def _models(self) -> tuple[Any, Path, Path, str]:
        import torch

        from xgal.trainer.export import export_forward_graph, export_scoring_graph
        from xgal.trainer.nets import build_model, default_target_layer

        c, s = self.cfg.channels, self.cfg.image_size
        mean, std = (MEAN3, STD3) if c == 3 else (None, None)
        torch.manual_seed(0)
        model = build_model(self.cfg.arch, "linear", 3, in_channels=c).eval()
        layer = default_target_layer(self.cfg.arch)
        self.log(f"exporting {self.cfg.arch} at {c}x{s}x{s} (scoring graph and forward-only) ...")
        scoring = export_scoring_graph(
            model, layer, self.work / "scoring.onnx", image_shape=(c, s, s), mean=mean, std=std
        )
        forward = export_forward_graph(
            model, self.work / "forward.onnx", image_shape=(c, s, s), mean=mean, std=std
        )
        return model, scoring, forward, layer

    def run(self) -> dict[str, Any]:
        from xgal.bench.flops import count_flops
        from xgal.bench.pools import random_pool
        from xgal.scorer.engines.ort import OnnxRuntimeEngine

        cfg = self.cfg
        c, s, b, t = cfg.channels, cfg.image_size, cfg.batch, cfg.n_threads
        model, scoring, forward, layer = self._models()
        pool = random_pool(self.work / "pool", max(cfg.pool_size, b), (c, s, s))
        batch = pool.read(0, b)
        flops_scoring = count_flops(scoring)
        flops_forward = count_flops(forward)
        self.extra["gflop_per_image"] = {"scoring": flops_scoring / 1e9, "forward": flops_forward / 1e9}

        engine = _engine(scoring, cfg.providers, t)  # refuses a silent fallback to another provider
        self.extra["providers"] = engine.providers
        fwd = OnnxRuntimeEngine.plain_session(forward, t, providers=cfg.providers, spinning=False)
        sec, sec_fwd = timed_in_turn(
            [
                lambda: engine.run(batch["images"], batch["rois"]),
                lambda: fwd.run(["probs"], {"image": batch["images"]}),
            ],
            cfg.repeats,
        )
        score_row = self.row(
            "engine: scoring graph fp32", sec, b, batch=b, threads=t, flops_per_image=flops_scoring
        )
        fwd_row = self.row(
            "engine: forward-only graph fp32", sec_fwd, b, batch=b, threads=t, flops_per_image=flops_forward
        )
        ratios = {"scoring_vs_forward": score_row["images_per_s"] / fwd_row["images_per_s"]}
        if cfg.baselines and cfg.on_gpu:
            self.extra["baselines"] = {
                "skipped": "the eager baselines run on the CPU; set against a GPU engine they say nothing"
            }
        elif cfg.baselines:
            ratios.update(
                self._baselines(model, layer, batch, lambda: engine.run(batch["images"], batch["rois"]))
            )
        if cfg.int8 and cfg.int8_model is not None and cfg.int8_pool is not None:
            self.extra["int8"] = self._int8_own(cfg.int8_model, cfg.int8_pool)
        elif cfg.int8:
            self.extra["int8"] = {
                **self._int8(scoring, self._scans(), "scoring graph"),
                "pool": "synthetic scans",
            }
        if cfg.fp16 or (cfg.fp16 is None and cfg.on_gpu):
            self.extra["fp16"] = self._fp16(scoring, engine)
        elif cfg.fp16 is None:
            self.extra["fp16"] = {
                "skipped": f"FP16 is the GPU path; the providers are {cfg.providers} "
                "(--fp16 measures it anyway)"
            }
        ratios.update(self._pool_level(scoring, pool, engine))
        self.extra["ratios"] = ratios
        if cfg.sweep_batch or cfg.sweep_threads:
            self._sweep(scoring, pool, flops_scoring)
        if cfg.pool_sweep:
            self.extra["pool_sweep"] = self._pool_sweep()
        return self.report()

    def _baselines(
        self, model: Any, layer: str, batch: dict, score: Callable[[], object]
    ) -> dict[str, float]:
        """Each eager baseline is timed in turn with `score` (one batch through the fp32 scoring
        engine), and its ratio comes from that pair."""
        import torch

        from xgal.scorer.engines.torch_ref import TorchReferenceEngine

        cfg = self.cfg
        torch.set_num_threads(cfg.n_threads)
        c, s = cfg.channels, cfg.image_size
        mean, std = (MEAN3, STD3) if c == 3 else (None, None)
        ref = TorchReferenceEngine(model, layer, image_shape=(c, s, s), mean=mean, std=std)

        def scoring_vs(name: str, baseline: Callable[[], object]) -> float:
            sec_score, sec = timed_in_turn([score, baseline], max(2, cfg.repeats // 2))
            self.row(
                name,
                sec,
                cfg.batch,
                batch=cfg.batch,
                threads=cfg.n_threads,
                scoring_images_per_s_in_turn=cfg.batch / sec_score,
            )
            return sec / sec_score

        out = {
            "scoring_vs_eager": scoring_vs(
                "engine: eager PyTorch Grad-CAM (reference)",
                lambda: ref.run(batch["images"], batch["rois"]),
            )
        }
        try:
            from pytorch_grad_cam import GradCAM  # type: ignore[import-not-found]
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # type: ignore[import-not-found]
        except Exception as exc:  # ImportError, or its torchvision failing beside this torch
            reason = f"pytorch-grad-cam not usable here: {type(exc).__name__}: {exc}".splitlines()[0]
            self.extra["pytorch_grad_cam"] = {"skipped": reason}
            self.log(f"{'pytorch-grad-cam':<40} skipped ({reason})")
            return out
        x = (torch.from_numpy(batch["images"].astype(np.float32)) / 255.0 - ref.mean) / ref.std
        cam = GradCAM(model=model, target_layers=[model.get_submodule(layer)])
        targets = [ClassifierOutputTarget(0)] * len(x)
        out["scoring_vs_pytorch_grad_cam"] = scoring_vs(
            "engine: pytorch-grad-cam", lambda: cam(input_tensor=x, targets=targets)
        )
        return out

    def _int8_own(self, model: Path, pool_path: Path) -> dict[str, Any]:
        from xgal.pool.format import Pool

        pool = Pool(pool_path)
        res = self._int8(Path(model), pool, Path(model).name)
        return {**res, "model": str(model), "pool": str(pool_path)}

    def _scans(self) -> Any:
        """The built-in synthetic scans at the bench's size, for ranking agreement: it needs
        images whose scores differ by content; on uniform noise the scores are nearly tied and
        any rounding reorders them."""
        from xgal.bench.pools import existing_pool
        from xgal.pool.synth import synth_pool

        cfg = self.cfg
        n = max(cfg.pool_size, cfg.batch)
        path = self.work / "synthetic-scans"
        pool = existing_pool(path, n, (cfg.channels, cfg.image_size, cfg.image_size))
        if pool is not None:
            return pool
        self.log(f"writing {n} synthetic scans of {cfg.channels}x{cfg.image_size}x{cfg.image_size} ...")
        return synth_pool(
            path, n, image_size=cfg.image_size, channels=cfg.channels, split="test", overwrite=True
        )

    def _agreement(self, ref: Any, other: Any, pool: Any) -> dict[str, float]:
        """Top-50 overlap and Spearman correlation of two engines' acquisition scores on `pool`."""
        from xgal.bench.quantize import ranking_agreement
        from xgal.core.acquisition import AcquisitionConfig
        from xgal.scorer.pipeline import score_pool

        k = min(50, pool.count)
        bs = self.cfg.batch
        a = score_pool(ref, pool, AcquisitionConfig(), k, return_all=True, batch_size=bs).all
        b = score_pool(other, pool, AcquisitionConfig(), k, return_all=True, batch_size=bs).all
        return {"top_k": k, **ranking_agreement(a.ids, a.score, b.ids, b.score, k)}

    def _versus(self, name: str, precision: str, ref: Any, other: Any, pool: Any) -> dict[str, Any]:
        """fp32 and a reduced-precision engine timed in turn on one batch, then ranked."""
        cfg = self.cfg
        batch = pool.read(0, min(cfg.batch, pool.count))
        n = len(batch["ids"])
        sec_ref, sec = timed_in_turn(
            [lambda e=e: e.run(batch["images"], batch["rois"]) for e in (ref, other)], 2 * cfg.repeats
        )
        section = precision.lower()
        self.row(f"{section}: {name} fp32", sec_ref, n, batch=n, threads=cfg.n_threads)
        self.row(f"{section}: {name} {precision}", sec, n, batch=n, threads=cfg.n_threads)
        res = {"speedup": sec_ref / sec, **self._agreement(ref, other, pool), "pool_size": pool.count}
        self.log(
            f"{precision} vs fp32: {res['speedup']:.2f}x, top-{res['top_k']} overlap "
            f"{res['topk_overlap']:.2f}, Spearman {res['spearman']:.3f}"
        )
        return res

    def _fp16(self, scoring: Path, ref: Any) -> dict[str, Any]:
        """`ref` is the fp32 engine of the rows above (same graph, providers and threads)."""
        from xgal.bench.fp16 import half_scoring_graph

        cfg = self.cfg
        self.log(f"converting the scoring graph to FP16 (providers {cfg.providers}) ...")
        half = half_scoring_graph(scoring, self.work / "scoring-fp16.onnx")
        engine16 = _engine(half, cfg.providers, cfg.n_threads)
        res = self._versus("scoring graph", "FP16", ref, engine16, self._scans())
        return {**res, "pool": "synthetic scans", "providers": ref.providers}

    def _int8(self, scoring: Path, pool: Any, name: str) -> dict[str, Any]:
        from xgal.bench.quantize import quantize_scoring_graph

        cfg = self.cfg
        self.log("quantizing the scoring graph to INT8 (calibration on the pool) ...")
        q = quantize_scoring_graph(
            scoring, pool, self.work / "scoring-int8.onnx", calibration=min(128, pool.count)
        )
        # INT8 is the CPU path, whatever the other rows run on.
        cpu = ["CPUExecutionProvider"]
        ref = _engine(scoring, cpu, cfg.n_threads)
        engine8 = _engine(q, cpu, cfg.n_threads)
        return self._versus(name, "INT8", ref, engine8, pool)

    def _pool_level(self, scoring: Path, pool: Any, engine: Any) -> dict[str, float]:
        """`engine` is the fp32 engine of the rows above; the replicas load `scoring` themselves.
        Each replica count is timed in turn with the in-process pipeline, and its ratio comes
        from that pair: timed one after the other, the machine's drift alone moved it by 20%."""
        from xgal.client import ScorerClient
        from xgal.core.acquisition import AcquisitionConfig
        from xgal.scorer.pipeline import score_pool

        cfg = self.cfg

        def in_process() -> object:
            return score_pool(engine, pool, AcquisitionConfig(), 20, batch_size=cfg.batch)

        sec = timed(in_process, cfg.repeats)
        self.row("pool: in process fp32", sec, pool.count, batch=cfg.batch, threads=cfg.n_threads)
        out: dict[str, float] = {}
        for n in cfg.replicas:
            # The replicas share this host: each gets its share of the bench's threads, as
            # replicas sharing a host should (`xgal serve --threads`).
            per_replica = max(1, cfg.n_threads // n)
            procs = [
                _start_replica(
                    pool.path.parent, self.work / f"repo{i}", cfg.batch, cfg.providers, per_replica
                )
                for i in range(n)
            ]
            try:
                with ScorerClient([addr for _, addr in procs]) as client:
                    client.publish_model(scoring, "bench")
                    sec_in, sec = timed_in_turn(
                        [
                            in_process,
                            lambda c=client: c.score_pool(
                                pool.path.name, model="bench", top_k=20, progress=False
                            ),
                        ],
                        cfg.repeats,
                    )
                self.row(
                    f"pool: gRPC ScorePool, {n} replica(s)",
                    sec,
                    pool.count,
                    batch=cfg.batch,
                    threads=cfg.n_threads,
                    replicas=n,
                    threads_per_replica=per_replica,
                    in_process_images_per_s_in_turn=pool.count / sec_in,
                )
                out[f"grpc_{n}_vs_in_process"] = sec_in / sec
            finally:
                for proc, _ in procs:
                    proc.terminate()
                    proc.wait(timeout=30)
        return out

    def _sweep(self, scoring: Path, pool: Any, flops: float) -> None:
        cfg = self.cfg
        for threads in cfg.sweep_threads or [cfg.n_threads]:
            engine = _engine(scoring, cfg.providers, threads)
            for b in cfg.sweep_batch or [cfg.batch]:
                data = pool.read(0, min(b, pool.count))
                sec = timed(lambda e=engine, d=data: e.run(d["images"], d["rois"]), cfg.repeats)
                self.row(
                    f"sweep: batch {b}, {threads} thread(s)",
                    sec,
                    len(data["ids"]),
                    batch=b,
                    threads=threads,
                    flops_per_image=flops,
                    sweep=True,
                )

    def _pool_sweep(self) -> list[dict[str, Any]]:
        """Time per image and peak RSS from 10k to 1M images: small images and the small CNN,
        so the sweep takes minutes; each size is scored in a fresh process."""
        import torch

        from xgal.bench.pools import random_pool
        from xgal.trainer.export import export_scoring_graph
        from xgal.trainer.nets import build_model, default_target_layer

        cfg = self.cfg
        s = cfg.pool_sweep_image_size
        torch.manual_seed(0)
        small = build_model("small_cnn", "linear", 3, in_channels=1).eval()
        model = export_scoring_graph(
            small, default_target_layer("small_cnn"), self.work / "sweep.onnx", image_shape=(1, s, s)
        )
        out = []
        for n in sorted(cfg.pool_sweep):
            self.log(f"pool sweep: writing a pool of {n} images of 1x{s}x{s} ...")
            pool = random_pool(self.work / f"sweep-{n}", n, (1, s, s))
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "xgal.bench.poolsweep",
                    str(pool.path),
                    str(model),
                    str(cfg.batch * 8),
                    str(cfg.n_threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            point = json.loads(proc.stdout.strip().splitlines()[-1])
            self.log(
                f"pool sweep: {n:>8} images  {point['images_per_s']:9.1f} images/s  "
                f"{1e6 * point['seconds_per_image']:7.1f} us/image  peak RSS {point['peak_rss_mb']:.0f} MB"
            )
            out.append(point)
        if len(out) >= 2:
            self.extra["pool_sweep_rss_growth_mb"] = out[-1]["peak_rss_mb"] - out[0]["peak_rss_mb"]
        return out

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


def _start_replica(
    data_root: Path, repo: Path, max_batch: int, providers: list[str], threads: int
) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xgal.cli",
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
            raise RuntimeError("a scorer replica did not start")

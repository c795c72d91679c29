"""`xgal score`: rank a pool with a scoring graph in this process. Never loads torch."""

from __future__ import annotations

from pathlib import Path

import typer

from xgal.cli.common import ALL_SCORES, EXCLUDE, OUTPUT, TOP_K, Bar, acquisition_options, out, read_ids
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import InvalidArgument
from xgal.core.samples import OnBadSample

# Shared with `xgal client score`.
ON_BAD_SAMPLE = typer.Option(
    OnBadSample.FAIL,
    "--on-bad-sample",
    case_sensitive=False,
    help="A sample with ROI values other than 0/1 or NaN/Inf pixels: fail (naming it) or skip it "
    "(it is not scored and is listed in the output). Damaged shards always fail.",
)


@acquisition_options()
def score(
    model: Path = typer.Option(..., help="Scoring graph (.onnx) made by the exporter."),
    pool: Path = typer.Option(..., help="Pool folder."),
    top_k: int = TOP_K,
    exclude: Path | None = EXCLUDE,
    batch_size: int = typer.Option(64, min=1, help="Images per engine call."),
    threads: int = typer.Option(
        0, min=0, help="ONNX Runtime intra-op threads (0 = all cores); with --ray, per actor (0 = 1)."
    ),
    provider: list[str] = typer.Option([], help="Execution provider(s), best first."),
    device_id: int = typer.Option(0, min=0, help="The GPU a CUDA or TensorRT provider runs on."),
    trt_fp16: bool = typer.Option(False, help="TensorRT provider: build FP16 kernels where they are faster."),
    engine_cache: Path | None = typer.Option(
        None, help="TensorRT provider: keep built engines here (default: .engines beside the model)."
    ),
    output: Path | None = OUTPUT,
    all_scores: bool = ALL_SCORES,
    on_bad_sample: OnBadSample = ON_BAD_SAMPLE,
    verify: bool = typer.Option(
        True, help="Check the pool's checksums, IDs and labels first (reads the pool once more)."
    ),
    ray: str | None = typer.Option(
        None,
        help="Score on Ray instead: 'local' (a Ray instance on this machine for the run), 'auto' "
        "(the cluster this machine is in) or ray://HOST:10001. The pool's path must be one every "
        "node sees.",
    ),
    ray_actors: int = typer.Option(2, min=1, help="With --ray: actors, each one ONNX Runtime session."),
    ray_block: int = typer.Option(2048, min=1, help="With --ray: pool rows per task."),
    ray_gpus: float = typer.Option(
        0.0, min=0.0, help="With --ray: GPUs per actor (> 0: the CUDA provider on the GPU Ray assigns)."
    ),
    *,
    acquisition: AcquisitionConfig,
) -> None:
    """Rank a pool with a scoring graph, in this process (no server)."""
    from xgal.cli import output as report
    from xgal.pool.format import Pool
    from xgal.scorer.engines import OnnxRuntimeEngine
    from xgal.scorer.engines.providers import ProviderSettings
    from xgal.scorer.pipeline import score_pool

    report.check_path(output)
    excluded = read_ids(exclude)
    data = Pool(pool)
    settings = ProviderSettings(
        device_id=device_id, fp16=trt_fp16, engine_cache=engine_cache, max_batch=batch_size
    )
    if ray is not None:
        from xgal.scorer.ray_pool import RayOptions, score_pool_ray

        if provider or engine_cache or device_id or trt_fp16:
            raise InvalidArgument(
                "--ray picks each actor's provider (--ray-gpus) and device: drop --provider, "
                "--device-id, --trt-fp16 and --engine-cache"
            )
        options = RayOptions(
            ray, ray_actors, max(1, threads), ray_gpus, block_size=ray_block, batch_size=batch_size
        )
        where = "CUDAExecutionProvider" if ray_gpus > 0 else "CPUExecutionProvider"
        providers = [f"Ray {ray}: {ray_actors} actors, {where}"]
        with Bar("scoring on Ray", data.count) as bar:
            result = score_pool_ray(
                model,
                data.path,
                acquisition,
                top_k,
                options=options,
                exclude_ids=excluded,
                return_all=all_scores,
                on_bad_sample=on_bad_sample,
                verify=verify,  # each block checks the shards it reads, on its actor
                progress=bar.update,
            )
    else:
        engine = OnnxRuntimeEngine(
            model, providers=provider or None, intra_op_threads=threads, settings=settings
        )
        providers = engine.providers
        with Bar("scoring", data.count) as bar:
            result = score_pool(
                engine,
                data,
                acquisition,
                top_k,
                exclude_ids=excluded,
                return_all=all_scores,
                batch_size=batch_size,
                progress=bar.update,
                on_bad_sample=on_bad_sample,
                verify=verify,
            )
    report.print_table(
        result, f"top {top_k} of {data.path} by {acquisition.strategy}", out, config=acquisition
    )
    if output is not None:
        context = {
            "model": str(model),
            "pool": str(pool),
            "config": {k: str(v) for k, v in vars(acquisition).items()},
            "providers": providers,
        }
        report.write(result, output, context)
        out.print(f"wrote {output}")

"""`xgal bench`: throughput of the scoring graph against its baselines."""

from __future__ import annotations

from pathlib import Path

import typer

from xgal.cli.common import console, ints, out


def bench(
    arch: str = typer.Option("resnet18", help="small_cnn | resnet18 | densenet121"),
    image_size: int = typer.Option(224),
    channels: int = typer.Option(3),
    batch: int = typer.Option(32, help="Images per engine call."),
    threads: int = typer.Option(0, help="Intra-op threads (0 = all cores)."),
    pool_size: int = typer.Option(256, help="Images in the pool-level measurements."),
    repeats: int = typer.Option(5, help="Timed repetitions (the median is reported)."),
    peak_gflops: float | None = typer.Option(
        None, help="The CPU's FMA peak, to report the fraction reached."
    ),
    int8: bool = typer.Option(True, help="Also measure an INT8 scoring graph and its ranking agreement."),
    int8_model: Path | None = typer.Option(
        None, help="Measure INT8 on this scoring graph (e.g. a trained round's) instead of the bench's."
    ),
    int8_pool: Path | None = typer.Option(None, help="The pool to calibrate and rank on with --int8-model."),
    fp16: bool | None = typer.Option(
        None,
        help="Measure an FP16 scoring graph and its ranking agreement (default: when the first "
        "provider is a GPU one).",
    ),
    provider: list[str] = typer.Option(
        ["CPUExecutionProvider"],
        help="ONNX Runtime execution provider(s), best first (e.g. CUDAExecutionProvider), for "
        "the engine, FP16, pool, replica and sweep rows. INT8 always runs on the CPU; the eager "
        "baselines run on the GPU beside a GPU provider (skipped when PyTorch sees none).",
    ),
    baselines: bool = typer.Option(
        True, help="Eager PyTorch Grad-CAM and pytorch-grad-cam (when installed)."
    ),
    replicas: str = typer.Option("1,2", help="gRPC replica counts to measure, e.g. 1,2."),
    ray_actors: str = typer.Option(
        "", help="Ray actor counts to measure against in process on a local Ray instance, e.g. 1,2."
    ),
    ceiling: int = typer.Option(
        0,
        help="Images in a pool for the serving path's ceiling: a scoring graph of negligible cost "
        "in process and over gRPC (--replicas), against a NumPy copy of the same bytes; 0 = not "
        "measured. About 10000 at 224x224x3 (2 GB) take seconds a pass.",
    ),
    sweep_batch: str = typer.Option("", help="Batch sizes to sweep, e.g. 8,16,32,64."),
    sweep_threads: str = typer.Option("", help="Thread counts to sweep, e.g. 1,2."),
    pool_sweep: str = typer.Option(
        "", help="Pool sizes for time/image and peak RSS, e.g. 10000,100000,1000000."
    ),
    pool_sweep_image_size: int = typer.Option(64, help="Image side in the pool-size sweep."),
    workdir: Path | None = typer.Option(
        None, help="Keep models and pools here (default: a temporary folder)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write every figure as JSON."),
) -> None:
    """Measure pool-scoring throughput against forward-only, eager Grad-CAM and pytorch-grad-cam.

    JSON (--json): {machine, config, rows: [{name, images_per_s, ms_per_image, batch, threads,
    gflops_per_s?, peak_fraction?, replicas?, sweep?, scoring_images_per_s_in_turn? (eager rows),
    in_process_images_per_s_in_turn?, threads_per_replica? (gRPC rows), actors?,
    threads_per_actor? (Ray rows), pixel_bytes_per_s?, copy_pixel_bytes_per_s_in_turn? (ceiling
    rows)}], gflop_per_image: {scoring, forward}, ratios: {scoring_vs_forward, scoring_vs_eager,
    scoring_vs_pytorch_grad_cam?, grpc_N_vs_in_process, ray_N_vs_in_process?,
    ceiling_in_process_vs_copy?, ceiling_grpc_N_vs_in_process?} (each from the two timed in
    turn, one call of each per repeat), ceiling: {pool_size, image_shape, pixel_dtype,
    pixel_bytes_per_image, pixel_bytes_per_pass}?, int8:
    {speedup, top_k, topk_overlap, spearman, pool ("synthetic scans" or --int8-pool), pool_size,
    model?}, fp16: {speedup, top_k, topk_overlap, spearman, pool, pool_size, providers} or
    {skipped: reason}, providers (the engine's, as ONNX Runtime reports), baselines: {skipped:
    reason}?, pytorch_grad_cam: {skipped: reason}?, pool_sweep: [{pool_size, seconds_per_image,
    images_per_s, peak_rss_mb}], pool_sweep_rss_growth_mb}."""
    import json

    from rich.table import Table

    from xgal.bench.run import Bench, BenchConfig

    cfg = BenchConfig(
        arch=arch,
        image_size=image_size,
        channels=channels,
        batch=batch,
        threads=threads,
        pool_size=pool_size,
        repeats=repeats,
        peak_gflops=peak_gflops,
        int8=int8,
        int8_model=int8_model,
        int8_pool=int8_pool,
        fp16=fp16,
        providers=provider,
        baselines=baselines,
        replicas=ints(replicas, "--replicas"),
        ray_actors=ints(ray_actors, "--ray-actors"),
        ceiling=ceiling,
        sweep_batch=ints(sweep_batch, "--sweep-batch"),
        sweep_threads=ints(sweep_threads, "--sweep-threads"),
        pool_sweep=ints(pool_sweep, "--pool-sweep"),
        pool_sweep_image_size=pool_sweep_image_size,
        workdir=workdir,
    )
    doc = Bench(cfg, log=lambda line: console.print(line, highlight=False)).run()
    table = Table(
        title=f"xgal bench: {arch} {channels}x{image_size}x{image_size}, batch {batch}", title_justify="left"
    )
    for col in ("measurement", "images/s", "ms/image", "GFLOP/s", "of peak", "pixels GB/s"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    for r in doc["rows"]:
        table.add_row(
            r["name"],
            f"{r['images_per_s']:.1f}",
            f"{r['ms_per_image']:.2f}",
            f"{r['gflops_per_s']:.1f}" if "gflops_per_s" in r else "",
            f"{100 * r['peak_fraction']:.0f}%" if "peak_fraction" in r else "",
            f"{r['pixel_bytes_per_s'] / 1e9:.2f}" if "pixel_bytes_per_s" in r else "",
        )
    out.print(table)
    for name, value in doc.get("ratios", {}).items():
        out.print(f"  {name:<32} {value:.3f}x")
    for precision in ("int8", "fp16"):
        res = doc.get(precision)
        if res and "skipped" in res:
            out.print(f"  {precision}: skipped ({res['skipped']})")
        elif res:
            out.print(
                f"  {precision + '_vs_fp32':<32} {res['speedup']:.3f}x  top-{res['top_k']} overlap "
                f"{res['topk_overlap']:.2f}, Spearman {res['spearman']:.3f}"
            )
    if json_out is not None:
        json_out.write_text(json.dumps(doc, indent=1))
        out.print(f"wrote {json_out}")

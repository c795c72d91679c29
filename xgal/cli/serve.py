"""`xgal serve`: a scorer replica."""

from __future__ import annotations

from pathlib import Path

import typer

from xgal.cli.common import read_token
from xgal.core.errors import InvalidArgument


def serve(
    port: int = typer.Option(50051, help="gRPC port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    data_root: Path = typer.Option(..., help="Pools are read from under this folder only."),
    model_repo: Path = typer.Option(..., help="Model repository folder (created if missing)."),
    metrics_port: int | None = typer.Option(None, help="Serve Prometheus /metrics on this port."),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain for TLS."),
    tls_key: Path | None = typer.Option(None, help="PEM private key for TLS."),
    token_file: Path | None = typer.Option(None, help="File holding the bearer token clients must send."),
    max_batch: int = typer.Option(64, min=1, help="Dynamic batching: images per engine call."),
    max_delay_ms: float = typer.Option(5.0, min=0, help="Dynamic batching: longest wait to fill a batch."),
    workers: int = typer.Option(
        8, min=2, help="Worker threads: scoring and uploads get all but --reserved-workers."
    ),
    reserved_workers: int = typer.Option(
        2,
        min=0,
        help="Workers kept for health and control calls; scoring beyond the rest is refused "
        "with RESOURCE_EXHAUSTED instead of queued.",
    ),
    grace: float = typer.Option(
        30.0, min=0, help="On SIGTERM, how long calls in flight may run before they are cancelled."
    ),
    stream_idle_s: float = typer.Option(
        60.0, min=0.1, help="Close a ScoreStream or upload that sends nothing for this long."
    ),
    max_message_mb: int = typer.Option(64, min=1, help="Largest gRPC message, both directions."),
    reply_message_kb: int = typer.Option(
        4096,
        min=1,
        help="ScorePool sends a result's rows (every row, with --all or a pool-level "
        "normalisation) in messages of at most this many KiB.",
    ),
    provider: list[str] = typer.Option(
        [], help="ONNX Runtime execution provider(s), best first (default: every installed one)."
    ),
    threads: int = typer.Option(
        0,
        min=0,
        help="ONNX Runtime threads per model (0 = one per core). Replicas sharing a host: "
        "give each its share of the cores.",
    ),
    device_id: int = typer.Option(0, min=0, help="The GPU a CUDA or TensorRT provider runs on."),
    trt_fp16: bool = typer.Option(False, help="TensorRT provider: build FP16 kernels where they are faster."),
    engine_cache: Path | None = typer.Option(
        None,
        help="TensorRT provider: keep built engines here, keyed by model SHA-256, GPU and "
        "versions (default: .engines beside each model).",
    ),
    cuda_graph: bool = typer.Option(
        False,
        help="CUDA: capture each model's launches once and replay them (ONNX Runtime's CUDA "
        "graphs); the models must have a fixed batch (xgal model fixed-batch).",
    ),
    spin: bool = typer.Option(
        False,
        help="Let ONNX Runtime's threads spin-wait between runs (a replica scoring one model "
        "at a time only; with several models at once, spinning costs them about 25%).",
    ),
) -> None:
    """Run a scorer replica until SIGTERM (which drains in-flight requests first)."""
    import logging

    from xgal.scorer.engines.providers import ProviderSettings
    from xgal.scorer.server import ServerConfig, serve_forever

    if (tls_cert is None) != (tls_key is None):
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    if cuda_graph and (not provider or provider[0] != "CUDAExecutionProvider"):
        raise InvalidArgument(
            "--cuda-graph captures CUDA graphs: give --provider CUDAExecutionProvider first (the "
            "TensorRT and CPU providers would capture nothing)"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(
        ServerConfig(
            data_root=data_root,
            model_repo=model_repo,
            host=host,
            port=port,
            metrics_port=metrics_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=read_token(token_file),
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            workers=workers,
            reserved_workers=reserved_workers,
            stream_idle_s=stream_idle_s,
            max_message_mb=max_message_mb,
            reply_message_bytes=reply_message_kb * 1024,
            providers=tuple(provider),
            provider_settings=ProviderSettings(
                device_id=device_id,
                fp16=trt_fp16,
                engine_cache=engine_cache,
                max_batch=max_batch,
                cuda_graph=cuda_graph,
            ),
            spinning=spin,
            intra_op_threads=threads,
        ),
        grace=grace,
    )

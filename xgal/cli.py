"""The `xgal` command line. Heavy imports happen inside commands: `xgal score` never loads torch."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

app = typer.Typer(
    help="xgal: explainability-guided active learning for medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
pool_app = typer.Typer(help="Make, inspect and verify pools.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
client_app = typer.Typer(help="Talk to running scorers.", no_args_is_help=True)
app.add_typer(client_app, name="client")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn the errors a user can fix into one red line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:  # a command's own exit code (click's Exit is a RuntimeError)
            raise
        except (ValueError, FileNotFoundError, FileExistsError, IndexError, RuntimeError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _progress(total: int, label: str) -> tuple[Any, Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task(label, total=total)
    return bar, lambda n: bar.advance(task, n)


@pool_app.command("synth")
@friendly_errors
def pool_synth(
    out_dir: Path = typer.Argument(..., help="Folder to create the pool in."),
    size: int = typer.Option(2000, "--size", "-n", help="Number of scans."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same pool."),
    image_size: int = typer.Option(64, help="Side of the square images, in pixels."),
    classes: int = typer.Option(3, help="Number of lesion classes (2-4)."),
    marker_fraction: float = typer.Option(0.7, help="Fraction of scans with a burned-in tag."),
    marker_agreement: float = typer.Option(
        0.95, help="Probability that a tag names the true class (train split only)."
    ),
    split: str = typer.Option("train", help="'train' (tag correlated) or 'test' (tag random)."),
    shard_size: int = typer.Option(8192, help="Samples per shard file."),
    overwrite: bool = typer.Option(False, help="Replace an existing pool at OUT_DIR."),
) -> None:
    """Write a synthetic pool: lesions of K classes with ROI masks and a shortcut confounder."""
    from xgal.pool.synth import synth_pool

    bar, advance = _progress(size, f"synthesising {split} pool")
    with bar:
        pool = synth_pool(
            out_dir,
            size,
            seed=seed,
            image_size=image_size,
            num_classes=classes,
            marker_fraction=marker_fraction,
            marker_agreement=marker_agreement,
            split=split,
            shard_size=shard_size,
            overwrite=overwrite,
            progress=advance,
        )
    out.print(f"wrote {pool}")


import_app = typer.Typer(
    help="Build a pool from PNG/JPEG, DICOM or NIfTI (BraTS) data.", no_args_is_help=True
)
pool_app.add_typer(import_app, name="import")


def _import_progress(label: str) -> tuple[Any, Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _import_done(pool: Any, report: Any) -> None:
    out.print(f"wrote {pool}: {report.written} new samples, {len(report.skipped)} sources skipped")
    for line in report.skipped[:20]:
        console.print(f"  skipped {line}")
    if len(report.skipped) > 20:
        console.print(f"  ... and {len(report.skipped) - 20} more")


@import_app.command("images")
@friendly_errors
def import_images_cmd(
    folder: Path = typer.Argument(..., help="Folder of PNG/JPEG images."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    labels: Path = typer.Option(..., help="CSV: image, label[, id][, mask]."),
    boxes: Path | None = typer.Option(None, help="CSV of ROI boxes: image|id, x_min, y_min, x_max, y_max."),
    size: int = typer.Option(224, help="Side of the pool's square images."),
    channels: int = typer.Option(1, help="1 (grayscale) or 3 (RGB)."),
    classes: str | None = typer.Option(None, help="Comma-separated class order (default: sorted)."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Import a folder of PNG/JPEG images with labels and ROI masks or boxes."""
    from xgal.pool.importers.images import import_images

    bar, update = _import_progress("importing images")
    with bar:
        pool, report = import_images(
            folder,
            labels,
            out_dir,
            size=size,
            channels=channels,
            boxes_csv=boxes,
            class_names=classes.split(",") if classes else None,
            overwrite=overwrite,
            progress=update,
        )
    _import_done(pool, report)


@import_app.command("dicom")
@friendly_errors
def import_dicom_cmd(
    folder: Path = typer.Argument(..., help="Folder of <image_id>.dicom / .dcm files."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    boxes: Path = typer.Option(..., help="CSV: image_id, class_name, x_min, y_min, x_max, y_max."),
    size: int = typer.Option(224),
    classes: str | None = typer.Option(None, help="Comma-separated classes to keep (default: all)."),
    window: str | None = typer.Option(None, help="centre,width; default: the file's VOI window."),
    uint16: bool = typer.Option(False, help="Store 16-bit pixels instead of 8-bit."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Import DICOM images with a VinDr-CXR / SIIM-style box CSV."""
    from xgal.pool.importers.dicom import import_dicom

    win = tuple(float(v) for v in window.split(",")) if window else None
    if win is not None and len(win) != 2:
        raise ValueError("--window takes centre,width")
    bar, update = _import_progress("importing DICOM")
    with bar:
        pool, report = import_dicom(
            folder,
            boxes,
            out_dir,
            size=size,
            window=win,  # type: ignore[arg-type]
            classes=classes.split(",") if classes else None,
            pixel_dtype="uint16" if uint16 else "uint8",
            overwrite=overwrite,
            progress=update,
        )
    _import_done(pool, report)


@import_app.command("brats")
@friendly_errors
def import_brats_cmd(
    folder: Path = typer.Argument(..., help="Folder of BraTS subject folders."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    size: int = typer.Option(224),
    modalities: str = typer.Option("t1ce,flair,t2", help="Channels, in order."),
    min_area: int = typer.Option(100, help="Least tumour voxels for a slice to be kept."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Import NIfTI volumes in the BraTS layout as axial slices (class = dominant region)."""
    from xgal.pool.importers.brats import import_brats

    bar, update = _import_progress("importing subjects")
    with bar:
        pool, report = import_brats(
            folder,
            out_dir,
            size=size,
            modalities=modalities.split(","),
            min_area=min_area,
            overwrite=overwrite,
            progress=update,
        )
    _import_done(pool, report)


@pool_app.command("info")
@friendly_errors
def pool_info(path: Path) -> None:
    """Print a pool's manifest summary."""
    from xgal.pool.format import Pool

    pool = Pool(path)
    pool.check()
    out.print(f"{pool.path}: {pool.count} samples, {pool.pixel_dtype}{list(pool.image_shape)}")
    out.print(f"classes: {pool.class_names or '(none)'}; labels: {'yes' if pool.has_labels else 'no'}")
    out.print(f"shards: {len(pool.shards)}; {pool.description}")


@pool_app.command("verify")
@friendly_errors
def pool_verify(path: Path) -> None:
    """Recompute every checksum of a pool."""
    from xgal.pool.format import Pool

    Pool(path).verify()
    out.print(f"{path}: all checksums match")


@app.command("score")
@friendly_errors
def score(
    model: Path = typer.Option(..., help="Scoring graph (.onnx) made by the exporter."),
    pool: Path = typer.Option(..., help="Pool folder."),
    top_k: int = typer.Option(20, "--top-k", "-k", help="How many samples to select."),
    strategy: str = typer.Option("xgal", help="random | uncertainty | misalignment | xgal"),
    lam: float = typer.Option(0.3, "--lambda", help="Weight of uncertainty in the xgal score."),
    uncertainty: str = typer.Option("entropy", help="entropy | margin | least_confidence"),
    entropy_over_log_k: bool = typer.Option(False, help="Divide entropy by ln K."),
    missing_roi: str = typer.Option("max", help="No-ROI samples: max (M=1) | ignore | exclude"),
    normalise: str = typer.Option("none", help="Pool-level criterion scaling: none | minmax | rank"),
    balance: str = typer.Option("none", help="none | predicted | oracle (needs pool labels)"),
    exclude: Path | None = typer.Option(None, help="File of labelled IDs to skip, one per line."),
    seed: int = typer.Option(0, help="Seed of the random strategy."),
    batch_size: int = typer.Option(64, help="Images per engine call."),
    threads: int = typer.Option(0, help="ONNX Runtime intra-op threads (0 = all cores)."),
    provider: list[str] = typer.Option([], help="Execution provider(s), best first."),
    output: Path | None = typer.Option(None, "--out", "-o", help="Write .json or .csv."),
    all_scores: bool = typer.Option(False, "--all", help="Include every sample's scores."),
) -> None:
    """Rank a pool with a scoring graph, in this process (no server)."""
    from xgal.core.acquisition import AcquisitionConfig
    from xgal.pool.format import Pool
    from xgal.scorer import report
    from xgal.scorer.engines import OnnxRuntimeEngine
    from xgal.scorer.pipeline import score_pool

    config = AcquisitionConfig(
        strategy=strategy,
        lam=lam,
        uncertainty=uncertainty,
        entropy_over_log_k=entropy_over_log_k,
        missing_roi=missing_roi,
        normalise=normalise,
        balance=balance,
        seed=seed,
    )
    excluded = exclude.read_text().split() if exclude is not None else []
    data = Pool(pool)
    engine = OnnxRuntimeEngine(model, providers=provider or None, intra_op_threads=threads)
    bar, advance = _progress(data.count, "scoring")
    last = [0]

    def on_progress(done: int, _total: int) -> None:
        advance(done - last[0])
        last[0] = done

    with bar:
        result = score_pool(
            engine,
            data,
            config,
            top_k,
            exclude_ids=excluded,
            return_all=all_scores,
            batch_size=batch_size,
            progress=on_progress,
        )
    report.print_table(result, f"top {top_k} of {data.path} by {config.strategy}", out)
    if output is not None:
        context = {
            "model": str(model),
            "pool": str(pool),
            "config": {k: str(v) for k, v in vars(config).items()},
            "providers": engine.providers,
        }
        report.write(result, output, context)
        out.print(f"wrote {output}")


@app.command("serve")
@friendly_errors
def serve(
    port: int = typer.Option(50051, help="gRPC port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    data_root: Path = typer.Option(..., help="Pools are read from under this folder only."),
    model_repo: Path = typer.Option(..., help="Model repository folder (created if missing)."),
    metrics_port: int | None = typer.Option(None, help="Serve Prometheus /metrics on this port."),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain for TLS."),
    tls_key: Path | None = typer.Option(None, help="PEM private key for TLS."),
    token_file: Path | None = typer.Option(None, help="File holding the bearer token clients must send."),
    max_batch: int = typer.Option(64, help="Dynamic batching: images per engine call."),
    max_delay_ms: float = typer.Option(5.0, help="Dynamic batching: longest wait to fill a batch."),
    workers: int = typer.Option(8, help="Concurrent RPCs."),
    max_message_mb: int = typer.Option(64, help="Largest gRPC message, both directions."),
    provider: list[str] = typer.Option(
        [], help="ONNX Runtime execution provider(s), best first (default: every installed one)."
    ),
    threads: int = typer.Option(
        0,
        min=0,
        help="ONNX Runtime threads per model (0 = one per core). Replicas sharing a host: "
        "give each its share of the cores.",
    ),
    spin: bool = typer.Option(
        False,
        help="Let ONNX Runtime's threads spin-wait between runs (a replica scoring one model "
        "at a time only; with several models at once, spinning costs them about 25%).",
    ),
) -> None:
    """Run a scorer replica until SIGTERM (which drains in-flight requests first)."""
    import logging

    from xgal.scorer.server import ServerConfig, serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = token_file.read_text().strip() if token_file is not None else None
    serve_forever(
        ServerConfig(
            data_root=data_root,
            model_repo=model_repo,
            host=host,
            port=port,
            metrics_port=metrics_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            workers=workers,
            max_message_mb=max_message_mb,
            providers=tuple(provider),
            spinning=spin,
            intra_op_threads=threads,
        )
    )


def _client(targets: list[str], token_file: Path | None, tls_ca: Path | None) -> Any:
    from xgal.client import ScorerClient

    token = token_file.read_text().strip() if token_file is not None else None
    return ScorerClient(targets, token=token, tls=tls_ca)


@client_app.command("publish")
@friendly_errors
def client_publish(
    model: Path = typer.Argument(..., help="Scoring graph (.onnx)."),
    name: str = typer.Option(..., help="Model name in the repository."),
    target: list[str] = typer.Option(..., help="Scorer host:port; repeat for replicas."),
    token_file: Path | None = typer.Option(None),
    tls_ca: Path | None = typer.Option(None, help="PEM root certificate to trust."),
) -> None:
    """Publish a scoring graph to every target."""
    with _client(target, token_file, tls_ca) as client:
        info = client.publish_model(model, name)
    out.print(f"published {info.name} version {info.version} ({info.sha256[:12]}) on {len(target)} target(s)")


@client_app.command("health")
@friendly_errors
def client_health(
    target: list[str] = typer.Option(..., help="Scorer host:port; repeat for replicas."),
    serving: bool = typer.Option(
        False, help="Exit 1 unless every target is SERVING (a model loaded), not only reachable."
    ),
    timeout: float = typer.Option(5.0, help="Seconds to wait for each target."),
    tls_ca: Path | None = typer.Option(None, help="PEM root certificate to trust."),
) -> None:
    """Health of each replica (grpc.health.v1): exit 0 when every target answers, 1 otherwise;
    for container health checks and load balancers."""
    with _client(target, None, tls_ca) as client:
        status = client.health(timeout=timeout)
    for address, state in status.items():
        out.print(f"{address}  {state}", highlight=False)
    ok = all(s == "SERVING" if serving else not s.startswith("UNREACHABLE") for s in status.values())
    if not ok:
        raise typer.Exit(1)


@client_app.command("score")
@friendly_errors
def client_score(
    pool: str = typer.Option(..., help="Pool path under the scorers' data root."),
    model: str = typer.Option(..., help="Model name."),
    version: int = typer.Option(0, help="Model version (0 = latest)."),
    target: list[str] = typer.Option(..., help="Scorer host:port; repeat for replicas."),
    top_k: int = typer.Option(20, "--top-k", "-k"),
    strategy: str = typer.Option("xgal"),
    lam: float = typer.Option(0.3, "--lambda"),
    uncertainty: str = typer.Option("entropy"),
    missing_roi: str = typer.Option("max"),
    normalise: str = typer.Option("none"),
    balance: str = typer.Option("none"),
    exclude: Path | None = typer.Option(None, help="File of labelled IDs to skip, one per line."),
    output: Path | None = typer.Option(None, "--out", "-o", help="Write the ranking as JSON."),
    token_file: Path | None = typer.Option(None),
    tls_ca: Path | None = typer.Option(None),
) -> None:
    """Rank a pool on running scorers (sharded over several targets)."""
    import json

    from xgal.scorer.report import rows

    excluded = exclude.read_text().split() if exclude is not None else []
    with _client(target, token_file, tls_ca) as client:
        res = client.score_pool(
            pool,
            model=model,
            version=version,
            top_k=top_k,
            exclude_ids=excluded,
            strategy=strategy,
            lam=lam,
            uncertainty=uncertainty,
            missing_roi=missing_roi,
            normalise=normalise,
            balance=balance,
        )
    table = rows(res.top, res.class_names)
    for row in table:
        out.print(
            f"{row['rank']:>4}  {row['id']:<24} score {row['score']:.4f}  U {row['uncertainty']:.4f}  "
            f"M {row['misalignment']:.4f}  {row['pred_name']}"
        )
    out.print(
        f"scored {res.scored} images with {res.model.name} v{res.model.version}; {res.excluded} excluded"
    )
    if output is not None:
        output.write_text(
            json.dumps({"model": res.model.name, "version": res.model.version, "top": table}, indent=1)
        )


@app.command("train")
@friendly_errors
def train(
    pool: Path = typer.Option(..., help="Pool to select from (labels are read only through the annotator)."),
    test_pool: Path = typer.Option(..., help="Labelled test split for accuracy and CAM-ROI Dice."),
    out_dir: Path = typer.Option(Path("xgal-run"), "--out", help="Run folder; re-run to resume."),
    preset_name: str = typer.Option("demo", "--preset", help="demo | authors-brats | authors-vindr"),
    arch: str | None = typer.Option(None, help="small_cnn | resnet18 | densenet121"),
    head: str | None = typer.Option(None, help="linear | mlp | prototypical"),
    target_layer: str | None = typer.Option(None, help="Grad-CAM layer (module name)."),
    strategy: str | None = typer.Option(None, help="random | uncertainty | misalignment | xgal"),
    lam: float | None = typer.Option(None, "--lambda", help="Weight of uncertainty in the score."),
    alpha: float | None = typer.Option(None, help="Grad-CAM guidance loss weight (0 = off)."),
    normalise: str | None = typer.Option(None, help="none | minmax | rank"),
    balance: str | None = typer.Option(None, help="none | predicted | oracle"),
    initial: int | None = typer.Option(None, help="Initial labelled set size."),
    per_round: int | None = typer.Option(None, help="Samples acquired per round."),
    rounds: int | None = typer.Option(None, help="Acquisition rounds."),
    epochs: int | None = typer.Option(None, help="Training epochs per round."),
    seed: int | None = typer.Option(None),
    target: list[str] = typer.Option([], help="Scorer host:port (repeat); none = start one here."),
    pool_ref: str | None = typer.Option(None, help="The pool's path under the scorers' data root."),
    token_file: Path | None = typer.Option(None),
    tls_ca: Path | None = typer.Option(None),
) -> None:
    """Run the active-learning loop: train, export, publish, score, annotate (oracle), repeat."""
    from dataclasses import replace

    from xgal.pool.format import Pool
    from xgal.trainer.annotator import OracleAnnotator
    from xgal.trainer.loop import ActiveLearningLoop
    from xgal.trainer.presets import preset

    cfg = preset(preset_name)
    overrides = {
        k: v
        for k, v in dict(
            arch=arch,
            head=head,
            target_layer=target_layer,
            strategy=strategy,
            lam=lam,
            normalise=normalise,
            balance=balance,
            initial=initial,
            per_round=per_round,
            rounds=rounds,
            seed=seed,
        ).items()
        if v is not None
    }
    train_overrides = {k: v for k, v in dict(alpha=alpha, epochs=epochs).items() if v is not None}
    cfg = replace(cfg, **overrides, train=replace(cfg.train, **train_overrides))
    data, test = Pool(pool), Pool(test_pool)
    server = None
    if not target:
        from xgal.scorer.server import RunningServer, ServerConfig

        server = RunningServer(
            ServerConfig(data_root=data.path.parent, model_repo=out_dir / "models", port=0)
        )
        target = [server.address]
        out.print(f"started a local scorer on {server.address}")
    try:
        with _client(target, token_file, tls_ca) as client:
            loop = ActiveLearningLoop(
                cfg,
                data,
                test,
                client,
                OracleAnnotator(data),
                out_dir,
                pool_ref=pool_ref or data.path.name,
                log=lambda r, _m: out.print(
                    f"round {r.round}: {r.labelled} labelled, accuracy {r.accuracy:.3f}, macro-F1 "
                    f"{r.macro_f1:.3f}, CAM-ROI Dice {r.cam_dice:.3f} ({r.seconds:.1f} s)"
                ),
            )
            records = loop.run()
    finally:
        if server is not None:
            server.stop(grace=5)
    out.print(f"done: {records[-1].labelled} labelled; state, annotations and model in {out_dir}")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


@app.command("bench")
@friendly_errors
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
        "baselines are skipped on a GPU provider.",
    ),
    baselines: bool = typer.Option(
        True, help="Eager PyTorch Grad-CAM and pytorch-grad-cam (when installed)."
    ),
    replicas: str = typer.Option("1,2", help="gRPC replica counts to measure, e.g. 1,2."),
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
    in_process_images_per_s_in_turn?, threads_per_replica? (gRPC rows)}],
    gflop_per_image: {scoring, forward}, ratios: {scoring_vs_forward, scoring_vs_eager,
    scoring_vs_pytorch_grad_cam?, grpc_N_vs_in_process} (each from the two timed in turn, one
    call of each per repeat), int8: {speedup, top_k, topk_overlap, spearman, pool ("synthetic
    scans" or --int8-pool), pool_size, model?}, fp16: {speedup, top_k, topk_overlap, spearman,
    pool, pool_size, providers} or {skipped: reason}, providers (the engine's, as ONNX Runtime
    reports), baselines: {skipped: reason}?, pytorch_grad_cam: {skipped: reason}?, pool_sweep:
    [{pool_size, seconds_per_image, images_per_s, peak_rss_mb}], pool_sweep_rss_growth_mb}."""
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
        replicas=_ints(replicas),
        sweep_batch=_ints(sweep_batch),
        sweep_threads=_ints(sweep_threads),
        pool_sweep=_ints(pool_sweep),
        pool_sweep_image_size=pool_sweep_image_size,
        workdir=workdir,
    )
    doc = Bench(cfg, log=lambda line: console.print(line, highlight=False)).run()
    table = Table(
        title=f"xgal bench: {arch} {channels}x{image_size}x{image_size}, batch {batch}", title_justify="left"
    )
    for col in ("measurement", "images/s", "ms/image", "GFLOP/s", "of peak"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    for r in doc["rows"]:
        table.add_row(
            r["name"],
            f"{r['images_per_s']:.1f}",
            f"{r['ms_per_image']:.2f}",
            f"{r['gflops_per_s']:.1f}" if "gflops_per_s" in r else "",
            f"{100 * r['peak_fraction']:.0f}%" if "peak_fraction" in r else "",
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


@app.command("demo")
@friendly_errors
def demo(
    out_dir: Path = typer.Option(
        Path("xgal-demo"), "--out", help="Folder for pools, runs, results and plots."
    ),
    quick: bool = typer.Option(False, help="A smaller run: 3 arms, 30 + 3 x 30 labels (under 2 minutes)."),
    seeds: int = typer.Option(1, help="Repeat with this many seeds and report mean ± std."),
    seed: int = typer.Option(0, help="The first seed."),
    arms: str = typer.Option(
        "",
        help="Comma-separated arms to run instead of the default ones; all: random, uncertainty, "
        "xgal, xgal-rank, xgal-balanced, xgal-alpha0.",
    ),
) -> None:
    """Active learning on synthetic scans: random, uncertainty and xgal arms at equal budget,
    through a local scorer; writes results.json, learning_curves.png and cam_overlays.png."""
    from xgal.demo import pick_arms, run_demo

    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    chosen = pick_arms([a.strip() for a in arms.split(",") if a.strip()]) if arms else None
    run_demo(out_dir, quick=quick, seeds=seeds, first_seed=seed, arms=chosen, console=out)


def main() -> None:
    app(prog_name="xgal")


if __name__ == "__main__":
    sys.exit(main())

"""Reduced-precision rows: the product's INT8 and FP16 scoring graphs (xgal.scorer.precision),
each timed in turn with fp32 and compared with fp32's ranking of a pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xgal.bench.record import Recorder
from xgal.bench.timing import open_engine, timed_in_turn

# The FP16 graphs the bench writes in its work folder (the batch sweep reuses them).
FP16_SCORING, FP16_FORWARD = "scoring-fp16.onnx", "forward-fp16.onnx"
FP16_FIXED = "scoring-fp16-fixed.onnx"


def synthetic_scans(rec: Recorder) -> Any:
    """The built-in synthetic scans at the bench's size, for ranking agreement: it needs
    images whose scores differ by content; on uniform noise the scores are nearly tied and
    any rounding reorders them."""
    from xgal.bench.pools import existing_pool
    from xgal.pool.synth import synth_pool

    cfg = rec.cfg
    n = max(cfg.pool_size, cfg.batch)
    path = rec.work / "synthetic-scans"
    pool = existing_pool(path, n, cfg.image_shape)
    if pool is not None:
        return pool
    rec.log(f"writing {n} synthetic scans of {cfg.channels}x{cfg.image_size}x{cfg.image_size} ...")
    return synth_pool(path, n, image_size=cfg.image_size, channels=cfg.channels, split="test", overwrite=True)


def agreement(ref: Any, other: Any, pool: Any, batch: int) -> dict[str, float]:
    """Top-50 overlap and Spearman correlation of two engines' acquisition scores on `pool`."""
    from xgal.core.acquisition import AcquisitionConfig
    from xgal.core.ranking import ranking_agreement
    from xgal.scorer.pipeline import score_pool

    k = min(50, pool.count)
    a = score_pool(ref, pool, AcquisitionConfig(), k, return_all=True, batch_size=batch).all
    b = score_pool(other, pool, AcquisitionConfig(), k, return_all=True, batch_size=batch).all
    return {"top_k": k, **ranking_agreement(a.ids, a.score, b.ids, b.score, k)}


def versus(rec: Recorder, name: str, precision: str, ref: Any, other: Any, pool: Any) -> dict[str, Any]:
    """fp32 and a reduced-precision engine timed in turn on one batch, then ranked; the
    speedup is the ratio of those two rows."""
    cfg = rec.cfg
    batch = pool.read(0, min(cfg.batch, pool.count))
    n = len(batch["ids"])
    sec_ref, sec = timed_in_turn(
        [lambda e=e: e.run(batch["images"], batch["rois"]) for e in (ref, other)], 2 * cfg.repeats
    )
    section = precision.lower()
    rec.row(f"{section}: {name} fp32", sec_ref, n, batch=n, threads=cfg.n_threads)
    rec.row(f"{section}: {name} {precision}", sec, n, batch=n, threads=cfg.n_threads)
    res = {"speedup": sec_ref / sec, **agreement(ref, other, pool, cfg.batch), "pool_size": pool.count}
    rec.log(
        f"{precision} vs fp32: {res['speedup']:.2f}x, top-{res['top_k']} overlap "
        f"{res['topk_overlap']:.2f}, Spearman {res['spearman']:.3f}"
    )
    return res


def fp16_rows(rec: Recorder, scoring: Path, ref: Any) -> dict[str, Any]:
    """`ref` is the fp32 engine of the engine rows (same graph, providers and threads)."""
    from xgal.scorer.precision.fp16 import half_scoring_graph

    cfg = rec.cfg
    rec.log(f"converting the scoring graph to FP16 (providers {cfg.providers}) ...")
    half = half_scoring_graph(scoring, rec.work / FP16_SCORING)
    engine16 = open_engine(half, cfg.providers, cfg.n_threads)
    res = versus(rec, "scoring graph", "FP16", ref, engine16, synthetic_scans(rec))
    ratio = fp16_forward_rows(rec, half, engine16)
    return {**res, "pool": "synthetic scans", "providers": ref.providers, "ratios": ratio}


def fp16_forward_rows(rec: Recorder, half: Path, engine16: Any) -> dict[str, float]:
    """The FP16 scoring graph against its own forward half (the same FP16 network up to `probs`,
    cut out of it, so the two differ by the explanation path alone), timed in turn."""
    import onnx.utils

    from xgal.scorer.engines.ort import OnnxRuntimeEngine

    cfg = rec.cfg
    forward = rec.work / FP16_FORWARD
    onnx.utils.extract_model(str(half), str(forward), ["image"], ["probs"])
    session = OnnxRuntimeEngine.plain_session(forward, cfg.n_threads, providers=cfg.providers, spinning=False)
    batch = synthetic_scans(rec).read(0, cfg.batch)
    n = len(batch["ids"])
    sec, sec_fwd = timed_in_turn(
        [
            lambda: engine16.run(batch["images"], batch["rois"]),
            lambda: session.run(["probs"], {"image": batch["images"]}),
        ],
        2 * cfg.repeats,
    )
    rec.row("fp16: scoring graph FP16 (in turn with forward-only)", sec, n, batch=n, threads=cfg.n_threads)
    rec.row("fp16: forward-only graph FP16", sec_fwd, n, batch=n, threads=cfg.n_threads)
    ratios = {"fp16_scoring_vs_fp16_forward": sec_fwd / sec}
    forward = lambda: session.run(["probs"], {"image": batch["images"]})  # noqa: E731
    return ratios | fixed_batch_rows(rec, half, batch, forward)


def fixed_batch_rows(rec: Recorder, half: Path, batch: dict, forward: Any) -> dict[str, float]:
    """The FP16 scoring graph with its batch fixed (`xgal model fixed-batch`), and on CUDA with
    its launches captured once and replayed (CUDA graphs), each timed in turn with `forward`."""
    from xgal.scorer.engines.ort import OnnxRuntimeEngine
    from xgal.scorer.engines.providers import CUDA, ProviderSettings
    from xgal.scorer.fixed_batch import write_fixed_batch_graph

    cfg, n = rec.cfg, len(batch["ids"])
    fixed = write_fixed_batch_graph(half, rec.work / FP16_FIXED, n)
    variants = {"fixed batch": ProviderSettings()}
    if cfg.providers[0] == CUDA:
        variants["fixed batch, CUDA graph"] = ProviderSettings(cuda_graph=True)
    out = {}
    for name, settings in variants.items():
        engine = OnnxRuntimeEngine(
            fixed, providers=cfg.providers, intra_op_threads=cfg.n_threads, spinning=False, settings=settings
        )
        sec, sec_fwd = timed_in_turn(
            [lambda e=engine: e.run(batch["images"], batch["rois"]), forward], 2 * cfg.repeats
        )
        rec.row(f"fp16: scoring graph FP16, {name}", sec, n, batch=n, threads=cfg.n_threads)
        key = "cuda_graph" if settings.cuda_graph else "fixed"
        out[f"fp16_{key}_scoring_vs_fp16_forward"] = sec_fwd / sec
    return out


def int8_rows(rec: Recorder, scoring: Path, pool: Any, name: str) -> dict[str, Any]:
    """INT8 of `scoring`, calibrated and ranked on `pool`, against fp32 on the CPU."""
    from xgal.scorer.precision.int8 import quantize_scoring_graph

    cfg = rec.cfg
    rec.log("quantizing the scoring graph to INT8 (calibration on the pool) ...")
    q = quantize_scoring_graph(
        scoring, pool, rec.work / "scoring-int8.onnx", calibration=min(128, pool.count)
    )
    # INT8 is the CPU path, whatever the other rows run on.
    cpu = ["CPUExecutionProvider"]
    ref = open_engine(scoring, cpu, cfg.n_threads)
    engine8 = open_engine(q, cpu, cfg.n_threads)
    return versus(rec, name, "INT8", ref, engine8, pool)


def int8_own_rows(rec: Recorder, model: Path, pool_path: Path) -> dict[str, Any]:
    """INT8 on a user's scoring graph and pool (`--int8-model`, `--int8-pool`)."""
    from xgal.pool.format import Pool

    res = int8_rows(rec, Path(model), Pool(pool_path), Path(model).name)
    return {**res, "model": str(model), "pool": str(pool_path)}

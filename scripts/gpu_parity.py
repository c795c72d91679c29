"""Parity of a GPU provider with ONNX Runtime on the CPU, on a trained scoring graph and its pool
(part of scripts/gpu-check.sh; docs/gpu.md).

fp32: probs, entropy, CAM and Dice on the GPU against the CPU, with TF32 off (strict fp32) and on
(ONNX Runtime's default), as the largest absolute differences. FP16 (`xgal model fp16`): the
pool's ranking against the CPU's fp32 ranking, top-50 overlap and Spearman. Prints and writes
one JSON object.

    python scripts/gpu_parity.py --model runs/xgal/model.onnx --pool pool-train --json parity.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.ranking import ranking_agreement
from xgal.pool.format import Pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.providers import CPU, ProviderSettings
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision.fp16 import half_scoring_graph

FIELDS = ("probs", "entropy", "cam", "dice")


def max_differences(a: OnnxRuntimeEngine, b: OnnxRuntimeEngine, data: dict) -> dict[str, float]:
    x, y = (e.run(data["images"], data["rois"], want_cam=True) for e in (a, b))
    return {f: float(np.max(np.abs(getattr(x, f) - getattr(y, f)))) for f in FIELDS}


def ranked(engine: OnnxRuntimeEngine, pool: Pool, k: int, batch: int) -> object:
    return score_pool(engine, pool, AcquisitionConfig(), k, return_all=True, batch_size=batch).all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--pool", type=Path, required=True)
    ap.add_argument("--provider", default="CUDAExecutionProvider")
    ap.add_argument("--images", type=int, default=256, help="Images in the fp32 comparison.")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    pool = Pool(args.pool)
    data = pool.read(0, min(args.images, pool.count))
    on = [args.provider, CPU]
    cpu = OnnxRuntimeEngine(args.model, providers=[CPU])
    strict = OnnxRuntimeEngine(args.model, providers=on, settings=ProviderSettings(tf32=False))
    tf32 = OnnxRuntimeEngine(args.model, providers=on)
    fp32 = max_differences(cpu, strict, data)
    doc: dict = {
        "model": str(args.model),
        "pool": str(args.pool),
        "pool_size": pool.count,
        "provider": strict.providers[0],
        "fp32_images": len(data["ids"]),
        "fp32_max_abs_diff": fp32,
        "fp32_tf32_max_abs_diff": max_differences(cpu, tf32, data),
        "fp32_cam_dice_within_tolerance": fp32["cam"] <= args.tolerance and fp32["dice"] <= args.tolerance,
        "tolerance": args.tolerance,
    }
    k = min(args.top_k, pool.count)
    ref = ranked(cpu, pool, k, args.batch)
    gpu32 = ranked(strict, pool, k, args.batch)
    doc["fp32_ranking"] = ranking_agreement(ref.ids, ref.score, gpu32.ids, gpu32.score, k)
    with tempfile.TemporaryDirectory() as tmp:
        half = half_scoring_graph(args.model, Path(tmp) / "fp16.onnx")
        gpu16 = OnnxRuntimeEngine(half, providers=on)
        got = ranked(gpu16, pool, k, args.batch)
        doc["fp16_ranking"] = {"top_k": k, **ranking_agreement(ref.ids, ref.score, got.ids, got.score, k)}
        doc["fp16_max_abs_diff"] = max_differences(cpu, gpu16, data)
    text = json.dumps(doc, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()

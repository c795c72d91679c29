"""INT8 scoring graphs for CPUs (ONNX Runtime static quantization, per-channel weights).

Convolutions, Gemm and MatMul are quantized with activation ranges calibrated on pool
samples; the Grad-CAM tail (transposed convolutions of the gradient path, the CAM, Dice) stays
in float, so the explanation is computed from int8 features but not int8 gradients. The first
convolution, which reads the pixels, stays in float too: quantizing it moved the ranking most
(the demo's trained small CNN on its synthetic pool, AVX2 without VNNI: top-50 overlap with
fp32 0.26 -> 0.80, Spearman 0.70 -> 0.975, mean |delta misalignment| 0.114 -> 0.016).

The default is the operator format (QLinearConv with float Add and Relu between them), not
QDQ: from QDQ, ONNX Runtime's CPU optimiser also fuses the residual Adds into QLinearAdd and
runs the stem's MaxPool on a slow path (15% of the time against 2%). ResNet-18 at 224 px, batch
32, 2 AVX2 cores, the synthetic scans: QDQ 1.33-1.42x fp32 with top-50 overlap 0.88, the
operator format 1.46-1.59x with 0.92.
QDQ is kept for engines that want it (TensorRT reads QDQ). The result must be checked against
fp32 on the pool: `ranking_agreement` gives top-k overlap and the Spearman correlation of the
acquisition scores.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from xgal.pool.format import Pool

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


def quantize_scoring_graph(
    model: str | os.PathLike[str],
    pool: Pool,
    out: str | os.PathLike[str],
    *,
    calibration: int = 128,
    batch: int = 16,
    fp32_first_conv: bool = True,
    quant_format: str = "operator",
) -> Path:
    """Write an INT8 version of a scoring graph, calibrated on the first `calibration` samples;
    `fp32_first_conv` keeps the convolution that reads the pixels in float; `quant_format` is
    "operator" (QLinearConv, fastest on CPU) or "qdq"."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    formats = {"operator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
    if quant_format not in formats:
        raise ValueError(f"quant_format must be one of {sorted(formats)}, got {quant_format!r}")
    n = min(calibration, pool.count)
    if n == 0:
        raise ValueError("calibration needs a non-empty pool")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, n, batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            if start is None:
                return None
            d = pool.read(start, min(start + batch, n))
            return {"image": d["images"], "roi": d["rois"]}

    src = onnx.load(model)
    meta = {p.key: p.value for p in src.metadata_props}
    # The overridable `target` initializer-input confuses the calibrator; calibrate a copy in
    # which it is a plain constant (acquisition always uses the predicted class).
    inputs = [i for i in src.graph.input if i.name != "target"]
    del src.graph.input[:]
    src.graph.input.extend(inputs)
    # Nodes are stored in topological order: the first Conv is the one nearest the pixels.
    first_conv = [n.name for n in src.graph.node if n.op_type == "Conv"][:1]
    out = Path(out)
    root = logging.getLogger()
    level = root.level
    # quantize_static logs a pre-processing hint on the root logger at every call.
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "fp32.onnx"
            onnx.save(src, plain)
            quantize_static(
                str(plain),
                str(out),
                Reader(),
                quant_format=formats[quant_format],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=QUANTIZED_OPS,
                nodes_to_exclude=first_conv if fp32_first_conv else [],
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        root.setLevel(level)
    q = onnx.load(out)
    del q.metadata_props[:]
    for key, value in sorted({**meta, "xgal.precision": "int8"}.items()):
        q.metadata_props.add(key=key, value=value)
    onnx.save(q, out)
    return out


def ranking_agreement(
    ref_ids: np.ndarray, ref_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> dict[str, float]:
    """Top-k overlap (|A ∩ B| / k) of two rankings of the same samples and the Spearman
    correlation of their scores."""
    order_ref = ref_ids[np.lexsort((ref_ids, -ref_scores))][:k]
    order = ids[np.lexsort((ids, -scores))][:k]
    pos = {s: i for i, s in enumerate(ids.tolist())}
    aligned = scores[[pos[s] for s in ref_ids.tolist()]]
    rank_a = np.argsort(np.argsort(ref_scores, kind="stable"), kind="stable")
    rank_b = np.argsort(np.argsort(aligned, kind="stable"), kind="stable")
    rho = float(np.corrcoef(rank_a, rank_b)[0, 1]) if len(ids) > 1 else 1.0
    return {"topk_overlap": len(set(order_ref.tolist()) & set(order.tolist())) / k, "spearman": rho}

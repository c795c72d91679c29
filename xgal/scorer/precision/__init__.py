"""Reduced-precision scoring graphs a scorer serves like the fp32 one: INT8 for CPUs
(`int8.quantize_scoring_graph`), FP16 for GPUs (`fp16.half_scoring_graph`). Each starts from
an exported fp32 graph and records its precision and its own graph SHA-256 in the metadata."""

from xgal.scorer.precision.fp16 import half_scoring_graph
from xgal.scorer.precision.int8 import QUANT_FORMATS, quantize_scoring_graph

__all__ = ["QUANT_FORMATS", "half_scoring_graph", "quantize_scoring_graph"]

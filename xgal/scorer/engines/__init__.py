"""Engines run a scoring graph on a batch. `open_engine` picks one by name.

- "onnxruntime": ONNX Runtime with the best installed execution provider (TensorRT, CUDA, CPU).
- "torch": the eager PyTorch reference (imports torch; for tests and checks), built from a model.
"""

from xgal.scorer.engines.base import BatchScores, Engine
from xgal.scorer.engines.ort import OnnxRuntimeEngine, default_providers

__all__ = ["BatchScores", "Engine", "OnnxRuntimeEngine", "default_providers"]

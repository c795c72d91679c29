"""The Python client of the scoring service: one target or many replicas.

Needs grpcio, protobuf and NumPy only (no PyTorch, no ONNX Runtime)."""

from xgal.client.client import PoolScores, ScorerClient
from xgal.client.transport import MessageTooLargeError, RetryPolicy, ScorerError

__all__ = ["MessageTooLargeError", "PoolScores", "RetryPolicy", "ScorerClient", "ScorerError"]

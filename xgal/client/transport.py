"""How the client talks to replicas: channels, the retry policy, and its errors."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from xgal.core.errors import UserError
from xgal.v1 import scorer_pb2_grpc

# Codes that say "this replica cannot take the work now": the request is tried again, on
# another replica when there is one, after a back-off. Anything else (INVALID_ARGUMENT,
# NOT_FOUND, INTERNAL, CANCELLED, DEADLINE_EXCEEDED, ...) is the answer and is raised.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# gRPC's own words when a message passes a size limit ("Received message larger than max (N vs.
# M)", "Sent message larger than max ..."): RESOURCE_EXHAUSTED as well, but no replica and no
# wait makes the message smaller, so it is never retried as load.
_TOO_LARGE = "message larger than max"


def too_large(err: grpc.RpcError) -> bool:
    """Whether the call failed because a message passed a gRPC size limit (not load)."""
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in (err.details() or "").lower()


def retryable(err: grpc.RpcError) -> bool:
    """Whether another try (another replica, or later) may succeed: unavailable or busy."""
    return err.code() in RETRYABLE and not too_large(err)


class ScorerError(UserError, RuntimeError):
    """A scoring request failed; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class MessageTooLargeError(ScorerError):
    """A request or reply passed a gRPC message size limit; raised at once, never retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is tried (DESIGN.md §6: retries and failover).

    `attempts` counts every try of one request or shard, the first included. Between tries
    the client waits `backoff_s`, doubled each time up to `max_backoff_s`. A replica that
    answered UNAVAILABLE is left out for the same back-off, then used again."""

    attempts: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, failures: int) -> float:
        return min(self.backoff_s * 2 ** max(failures - 1, 0), self.max_backoff_s)


class Target:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None, options: list) -> None:
        self.address = address
        self.channel = (
            grpc.secure_channel(address, credentials, options)
            if credentials
            else grpc.insecure_channel(address, options)
        )
        self.stub = scorer_pb2_grpc.ScorerStub(self.channel)
        self.failures = 0  # consecutive failed tries
        self.down_until = 0.0  # monotonic time before which this replica is left out

    def failed(self, policy: RetryPolicy) -> None:
        self.failures += 1
        self.down_until = time.monotonic() + policy.delay(self.failures)

    def succeeded(self) -> None:
        self.failures, self.down_until = 0, 0.0

    def wait_s(self) -> float:
        return max(0.0, self.down_until - time.monotonic())


def error(t: Target | None, err: grpc.RpcError, suffix: str = "") -> ScorerError:
    """The client's error for a failed call, naming the replica and the code."""
    where = f"{t.address}: " if t is not None else ""
    if too_large(err):
        return MessageTooLargeError(
            f"{where}{err.code().name}: {err.details()}: a message passed gRPC's size limit (not "
            "load: not tried again). Raise the client's max_message_mb or the scorer's "
            f"--max-message-mb, or lower the scorer's --reply-message-kb{suffix}",
            err.code(),
        )
    return ScorerError(f"{where}{err.code().name}: {err.details()}{suffix}", err.code())

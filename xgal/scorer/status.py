"""Exceptions -> gRPC status codes, and the decorator every RPC of the service wears.

Errors leave as typed codes with a message a person can act on; anything unexpected is logged
with its traceback and leaves as INTERNAL without one (never a stack trace on the wire).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc import _server as _grpc_server

from xgal.core.contract import NotAScoringGraphError
from xgal.core.errors import OutOfFiles
from xgal.pool.format import PoolFormatError
from xgal.scorer.admission import Cancelled, StreamIdleError
from xgal.scorer.batcher import QueueFullError
from xgal.scorer.repository import ModelNotFoundError

log = logging.getLogger("xgal.scorer")


def _code_for(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, ModelNotFoundError | FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, PermissionError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, QueueFullError | OutOfFiles):  # this replica is full; another may not be
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, TimeoutError):  # e.g. another replica holding the repository's lock
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, PoolFormatError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, NotAScoringGraphError | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, StreamIdleError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return None


DEADLINE_SLACK_S = 0.5


def _ended_by_client(context: grpc.ServicerContext) -> grpc.StatusCode:
    """Why a call that is no longer active ended: its deadline, or the client cancelling."""
    remaining = context.time_remaining()
    # The server's deadline is the client's plus the time the request took to arrive, so when
    # the client's deadline ends the call, a few milliseconds may still remain here.
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _closed_by_client(context: grpc.ServicerContext) -> bool:
    """Whether the client cancelled the call (or its deadline passed), as gRPC settled it.

    A client that cancels a stream also ends its requests, and gRPC's server may hand the
    handler that end before it marks the call cancelled: a ScoreStream handler then returns as
    if the client had half-closed. Only the call's final state tells the two apart, and gRPC's
    Python server has no public accessor for it; `grpcio` is pinned, and
    tests/test_limits.py checks this reading on a real server so that an upgrade cannot
    silently change it."""
    state = getattr(context, "_state", None)
    return getattr(state, "client", None) == _grpc_server._CANCELLED


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    code = _code_for(exc)
    if code is None:
        log.exception("%s failed", method, exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, "internal error in the scorer (details are in its log)"
    else:
        message = str(exc)
    context.abort(code, message)


class _Outcome:
    """How one call ended, counted once: by the handler, or by gRPC's termination callback when
    only the end of the call can tell (gRPC does not resume a stream whose client went away
    between two responses; a stream whose requests ended may have been cancelled)."""

    def __init__(self, metrics: Any, method: str) -> None:
        self._metrics, self._method = metrics, method
        self._lock = threading.Lock()
        self._counted = False
        self._handler_returned = False

    def count(self, code: grpc.StatusCode) -> None:
        with self._lock:
            if self._counted:
                return
            self._counted = True
        self._metrics.requests.labels(self._method, code.name).inc()

    def returned_when_requests_ended(self) -> None:
        """The handler returned because the client's requests ended: OK, unless the call turns
        out to have been cancelled (counted when gRPC closes it)."""
        self._handler_returned = True

    def watch(self, context: grpc.ServicerContext) -> None:
        def closed() -> None:
            if self._handler_returned and not _closed_by_client(context):
                self.count(grpc.StatusCode.OK)
            else:
                self.count(_ended_by_client(context))

        context.add_callback(closed)


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Count the RPC in the metrics and map exceptions to status codes (unary or streaming)."""
    name = method.__name__

    if name in ("ScorePool", "ScoreStream"):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            outcome = _Outcome(self.metrics, name)
            outcome.watch(context)
            try:
                yield from method(self, request, context)
            except GeneratorExit:
                outcome.count(_ended_by_client(context))
                raise
            except Exception as exc:
                if not context.is_active():
                    # The client cancelled or its deadline passed: whatever the stream raised
                    # then is the cancellation, not a fault of the scorer.
                    outcome.count(_ended_by_client(context))
                    return
                outcome.count(_code_for(exc) or grpc.StatusCode.INTERNAL)
                _abort(context, exc, name)
            else:
                if name == "ScoreStream":
                    outcome.returned_when_requests_ended()
                else:
                    outcome.count(grpc.StatusCode.OK)

        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        outcome = _Outcome(self.metrics, name)
        outcome.watch(context)
        try:
            result = method(self, request, context)
        except Exception as exc:
            if not context.is_active():  # e.g. an upload whose client went away mid-stream
                code = _ended_by_client(context)
                outcome.count(code)
                context.abort(code, "the call ended before the scorer answered")  # no traceback
            outcome.count(_code_for(exc) or grpc.StatusCode.INTERNAL)
            _abort(context, exc, name)
        outcome.count(grpc.StatusCode.OK)
        return result

    return unary

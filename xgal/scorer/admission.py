"""Admission: which RPCs get one of the server's worker threads, and what the rest are told.

gRPC's synchronous server runs every call on one thread pool. A scoring call holds its thread
for as long as it lasts (a ScoreStream for as long as its client keeps it open), so without a
bound eight idle streams would leave no thread for a health probe, and a ninth caller would wait
in a queue nobody can see. Here the long calls (scoring and uploads) get at most
`workers - reserved` threads; beyond that they are refused at once with RESOURCE_EXHAUSTED, which
clients treat as "try another replica or later", and the reserved threads always answer health
and the short control calls. While the replica drains, long calls are refused with UNAVAILABLE
and health says NOT_SERVING, instead of connections being refused.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

# Calls that hold a worker for long: scoring (a whole pool, or a client's stream) and uploads.
LONG_METHODS = frozenset(f"/xgal.v1.Scorer/{m}" for m in ("ScorePool", "ScoreStream", "PublishModel"))


class Cancelled(Exception):
    """The client cancelled the call or its deadline passed."""


class StreamIdleError(Exception):
    """A client stream sent nothing for longer than the server waits."""


class Admission:
    """Counts the long calls in flight; `try_enter` refuses past the limit."""

    def __init__(self, limit: int, draining: threading.Event | None = None) -> None:
        if limit < 1:
            raise ValueError(f"at least one worker must be free for scoring; got a limit of {limit}")
        self.limit = limit
        self.draining = draining or threading.Event()
        self._in_flight = 0
        self._cond = threading.Condition()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def try_enter(self) -> bool:
        with self._cond:
            if self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no long call is in flight (drain); False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Wraps the long methods' handlers: admitted, or refused before any work is done."""

    def __init__(self, admission: Admission, on_refused: Callable[[str, grpc.StatusCode], None]) -> None:
        self.admission = admission
        self.on_refused = on_refused

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in LONG_METHODS:
            return handler
        name = method.rsplit("/", 1)[-1]
        admission = self.admission

        def refuse(context: grpc.ServicerContext) -> None:
            if admission.draining.is_set():
                code = grpc.StatusCode.UNAVAILABLE
                message = "the scorer is shutting down; use another replica"
            else:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                message = (
                    f"the scorer is busy ({admission.limit} scoring or upload calls in flight); "
                    "try another replica or again later"
                )
            self.on_refused(name, code)
            context.abort(code, message)

        def admit(behaviour: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
            if streaming_response:

                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    if admission.draining.is_set() or not admission.try_enter():
                        refuse(context)
                    try:
                        yield from behaviour(request, context)
                    finally:  # runs when the handler's thread lets go of the stream
                        admission.leave()

                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if admission.draining.is_set() or not admission.try_enter():
                    refuse(context)
                try:
                    return behaviour(request, context)
                finally:
                    admission.leave()

            return unary

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(admit(handler.stream_stream, True), **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(admit(handler.stream_unary, False), **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(admit(handler.unary_stream, True), **kwargs)
        return grpc.unary_unary_rpc_method_handler(admit(handler.unary_unary, False), **kwargs)


_END = object()


def idle_bounded(requests: Iterator[T], idle_s: float, context: grpc.ServicerContext) -> Iterator[T]:
    """The client's messages, but a client that sends nothing for `idle_s` seconds ends the call
    with StreamIdleError rather than holding a worker thread for as long as it likes.

    gRPC's request iterator blocks without a timeout, so a daemon thread reads it; when the call
    ends (the handler returned or aborted), gRPC ends that iterator and the thread with it."""
    inbox: queue.Queue[Any] = queue.Queue(maxsize=1)  # read ahead by one message, no more
    stopped = threading.Event()  # the handler stopped reading: the reader must not wait on

    def put(item: Any) -> bool:
        while not stopped.is_set():
            try:
                inbox.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in requests:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # the call ended under the reader: hand it over
            put(exc)

    threading.Thread(target=read, name="xgal-stream-reader", daemon=True).start()
    try:
        while True:
            deadline = time.monotonic() + idle_s
            while True:
                try:
                    item = inbox.get(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                    break
                except queue.Empty:
                    if not context.is_active():
                        raise Cancelled("the client cancelled or its deadline passed") from None
                    if time.monotonic() >= deadline:
                        raise StreamIdleError(
                            f"no message for {idle_s:g} s: the stream was closed to free its worker; "
                            "open a new one when there is data to send"
                        ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # A handler that refused the stream early stops here: its reader ends too, rather than
        # wait for ever to hand over one more message (and hold it in memory).
        stopped.set()

"""Requests that are not valid protobuf are the client's fault: INVALID_ARGUMENT, not INTERNAL.

gRPC parses each request before the handler runs, and when parsing fails it answers INTERNAL
"Exception deserializing request!" with a traceback in the log (and, for a client stream, can
leave the server unable to stop). Here the parse is wrapped so that a malformed message reaches
the handler as a marker, which is refused with a typed error like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

SCORER_PREFIX = "/xgal.v1.Scorer/"


class Malformed:
    """Stands in for a request message that did not parse."""

    def __init__(self, why: str) -> None:
        self.why = why


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return Malformed(f"the request is not a valid protobuf message ({exc})")

    return deserialize


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Malformed):
            raise ValueError(request.why)  # mapped to INVALID_ARGUMENT by the service
        yield request


class ParseRequestsInterceptor(grpc.ServerInterceptor):
    """Innermost interceptor of the scorer's own methods (health and reflection are gRPC's)."""

    def __init__(self, on_refused: Callable[[str, grpc.StatusCode], None]) -> None:
        self.on_refused = on_refused

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SCORER_PREFIX) or handler.request_deserializer is None:
            return handler
        name = method[len(SCORER_PREFIX) :]
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }

        def unary_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Malformed):
                    self.on_refused(name, grpc.StatusCode.INVALID_ARGUMENT)
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.why)
                return behaviour(request, context)

            return call

        def streamed_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behaviour(_checked(requests), context)

            return call

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(streamed_request(handler.stream_stream), **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(streamed_request(handler.stream_unary), **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(unary_request(handler.unary_stream), **kwargs)
        return grpc.unary_unary_rpc_method_handler(unary_request(handler.unary_unary), **kwargs)

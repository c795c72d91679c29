"""How the scorer tells a cancelled call from one that ended normally, on a real gRPC server.

gRPC's Python server has no public accessor for it, so `status._closed_by_client` reads the
call's final state; this test pins that reading to the grpcio in use (an upgrade that changes it
fails here, instead of the request counters silently calling cancelled streams OK)."""

from __future__ import annotations

import queue
import threading
from concurrent import futures

import grpc
import pytest

from xgal.scorer.status import _closed_by_client

METHOD = "/test.Echo/Chat"


@pytest.fixture
def echo():
    """A bidirectional echo whose termination callbacks report `_closed_by_client`."""
    closed: queue.Queue[bool] = queue.Queue()

    def chat(requests, context):
        context.add_callback(lambda: closed.put(_closed_by_client(context)))
        yield from requests

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Chat": grpc.stream_stream_rpc_method_handler(chat)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.stream_stream(METHOD), closed
    server.stop(grace=0)


def test_a_stream_the_client_half_closes_is_not_read_as_cancelled(echo):
    chat, closed = echo
    assert list(chat(iter([b"a", b"b"]), timeout=10)) == [b"a", b"b"]
    assert closed.get(timeout=10) is False


def test_a_stream_the_client_cancels_is_read_as_cancelled(echo):
    chat, closed = echo
    hold = threading.Event()

    def requests():
        yield b"a"
        hold.wait(10)

    call = chat(requests(), timeout=10)
    assert next(call) == b"a"
    call.cancel()
    hold.set()
    assert closed.get(timeout=10) is True

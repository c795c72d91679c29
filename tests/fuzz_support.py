"""The fuzzed scorer's side of tests/test_fuzz.py: what a fuzz test sends its requests to and how
it judges each answer.

The shared names (the model, the pool, the image size), the codes a call may end with (TYPED),
the World the module's fixture builds, with the capture of tracebacks from the server's log;
one call of any method under a deadline (a hang fails the example and stops further calls), the
check of its outcome, the oracles on OK answers, and the final check that the server still
ranks the pool as before the fuzzing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from xgal.scorer.server import RunningServer
from xgal.v1 import scorer_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Scorer"]
METHODS: dict[str, MethodDescriptor] = {m.name: m for m in SERVICE.methods}

# The model every example may score with. Fuzzed uploads use other names ("fz-pub", FUZZ_NAMES),
# or MODEL with its own bytes (no new version): the ranking checked at the end stays the same.
MODEL = "m"
FUZZ_NAMES = ("fz-0", "fz-1")
POOL = "pool"
POOL_SIZE = 16
C, H, W = 1, 32, 32
# A hang is a failure: every call gets this deadline, and DEADLINE_EXCEEDED fails the example.
DEADLINE_S = 10.0
TYPED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


# -- the server's log and the state the tests share ------------------------------------------


class _Tracebacks(logging.Handler):
    """ERROR records with a traceback, from the scorer and from gRPC's own server code."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._lock = threading.Lock()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            with self._lock:
                self.records.append(record)

    def take(self) -> list[str]:
        with self._lock:
            records, self.records = self.records, []
        fmt = logging.Formatter("%(name)s: %(message)s")
        return [fmt.format(r) for r in records]


@dataclass(repr=False)  # hypothesis prints the arguments of a failing test: keep it short
class World:
    server: RunningServer
    channel: grpc.Channel
    logs: _Tracebacks
    root: Path
    model_bytes: bytes
    ids: list[str]
    baseline: pb.ScoreResult
    strategies: dict[Any, st.SearchStrategy] = field(default_factory=dict)
    # The first request the server did not answer in time. Later calls fail at once instead of
    # waiting out their deadlines: hypothesis would otherwise spend many minutes shrinking
    # against a server that no longer answers.
    hung: str | None = None

    def __repr__(self) -> str:
        return f"World({self.server.address})"


def _baseline_request() -> pb.ScorePoolRequest:
    return pb.ScorePoolRequest(pool=POOL, model=pb.ModelRef(name=MODEL), top_k=5, return_all=True)


def _classes(method: MethodDescriptor) -> tuple[type[Message], type[Message]]:
    return (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def _stub(channel: grpc.Channel, name: str, *, raw: bool = False) -> Callable[..., Any]:
    """A multicallable of the method's streaming shape; `raw`: bytes in and out, unparsed."""
    method = METHODS[name]
    request_cls, response_cls = _classes(method)
    factory = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    return factory(
        f"/{SERVICE.full_name}/{name}",
        request_serializer=None if raw else request_cls.SerializeToString,
        response_deserializer=None if raw else response_cls.FromString,
    )


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[Any]


def call(w: World, name: str, requests: Sequence[Any], *, raw: bool = False) -> Outcome:
    """One call with `requests` (one for a unary request, any number for a client stream);
    every response is read, under DEADLINE_S for the whole call."""
    assert w.hung is None, f"the server stopped answering earlier, at {w.hung}; not called again"
    method = METHODS[name]
    multicallable = _stub(w.channel, name, raw=raw)
    arg = iter(list(requests)) if method.client_streaming else requests[0]
    try:
        reply = multicallable(arg, timeout=DEADLINE_S)
        responses = list(reply) if method.server_streaming else [reply]
    except grpc.RpcError as err:
        return Outcome(err.code(), err.details() or "", [])
    return Outcome(grpc.StatusCode.OK, "", responses)


def summary(value: Any, limit: int = 80) -> str:
    """A message's set fields, long values cut, so that a failure message stays readable."""
    if isinstance(value, Message):
        parts = [f"{f.name}={summary(v, limit)}" for f, v in value.ListFields()]
        return f"{type(value).__name__}({', '.join(parts)})"
    if isinstance(value, list | tuple) or type(value).__name__.startswith("Repeated"):
        items = list(value)
        shown = ", ".join(summary(v, limit) for v in items[:4])
        return f"[{shown}{f', ... {len(items)} in all' if len(items) > 4 else ''}]"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} long)"


def check(w: World, name: str, requests: Sequence[Any], outcome: Outcome) -> None:
    where = f"{name}({', '.join(summary(r) for r in requests)})"
    logged = w.logs.take()
    if outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        w.hung = where[:2000]
        raise AssertionError(f"hang: {where} did not answer within {DEADLINE_S:g} s")
    assert outcome.code in TYPED, f"{where} -> {outcome.code.name}: {outcome.details}"
    assert "Traceback" not in outcome.details, f"{where}: a stack trace on the wire: {outcome.details}"
    assert not logged, f"{where} -> {outcome.code.name}; the server logged:\n" + "\n".join(logged)


def assert_still_serving(w: World) -> None:
    """After the fuzzing: health answers, and a correct ScorePool ranks as before it."""
    assert w.hung is None, f"the server stopped answering at {w.hung}"
    health = health_pb2_grpc.HealthStub(w.channel)
    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S)
    out = call(w, "ScorePool", [_baseline_request()])
    check(w, "ScorePool", [_baseline_request()], out)
    assert out.code == grpc.StatusCode.OK, out.details
    got = out.responses[-1].result
    assert [s.id for s in got.top] == [s.id for s in w.baseline.top]
    assert [s.score for s in got.all] == [s.score for s in w.baseline.all]
    assert got.model.version == w.baseline.model.version  # fuzzing never published over MODEL
    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=DEADLINE_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- oracles beyond the status code ----------------------------------------------------------


def check_answer(w: World, name: str, requests: Sequence[Message], out: Outcome) -> None:
    """What an OK answer must hold: the pool it describes is the one under the data root."""
    if out.code != grpc.StatusCode.OK:
        return
    if name == "DescribePool":
        # Only POOL is a pool under the data root; "escape" and "../outside" lead to one of 9.
        assert out.responses[0].count == POOL_SIZE, f"DescribePool({summary(requests[0])}) read another pool"
    if name == "ScorePool":
        assert out.responses and out.responses[-1].HasField("result"), "ScorePool ended without a result"
    if name == "ScoreStream":
        assert len(out.responses) == len(requests), "ScoreStream must answer every batch"


def _cleanup_uploads(w: World, name: str, out: Outcome) -> None:
    """A fuzzed upload that went through is unloaded again, so that loaded sessions do not pile
    up over the examples (the outcome is checked like any other call)."""
    if name != "PublishModel" or out.code != grpc.StatusCode.OK or not out.responses[0].model.loaded:
        return
    info = out.responses[0].model
    if info.name == MODEL:
        return  # the same bytes as MODEL's version: nothing new (the final check says so)
    ref = pb.UnloadModelRequest(model=pb.ModelRef(name=info.name, version=info.version))
    check(w, "UnloadModel", [ref], call(w, "UnloadModel", [ref]))

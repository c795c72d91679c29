"""Hand-built hypothesis strategies for tests/test_fuzz.py, for what the descriptors alone do not
generate: serialized requests damaged on the wire, model uploads (the real model or broken
bytes, headers that agree with them or not, chunks split anywhere), and ScoreStream batches of
numpy arrays of the wrong dtype, shape or size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from fuzz_strategies import _pick, _scalar, _wild_strings, message_strategy
from fuzz_support import MODEL, C, H, W, World
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import strategies as st

from xgal.v1 import scorer_pb2 as pb


def _damaged(w: World, method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Serialized requests damaged on the wire: truncated, a byte changed, something inserted
    (a field with another wire type than its own, a varint that never ends, random bytes)."""
    valid = message_strategy(method.input_type, "valid", w).map(lambda m: m.SerializeToString())
    inserts = st.one_of(
        st.sampled_from(
            [b"\x0d\x00\x00\x00\x00", b"\x0b", b"\x0c", b"\x08" + b"\xff" * 10, b"\x12\xff\xff\xff\xff\x0f"]
        ),
        st.binary(min_size=1, max_size=16),
    )

    def damage(blob: bytes, how: int, at: int, byte: int, insert: bytes) -> bytes:
        at %= len(blob) + 1
        if how == 0:
            return blob[:at]
        if how == 1 and at < len(blob):
            return blob[:at] + bytes([byte]) + blob[at + 1 :]
        return blob[:at] + insert + blob[at:]

    return st.builds(damage, valid, st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255), inserts)


# What is wrong with one upload or one ScoreStream batch: one thing at a time (so that each
# reaches the checks behind the others), all at once, or nothing (so that the valid path runs).
# fmt: off
_UPLOAD_FAULTS = ("none", "none", "none", "random bytes", "cut short", "a byte changed", "sha256", "size",
                  "name", "no header", "header again", "header last", "empty message", "all")
# fmt: on


def _uploads(w: World) -> st.SearchStrategy[list[pb.PublishModelRequest]]:
    """Model uploads: the real model, or random bytes, the model cut short or with a byte
    changed; headers that agree with the bytes or not; the bytes split into chunks anywhere;
    headers missing, repeated, last. Names start with 'fz-pub' (or are wild, never MODEL), so
    that no upload changes what the other examples score with."""
    model = w.model_bytes
    header_desc = pb.PublishHeader.DESCRIPTOR
    wild_names = _scalar(header_desc.fields_by_name["name"], "wild", w).filter(lambda s: s != MODEL)

    @st.composite
    def upload(draw: Callable[..., Any]) -> list[pb.PublishModelRequest]:
        fault = draw(st.sampled_from(_UPLOAD_FAULTS))

        def wrong(what: str) -> bool:
            return fault in (what, "all") and draw(st.booleans() if fault == "all" else st.just(True))

        blob = model
        if wrong("random bytes"):
            blob = draw(st.binary(max_size=2048))
        if wrong("cut short"):
            blob = blob[: draw(st.integers(0, max(len(blob) - 1, 0)))]
        if wrong("a byte changed") and blob:
            at = draw(st.integers(0, len(blob) - 1))
            blob = blob[:at] + bytes([draw(st.integers(0, 255))]) + blob[at + 1 :]
        digest = hashlib.sha256(blob).hexdigest()
        header = pb.PublishHeader()
        # Whatever fields the header has besides these four get fuzzed values too.
        header.CopyFrom(draw(message_strategy(header_desc, "valid", w)))
        header.name = draw(wild_names) if wrong("name") else "fz-pub"
        header.sha256 = draw(st.sampled_from([digest, digest.upper()]))
        if wrong("sha256"):
            header.sha256 = draw(
                st.one_of(st.sampled_from([hashlib.sha256(model).hexdigest(), ""]), _wild_strings(w))
            )
        header.size_bytes = len(blob)
        if wrong("size"):
            header.size_bytes = draw(
                st.sampled_from([len(blob) + 1, max(len(blob) - 1, 0), 0, 2**30 + 1, 2**64 - 1])
            )
        header.load = draw(st.booleans())
        cuts = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=4)))
        chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
        messages = [pb.PublishModelRequest(header=header)] + [pb.PublishModelRequest(chunk=c) for c in chunks]
        at = draw(st.integers(1, len(messages)))
        if wrong("header again"):
            messages.insert(at, pb.PublishModelRequest(header=header))
        if wrong("empty message"):
            messages.insert(at, pb.PublishModelRequest())  # neither member of the oneof
        if wrong("header last"):
            messages = messages[1:] + messages[:1]
        if wrong("no header"):
            messages = [m for m in messages if not m.HasField("header")]
        return messages

    return upload()


# fmt: off
_DTYPES = ("uint8", "uint16", ">u2", "int8", "int32", "int64", "float16", "float32", ">f4", "float64", "bool",
           "complex64")
# fmt: on
_IMAGE_SHAPES = {
    "right": lambda n: (n, C, H, W),
    "channels": lambda n: (n, C + 2, H, W),
    "half": lambda n: (n, C, H // 2, W),  # the right byte count for a 2-byte dtype
    "quarter": lambda n: (n, C, H // 2, W // 2),  # ... and for a 4-byte one
    "larger": lambda n: (n, C, 2 * H, W),
    "one more": lambda n: (n + 1, C, H, W),
    "flat": lambda n: (n * C * H * W + 1,),
}
_ROI_SHAPES = {
    "right": lambda n: (n, H, W),
    "half": lambda n: (n, H // 2, W),
    "one more": lambda n: (n + 1, H, W),
}


def _array(shape: tuple[int, ...], dtype: str, fill: str, seed: int) -> np.ndarray:
    """An array drawn from numpy's generator (a seed from hypothesis: cheap for 1024 pixels)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if fill == "zeros":
        return np.zeros(shape, dt)
    if dt.kind in "fc":
        a = rng.standard_normal(shape) * 300
        if fill == "nan":
            a.reshape(-1)[::3] = np.nan
        elif fill == "inf":
            a.reshape(-1)[::2] = np.inf
            a.reshape(-1)[1::4] = -np.inf
        elif fill == "max":
            a[...] = np.finfo(dt).max
        return a.astype(dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    info = np.iinfo(dt)
    if fill == "max":
        return np.full(shape, info.max, dt)
    if fill == "min":
        return np.full(shape, info.min, dt)
    native = dt.newbyteorder("=")  # numpy draws in the machine's byte order only
    return rng.integers(info.min, info.max, shape, dtype=native, endpoint=True).astype(dt)


def _roi(shape: tuple[int, ...], kind: str, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = {
        "0/1": lambda: rng.random(shape) < 0.3,
        "empty": lambda: np.zeros(shape),  # no ROI: the missing-ROI policy decides
        "2": lambda: np.full(shape, 2),
        "255": lambda: np.full(shape, 255),
        "random": lambda: rng.integers(0, 256, shape),
    }[kind]()
    return np.asarray(values).astype(dtype)


# fmt: off
_STREAM_FAULTS = ("none", "none", "none", "dtype", "shape", "roi shape", "roi values", "roi dtype",
                  "id count", "ids", "model", "all")
# fmt: on


def _stream_calls(w: World) -> st.SearchStrategy[list[pb.ScoreStreamRequest]]:
    """ScoreStream calls of 1..3 batches (no batch at all is in the descriptor test): numpy
    arrays of the wrong dtype, shape or size, NaN and Inf, ROI values out of range, ID counts
    that do not match; every other field, present or added later, from the descriptor."""
    desc = pb.ScoreStreamRequest.DESCRIPTOR
    wild_ids = st.one_of(_pick(w.ids), _wild_strings(w))

    @st.composite
    def batch(draw: Callable[..., Any], first: bool) -> pb.ScoreStreamRequest:
        fault = draw(st.sampled_from(_STREAM_FAULTS))

        def wrong(what: str) -> bool:
            return fault in (what, "all") and draw(st.booleans() if fault == "all" else st.just(True))

        msg = draw(message_strategy(desc, "valid", w))
        n = draw(st.integers(0, 4))
        dtype = draw(st.sampled_from(_DTYPES)) if wrong("dtype") else "uint8"
        shape = draw(st.sampled_from(sorted(_IMAGE_SHAPES))) if wrong("shape") else "right"
        fill = draw(st.sampled_from(["random", "zeros", "max", "min", "nan", "inf"]))
        msg.images = _array(_IMAGE_SHAPES[shape](n), dtype, fill, draw(st.integers(0, 2**32 - 1))).tobytes()
        roi_shape = draw(st.sampled_from(sorted(_ROI_SHAPES))) if wrong("roi shape") else "right"
        roi_kind = draw(st.sampled_from(["2", "255", "random"])) if wrong("roi values") else "0/1"
        roi_kind = draw(st.sampled_from([roi_kind, "empty"]))
        roi_dtype = draw(st.sampled_from(["bool", "uint16", "float32"])) if wrong("roi dtype") else "uint8"
        msg.rois = _roi(
            _ROI_SHAPES[roi_shape](n), roi_kind, roi_dtype, draw(st.integers(0, 2**32 - 1))
        ).tobytes()
        count = max(0, n + draw(st.sampled_from([-1, 1]))) if wrong("id count") else n
        del msg.ids[:]
        msg.ids.extend(
            draw(st.lists(wild_ids if wrong("ids") else _pick(w.ids), min_size=count, max_size=count))
        )
        if "pixel_dtype" in desc.fields_by_name:  # the dtype the pixels are sent in
            named = st.sampled_from([np.dtype(dtype).str, dtype])
            # A wrong dtype may be declared as it is, as the model's (a lie the byte count may
            # not catch), or as anything at all.
            lies = st.one_of(named, st.just("uint8"), _wild_strings(w))
            msg.pixel_dtype = draw(lies if wrong("dtype") else named)
        if first and not wrong("model"):
            msg.model.CopyFrom(pb.ModelRef(name=MODEL, version=draw(st.sampled_from([0, 1]))))
        if first and wrong("model"):
            msg.model.CopyFrom(draw(message_strategy(pb.ModelRef.DESCRIPTOR, "wild", w)))
        return msg

    @st.composite
    def calls(draw: Callable[..., Any]) -> list[pb.ScoreStreamRequest]:
        return [draw(batch(first=i == 0)) for i in range(draw(st.integers(1, 3)))]

    return calls()

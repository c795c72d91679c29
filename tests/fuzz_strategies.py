"""Hypothesis strategies generated from scorer.proto's descriptors, for tests/test_fuzz.py.

Every field of a message gets a value of its type (recursively for messages, lists for repeated
fields, dicts for maps; one member or none of each oneof), in three modes: 'valid' (hints: the
values by field name that get a request past the first checks, such as the real model name and
the real pool), 'wild' (integer and float edges, nasty strings, large bytes, lists past the
limits), or 'mixed' (either, field by field). A field added to scorer.proto is fuzzed without
editing this module.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from fuzz_support import FUZZ_NAMES, MODEL, POOL, POOL_SIZE, C, H, W, World
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

# -- strategies from the descriptors ---------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Edges of every integer type: a uint32 of 2**32 - 1 is what a client's -1 arrives as.
_INT_EDGES = (0, 1, -1, 2, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1)
_SPECIAL_FLOATS = (0.0, -0.0, 1.0, 0.3, -1e-300, 1e300, math.nan, math.inf, -math.inf, 5e-324)
# Strings that break naive code: paths out of the root, NUL, control and bidi characters, format
# strings, names at and past the 64-character limit and the file system's 255.
# fmt: off
_NASTY_STRINGS = (
    "", " ", ".", "..", "../", "../..", "/", "//", "/etc/passwd", "~", "$HOME", "\\..\\", "../" * 64,
    "/".join(["a"] * 2000), "\x00", "a\x00b", "pool\x00", "\n", "\r\n", "\t", "\u202e", "é", "\U0001f642",
    "%s%n%x", "{}", "CON", "-", ".hidden", "a" * 64, "a" * 65, "a" * 255, "a" * 256, "pool/" + "a" * 256,
)
# fmt: on


def _pool_refs(w: World) -> tuple[list[str], list[str]]:
    """(pool names that reach the pool, pool names around it that must not be scored)."""
    data = w.server.config.data_root
    valid = [POOL, f"{POOL}/", f"./{POOL}", f"{POOL}/.", f"empty/../{POOL}", str(data / POOL)]
    around = [
        "escape",
        "../outside",
        str(w.root / "outside"),
        "file.txt",
        "empty",
        f"{POOL}/manifest.json",
        f"{POOL}/shard-00000",
        f"{POOL}/shard-00000/images.npy",
        "missing",
        str(data),
        ".",
    ]
    return valid, around


def _hints(w: World) -> dict[str, list[Any]]:
    """Valid values by field name, whichever message the field is in: what gets a request past
    the first checks. A field without one gets small ordinary values in the valid mode."""
    valid_pools, _ = _pool_refs(w)
    image = np.zeros((1, C, H, W), np.uint8).tobytes()
    roi = np.ones((1, H, W), np.uint8).tobytes()
    return {
        "name": [MODEL, *FUZZ_NAMES],
        "version": [0, 1, 2],
        "pool": valid_pools,
        "top_k": list(range(1, POOL_SIZE + 1)),
        "start": list(range(POOL_SIZE + 1)),
        "stop": list(range(POOL_SIZE + 1)),
        "ids": w.ids,
        "exclude_ids": w.ids,
        "lam": [0.0, 0.3, 1.0],
        "pixel_dtype": ["uint8", "uint16", "<u1"],
        "images": [image],
        "rois": [roi, bytes(H * W)],
        "sha256": [hashlib.sha256(w.model_bytes).hexdigest()],
        "size_bytes": [len(w.model_bytes)],
        "chunk": [w.model_bytes, w.model_bytes[:100]],
        "seed": [0, 1],
    }


def _pick(values: Sequence[Any]) -> st.SearchStrategy[Any]:
    """sampled_from without the values in the strategy's repr (a model is 360 kB of it, and
    hypothesis builds that repr)."""
    values = list(values)
    return st.integers(0, len(values) - 1).map(values.__getitem__)


def _wild_strings(w: World) -> st.SearchStrategy[str]:
    _, around = _pool_refs(w)
    # Long strings up to a megabyte, as a length that shrinks (a failure shows the shortest).
    long = st.integers(256, 1 << 20).map(lambda n: "x" * n)
    return st.one_of(st.sampled_from(_NASTY_STRINGS + tuple(around)), st.text(max_size=24), long)


def _scalar(f: FieldDescriptor, mode: str, w: World) -> st.SearchStrategy[Any]:
    """One value of a non-message field. mode: 'valid' (hints, small values), 'wild' (edges,
    nasty values), 'mixed' (either, per field)."""
    if mode == "mixed":
        return st.one_of(_scalar(f, "valid", w), _scalar(f, "wild", w))
    hint = _hints(w).get(f.name)
    t = f.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        if mode == "valid":
            ok = [v for v in hint or [] if isinstance(v, int) and lo <= v <= hi]
            return st.sampled_from(ok) if ok else st.integers(max(lo, 0), min(hi, 3))
        edges = [v for v in _INT_EDGES if lo <= v <= hi]
        return st.one_of(st.sampled_from(edges), st.integers(lo, hi))
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        if mode == "valid":
            return st.sampled_from(hint) if hint else st.floats(0.0, 1.0, width=width)
        specials = [v for v in _SPECIAL_FLOATS if width == 64 or abs(v) < 1e38 or not math.isfinite(v)]
        return st.one_of(st.sampled_from(specials), st.floats(width=width))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        if mode == "valid" or getattr(f.enum_type, "is_closed", False):  # a closed enum cannot hold others
            return st.sampled_from(known)
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
    if t == FieldDescriptor.TYPE_STRING:
        if mode == "valid":
            strings = [v for v in hint or [] if isinstance(v, str)]
            return (
                st.sampled_from(strings) if strings else st.text("abcdefghijklmnopqrstuvwxyz_", max_size=12)
            )
        return _wild_strings(w)
    if t == FieldDescriptor.TYPE_BYTES:
        if mode == "valid":
            blobs = [v for v in hint or [] if isinstance(v, bytes)]
            return _pick(blobs) if blobs else st.binary(max_size=8)
        big = st.sampled_from([b"\x00" * (1 << 20), b"\xff" * (C * H * W + 1), b"\x01" * (H * W)])
        return st.one_of(st.binary(max_size=512), big)
    raise AssertionError(f"no strategy for field {f.full_name} of type {t}")


def _value(f: FieldDescriptor, mode: str, w: World, depth: int) -> st.SearchStrategy[Any]:
    """A field's value: a scalar, a message, a list (repeated) or a dict (map)."""
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        key = _value(f.message_type.fields_by_name["key"], mode, w, depth + 1)
        value = _value(f.message_type.fields_by_name["value"], mode, w, depth + 1)
        return st.dictionaries(key, value, max_size=3)
    if f.message_type is not None:
        one = message_strategy(f.message_type, mode, w, depth + 1)
    else:
        one = _scalar(f, mode, w)
    if not f.is_repeated:
        return one
    lists = st.lists(one, max_size=2 if mode == "valid" else 4)
    if mode == "valid":
        return lists
    # One value many times: past the per-message limits (MAX_STREAM_BATCH is 4096), but not a
    # megabyte string 5000 times: a few megabytes in all.
    return st.one_of(lists, one.map(lambda v: [v] * max(1, min(5000, (4 << 20) // _size(v)))))


def _size(value: Any) -> int:
    if isinstance(value, Message):
        return max(1, value.ByteSize())
    return max(1, len(value)) if isinstance(value, str | bytes) else 8


def _assign(msg: Message, f: FieldDescriptor, value: Any) -> None:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        target = getattr(msg, f.name)
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.is_repeated:
        target = getattr(msg, f.name)
        for v in value:
            if isinstance(v, Message):
                target.add().CopyFrom(v)
            else:
                target.append(v)
    elif isinstance(value, Message):
        getattr(msg, f.name).CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def message_strategy(desc: Descriptor, mode: str, w: World, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type `desc`: each field set or left unset; of each oneof (proto3 `optional`
    included), one member or none."""
    key = (desc.full_name, mode, depth)
    if key in w.strategies:
        return w.strategies[key]
    cls = message_factory.GetMessageClass(desc)
    if depth > 4:  # a recursive message type: stop nesting
        w.strategies[key] = st.just(cls())
        return w.strategies[key]
    parts: dict[str, st.SearchStrategy[Any]] = {}
    in_oneof = set()
    for oneof in desc.oneofs:
        members = list(oneof.fields)
        in_oneof.update(f.name for f in members)
        choices = [st.tuples(st.just(f), _value(f, mode, w, depth)) for f in members]
        parts[f"oneof {oneof.name}"] = st.one_of(st.none(), *choices)
    for f in desc.fields:
        if f.name not in in_oneof:
            parts[f.name] = st.one_of(st.none(), st.tuples(st.just(f), _value(f, mode, w, depth)))

    def build(chosen: dict[str, Any]) -> Message:
        msg = cls()
        for item in chosen.values():
            if item is not None:
                _assign(msg, *item)
        return msg

    w.strategies[key] = st.fixed_dictionaries(parts).map(build)
    return w.strategies[key]


def requests_strategy(w: World, method: MethodDescriptor) -> st.SearchStrategy[list[Message]]:
    """What one call sends: one request, or 0..3 on a client stream; each message valid-biased,
    wild, or mixed field by field."""
    one = st.one_of(*(message_strategy(method.input_type, mode, w) for mode in ("valid", "mixed", "wild")))
    if method.client_streaming:
        return st.lists(one, max_size=3)
    return one.map(lambda m: [m])

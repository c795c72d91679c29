"""Reading the fp32 scoring graph a conversion starts from, and writing what it made, both
through `xgal.core.contract`: the converted graph's metadata records its precision and the
SHA-256 of its own graph, not the fp32 one's."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import onnx

from xgal.core.contract import (
    OUTPUT_NAMES,
    PRECISIONS,
    REQUIRED_INPUTS,
    NotAScoringGraphError,
    ScoringGraphInfo,
    read_metadata,
    write_metadata,
)
from xgal.core.errors import InvalidArgument


def load_fp32_graph(model: str | os.PathLike[str]) -> tuple[onnx.ModelProto, ScoringGraphInfo]:
    """The fp32 scoring graph at `model` and its metadata; InvalidArgument (with the reason)
    for a missing file, a file that is not a scoring graph, or one already converted."""
    where = os.fspath(model)
    if not os.path.isfile(where):
        raise InvalidArgument(f"model file not found: {where}")
    try:
        proto = onnx.load(where)
    except Exception as exc:  # protobuf and onnx raise their own types for a bad file
        raise NotAScoringGraphError(f"{where} is not an ONNX model: {exc}") from None
    info = read_metadata(proto, where)
    inputs = {i.name for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    missing = sorted(REQUIRED_INPUTS - inputs) + [o for o in OUTPUT_NAMES if o not in outputs]
    if missing:
        raise NotAScoringGraphError(f"{where} is not a scoring graph: it lacks {missing}")
    if info.precision != "fp32":
        # Rounding an already rounded graph compounds both errors, and the int8 graph's
        # quantized ops have no FP16 kernels: converting starts from the exported graph.
        raise InvalidArgument(f"{where} is already {info.precision}; convert the fp32 graph it was made from")
    return proto, info


def save_converted(
    proto: onnx.ModelProto, info: ScoringGraphInfo, precision: str, out: str | os.PathLike[str]
) -> Path:
    """Write `proto` to `out` with `info`'s metadata, its precision set and its graph SHA-256
    computed from `proto` as it is now."""
    if precision not in PRECISIONS:
        raise InvalidArgument(f"precision must be one of {PRECISIONS}, got {precision!r}")
    write_metadata(proto, replace(info, precision=precision))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, os.fspath(out))
    return out

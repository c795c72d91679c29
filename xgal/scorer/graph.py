"""What a scoring graph promises (DESIGN.md §1), read back from its ONNX metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

INPUTS = {"image", "roi"}
OPTIONAL_INPUTS = {"target"}
OUTPUTS = ("probs", "entropy", "cam", "dice", "roi_area")
PIXEL_TYPES = {"uint8": "tensor(uint8)", "uint16": "tensor(uint16)"}


class NotAScoringGraphError(ValueError):
    """The file is not an ONNX model, or not one exported by xgal's scoring-graph exporter."""


@dataclass(frozen=True)
class ScoringGraphInfo:
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    pixel_dtype: str
    cam_shape: tuple[int, int]
    target_layer: str
    head: str
    arch: str
    round_index: int
    graph_sha256: str
    version: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_metadata(meta: Mapping[str, str], where: str = "model") -> ScoringGraphInfo:
    """Build the info from `xgal.*` metadata; a missing key names what is wrong."""
    if meta.get("xgal.format", "").split("/")[0] != "xgal-scoring-graph":
        raise NotAScoringGraphError(
            f"{where} is not an xgal scoring graph (no 'xgal.format' metadata); export it with "
            "xgal.trainer.export.export_scoring_graph"
        )
    try:
        return ScoringGraphInfo(
            class_names=tuple(json.loads(meta["xgal.class_names"])),
            input_shape=tuple(int(v) for v in json.loads(meta["xgal.input_shape"])),  # type: ignore[arg-type]
            pixel_dtype=meta["xgal.pixel_dtype"],
            cam_shape=tuple(int(v) for v in json.loads(meta["xgal.cam_shape"])),  # type: ignore[arg-type]
            target_layer=meta["xgal.target_layer"],
            head=meta.get("xgal.head", "unknown"),
            arch=meta.get("xgal.arch", "unknown"),
            round_index=int(meta.get("xgal.round", "0")),
            graph_sha256=meta["xgal.graph_sha256"],
            version=meta.get("xgal.version", "unknown"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise NotAScoringGraphError(f"{where} has incomplete xgal metadata: {exc}") from None


def check_signature(
    inputs: Sequence[tuple[str, str, Sequence[object]]],
    outputs: Sequence[str],
    info: ScoringGraphInfo,
    where: str = "model",
) -> None:
    """Check input names, types and shapes and output names against the metadata."""
    names = {name for name, _, _ in inputs}
    missing_in = INPUTS - names
    missing_out = [o for o in OUTPUTS if o not in outputs]
    if missing_in or missing_out:
        raise NotAScoringGraphError(
            f"{where} is not a scoring graph: missing inputs {sorted(missing_in)} and outputs {missing_out}"
        )
    extra = names - INPUTS - OPTIONAL_INPUTS
    if extra:
        raise NotAScoringGraphError(f"{where} has unexpected inputs {sorted(extra)}")
    by_name = {name: (typ, shape) for name, typ, shape in inputs}
    typ, shape = by_name["image"]
    if info.pixel_dtype not in PIXEL_TYPES or typ != PIXEL_TYPES[info.pixel_dtype]:
        raise NotAScoringGraphError(
            f"{where}: input 'image' is {typ} but the metadata says {info.pixel_dtype}"
        )
    if list(shape[1:]) != list(info.input_shape):
        raise NotAScoringGraphError(
            f"{where}: input 'image' has shape {list(shape)}, metadata says [N, "
            f"{', '.join(map(str, info.input_shape))}]"
        )

"""What a scoring graph promises (DESIGN.md §1): its inputs, outputs and metadata.

The exporter writes this contract and the scorer reads it back, both through this module, so a
rename on one side cannot silently break the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from xgal.core.errors import InvalidArgument

# /2: the learned ROI (LEARNED_ROI_OUTPUTS, `xgal.roi_head`, `xgal.roi_threshold`, `xgal.roi_sources`).
FORMAT = "xgal-scoring-graph/2"
INPUT_NAMES = ("image", "roi", "target")
REQUIRED_INPUTS = frozenset({"image", "roi"})
OUTPUT_NAMES = ("probs", "entropy", "cam", "dice", "roi_area")
# Exported since the diversity step: [N, D] target-layer activations, globally average-pooled
# (for a ResNet's last block, the embedding its classifier reads). Graphs without it still
# score; only a diversity selection needs it.
EMBEDDING = "embedding"
EXPORTED_OUTPUTS = (*OUTPUT_NAMES, EMBEDDING)
# Optional, chosen at export: [N, V, K] class probabilities of V deterministic views of each
# image (itself, then flipped left-right, up-down, both), for the uncertainties over views
# (BALD's formula, the entropy of the mean). Opt-in: ONNX Runtime runs every node of a graph whichever
# outputs are fetched, so V − 1 more forward passes would slow every pool.
VIEW_PROBS = "view_probs"
MAX_VIEWS = 4
# Optional, when the classifier has an ROI head (train/nets/roi_head.py): the predicted ROI as a
# soft map [N, H, W] in [0, 1], the soft Dice of the scaled CAM against that map at or above the
# metadata's `roi_threshold` (a mask, as an expert's ROI is), and that mask's pixel count. The
# scorer measures misalignment against it where the request says so (RoiSource).
ROI_PROB = "roi_prob"
LEARNED_ROI_OUTPUTS = (ROI_PROB, "learned_dice", "learned_roi_area")
ROI_HEADS = ("none", "shared", "shared-detached", "beside")
# What a row's misalignment was measured against (its `roi_source`), as codes in the ranking's
# columns and names in its rows; index = code, and the proto's RowRoi enum values.
ROW_ROI_SOURCES = ("none", "expert", "body", "learned")
# What an engine fetches per batch. `cam` is h·w floats of the target layer per image (a few
# hundred bytes): its range tells a map with evidence from a flat one (the flat-CAM policy).
SCORE_OUTPUTS = ("probs", "entropy", "dice", "roi_area", "cam")
# Stored pixel value that maps to 1.0 before the model's mean/std.
PIXEL_SCALE = {"uint8": 255.0, "uint16": 65535.0}
ONNX_PIXEL_TYPES = {"uint8": "tensor(uint8)", "uint16": "tensor(uint16)"}
# Added to the CAM's min-max range as pytorch-grad-cam does: a flat map scales to exactly zero.
CAM_EPS = 1e-7
PRECISIONS = ("fp32", "fp16", "int8")
# How the map is made from the target layer's activations A and gradient g (train/gradcam.py).
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
_KEYS = frozenset(
    "xgal." + k
    for k in (
        "format version class_names input_shape pixel_dtype cam_shape target_layer head arch round "
        "graph_sha256 precision normalisation cam_method roi_head roi_threshold roi_sources"
    ).split()
)


class NotAScoringGraphError(InvalidArgument):
    """The file is not an ONNX model, or not one exported by xgal's scoring-graph exporter."""


@dataclass(frozen=True)
class Normalisation:
    """pixel -> (pixel / scale - mean) / std, per channel; all inside the graph."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def for_input(
        cls,
        image_shape: Sequence[int],
        pixel_dtype: str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> tuple[tuple[int, int, int], Normalisation]:
        """(C, H, W) and the normalisation, checked; mean 0 and std 1 when not given."""
        if pixel_dtype not in PIXEL_SCALE:
            raise InvalidArgument(f"pixel_dtype must be one of {sorted(PIXEL_SCALE)}, got {pixel_dtype!r}")
        if len(image_shape) != 3 or any(int(s) <= 0 for s in image_shape):
            raise InvalidArgument(
                f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}"
            )
        c, h, w = (int(s) for s in image_shape)
        mean_t = tuple(float(v) for v in (mean if mean is not None else [0.0] * c))
        std_t = tuple(float(v) for v in (std if std is not None else [1.0] * c))
        if len(mean_t) != c or len(std_t) != c:
            raise InvalidArgument(
                f"mean and std need one value per channel ({c}), got {len(mean_t)} and {len(std_t)}"
            )
        if any(s <= 0 for s in std_t):
            raise InvalidArgument(f"std must be positive, got {std_t}")
        return (c, h, w), cls(PIXEL_SCALE[pixel_dtype], mean_t, std_t)


@dataclass(frozen=True)
class ScoringGraphInfo:
    """The metadata a scoring graph carries in its ONNX properties (`xgal.*` keys)."""

    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    pixel_dtype: str
    cam_shape: tuple[int, int]
    target_layer: str
    head: str = "unknown"
    arch: str = "unknown"
    round_index: int = 0
    graph_sha256: str = ""
    version: str = "unknown"
    normalisation: Normalisation | None = None
    precision: str = "fp32"
    cam_method: str = "gradcam"
    roi_head: str = "none"  # ROI_HEADS: "none", or the kind of head behind LEARNED_ROI_OUTPUTS
    roi_threshold: float = 0.5  # the soft map's value at and above which a pixel is in the ROI
    extra: Mapping[str, str] = field(default_factory=dict)  # other keys, kept as they are

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_learned_roi(self) -> bool:
        return self.roi_head != "none"

    @property
    def roi_sources(self) -> tuple[str, ...]:
        """What this graph can measure misalignment against (the body is found outside it)."""
        return ("expert", "body", "learned") if self.has_learned_roi else ("expert", "body")

    def to_metadata(self) -> dict[str, str]:
        meta = {
            **self.extra,
            "xgal.format": FORMAT,
            "xgal.version": self.version,
            "xgal.class_names": json.dumps(list(self.class_names)),
            "xgal.input_shape": json.dumps(list(self.input_shape)),
            "xgal.pixel_dtype": self.pixel_dtype,
            "xgal.cam_shape": json.dumps(list(self.cam_shape)),
            "xgal.target_layer": self.target_layer,
            "xgal.head": self.head,
            "xgal.arch": self.arch,
            "xgal.round": str(int(self.round_index)),
            "xgal.graph_sha256": self.graph_sha256,
            "xgal.precision": self.precision,
            "xgal.cam_method": self.cam_method,
            "xgal.roi_head": self.roi_head,
            "xgal.roi_threshold": repr(float(self.roi_threshold)),
            "xgal.roi_sources": json.dumps(list(self.roi_sources)),
        }
        if self.normalisation is not None:
            meta["xgal.normalisation"] = json.dumps(asdict(self.normalisation))
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], where: str = "model") -> ScoringGraphInfo:
        """Read `xgal.*` metadata back; a missing or malformed key names what is wrong."""
        if meta.get("xgal.format", "").split("/")[0] != FORMAT.split("/")[0]:
            raise NotAScoringGraphError(
                f"{where} is not an xgal scoring graph (no 'xgal.format' metadata); export it with "
                "xgal.export.graph.export_scoring_graph"
            )
        try:
            norm = meta.get("xgal.normalisation")
            n = json.loads(norm) if norm else None
            info = cls(
                class_names=tuple(str(c) for c in json.loads(meta["xgal.class_names"])),
                input_shape=_ints(json.loads(meta["xgal.input_shape"]), 3),  # type: ignore[arg-type]
                pixel_dtype=meta["xgal.pixel_dtype"],
                cam_shape=_ints(json.loads(meta["xgal.cam_shape"]), 2),  # type: ignore[arg-type]
                target_layer=meta["xgal.target_layer"],
                head=meta.get("xgal.head", "unknown"),
                arch=meta.get("xgal.arch", "unknown"),
                round_index=int(meta.get("xgal.round", "0")),
                graph_sha256=meta["xgal.graph_sha256"],
                version=meta.get("xgal.version", "unknown"),
                normalisation=(
                    Normalisation(float(n["scale"]), tuple(n["mean"]), tuple(n["std"])) if n else None
                ),
                precision=meta.get("xgal.precision", "fp32"),
                cam_method=meta.get("xgal.cam_method", "gradcam"),  # graphs from before the choice
                roi_head=meta.get("xgal.roi_head", "none"),  # graphs of format /1 have none
                roi_threshold=float(meta.get("xgal.roi_threshold", "0.5")),
                extra={k: v for k, v in meta.items() if k not in _KEYS},
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise NotAScoringGraphError(f"{where} has incomplete xgal metadata: {exc!r}") from None
        if info.pixel_dtype not in PIXEL_SCALE:
            raise NotAScoringGraphError(
                f"{where}: pixel dtype {info.pixel_dtype!r} is not one of {sorted(PIXEL_SCALE)}"
            )
        if info.num_classes < 2:
            raise NotAScoringGraphError(f"{where}: a scoring graph needs at least 2 classes")
        if info.cam_method not in CAM_METHODS:
            raise NotAScoringGraphError(
                f"{where}: CAM method {info.cam_method!r} is not one of {CAM_METHODS}"
            )
        if info.roi_head not in ROI_HEADS:
            raise NotAScoringGraphError(f"{where}: ROI head {info.roi_head!r} is not one of {ROI_HEADS}")
        if not 0.0 < info.roi_threshold < 1.0:
            raise NotAScoringGraphError(f"{where}: ROI threshold {info.roi_threshold} is not in (0, 1)")
        if info.precision not in PRECISIONS:
            raise NotAScoringGraphError(f"{where}: precision {info.precision!r} is not one of {PRECISIONS}")
        return info

    def describe(self) -> dict[str, Any]:
        """A flat, JSON-ready summary for people (`xgal model info`)."""
        d = asdict(self)
        d["num_classes"] = self.num_classes
        d["roi_sources"] = list(self.roi_sources)
        return d


def _ints(values: Sequence[Any], n: int) -> tuple[int, ...]:
    if len(values) != n:
        raise ValueError(f"expected {n} sizes, got {list(values)}")
    return tuple(int(v) for v in values)


def graph_sha256(model_proto: Any) -> str:
    """SHA-256 of an ONNX model's graph alone (ops and weights), so its metadata can carry it."""
    return hashlib.sha256(model_proto.graph.SerializeToString(deterministic=True)).hexdigest()


def read_metadata(model_proto: Any, where: str = "model") -> ScoringGraphInfo:
    """The info of an ONNX `ModelProto` (duck-typed: this module does not import onnx)."""
    return ScoringGraphInfo.from_metadata({p.key: p.value for p in model_proto.metadata_props}, where)


def write_metadata(model_proto: Any, info: ScoringGraphInfo) -> ScoringGraphInfo:
    """Replace the model's metadata with `info`, its graph SHA-256 computed from the graph as it
    is now (after an export, a quantization or an FP16 conversion). Returns the info written."""
    info = replace(info, graph_sha256=graph_sha256(model_proto))
    del model_proto.metadata_props[:]
    for key, value in sorted(info.to_metadata().items()):
        model_proto.metadata_props.add(key=key, value=value)
    return info


def check_signature(
    inputs: Sequence[tuple[str, str, Sequence[object]]],
    outputs: Sequence[str],
    info: ScoringGraphInfo,
    where: str = "model",
) -> None:
    """Check input names, types and shapes and output names against the metadata."""
    names = {name for name, _, _ in inputs}
    missing_in = REQUIRED_INPUTS - names
    need = OUTPUT_NAMES + (LEARNED_ROI_OUTPUTS if info.has_learned_roi else ())
    missing_out = [o for o in need if o not in outputs]
    if missing_in or missing_out:
        raise NotAScoringGraphError(
            f"{where} is not a scoring graph: missing inputs {sorted(missing_in)} and outputs {missing_out}"
        )
    extra = names - set(INPUT_NAMES)
    if extra:
        raise NotAScoringGraphError(f"{where} has unexpected inputs {sorted(extra)}")
    by_name = {name: (typ, shape) for name, typ, shape in inputs}
    typ, shape = by_name["image"]
    if typ != ONNX_PIXEL_TYPES[info.pixel_dtype]:
        raise NotAScoringGraphError(
            f"{where}: input 'image' is {typ} but the metadata says {info.pixel_dtype}"
        )
    if list(shape[1:]) != list(info.input_shape):
        raise NotAScoringGraphError(
            f"{where}: input 'image' has shape {list(shape)}, metadata says [N, "
            f"{', '.join(map(str, info.input_shape))}]"
        )

"""Export a classifier, with its Grad-CAM gradient path, as one ONNX scoring graph.

    export_scoring_graph(model, "features.denseblock4.denselayer16.conv2", "round3.onnx",
                         image_shape=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         class_names=["edema", "necrotic", "enhancing"])

The graph's contract (inputs, outputs, metadata) is DESIGN.md §1; `xgal.scorer.graph` reads it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import xgal
from xgal.trainer.gradpath import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    Normalisation,
    ScoringModule,
    trace_scoring_module,
)

PIXEL_SCALE = {"uint8": 255.0, "uint16": 65535.0}
_TORCH_DTYPE = {"uint8": torch.uint8, "uint16": torch.uint16}
FORMAT = "xgal-scoring-graph/1"


def _check_target_layer(model: nn.Module, target_layer: str, probe: torch.Tensor) -> tuple[int, int]:
    """Fail early, naming the problem, if `target_layer` cannot carry a Grad-CAM."""
    try:
        layer = model.get_submodule(target_layer)
    except AttributeError:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        hint = ", ".join(convs[-3:]) if convs else "none"
        raise ValueError(
            f"unknown target layer {target_layer!r}: the model has no such submodule "
            f"(its last convolutions are: {hint})"
        ) from None
    seen: list[object] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"target layer {target_layer!r} is never called in the model's forward")
    out = seen[-1]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        desc = f"a {out.dim()}-D tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"target layer {target_layer!r} outputs {desc}; Grad-CAM needs a 4-D feature map "
            "[N, C, h, w] (choose a convolution or a block of them)"
        )
    return int(out.shape[2]), int(out.shape[3])


def _graph_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the graph alone (weights and ops), so the metadata can carry it."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs every step and warns about optional torchvision ops; a user wants
    # one line per round, not forty.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
    finally:
        logger.setLevel(level)


def _finish(model_proto: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    graph = model_proto.graph
    # `target` becomes optional: an initializer of the same name is its default value
    # (one element, -1 = the predicted class), which broadcasts over the batch.
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "target"))
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    # Its length is 1 or N, so it gets its own symbol, and the exporter's intermediate shapes
    # (which assume N) are dropped for the runtime to infer again.
    next(v for v in graph.input if v.name == "target").type.tensor_type.shape.dim[0].dim_param = "T"
    del graph.value_info[:]
    model_proto.producer_name = "xgal"
    model_proto.producer_version = xgal.__version__
    model_proto.doc_string = "xgal scoring graph: probs, entropy, Grad-CAM, Dice vs ROI (DESIGN.md §1)"
    metadata = dict(metadata, **{"xgal.graph_sha256": _graph_sha256(model_proto)})
    del model_proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model_proto.metadata_props.add(key=key, value=value)
    return model_proto


def export_scoring_graph(
    model: nn.Module,
    target_layer: str,
    path: str | os.PathLike[str],
    *,
    image_shape: Sequence[int],
    pixel_dtype: str = "uint8",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    round_index: int = 0,
) -> Path:
    """Write the scoring graph of `model` (Grad-CAM at `target_layer`) to `path`.

    `image_shape` is (C, H, W) of the pool's pixels, which enter the graph as stored
    (`pixel_dtype` uint8 or uint16) and are scaled to [0, 1], then standardised with the
    per-channel `mean` and `std` when given. The batch dimension is dynamic. Returns the path.
    """
    if pixel_dtype not in PIXEL_SCALE:
        raise ValueError(f"pixel_dtype must be one of {sorted(PIXEL_SCALE)}, got {pixel_dtype!r}")
    if len(image_shape) != 3 or any(int(s) <= 0 for s in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    mean_t = tuple(float(v) for v in (mean if mean is not None else [0.0] * c))
    std_t = tuple(float(v) for v in (std if std is not None else [1.0] * c))
    if len(mean_t) != c or len(std_t) != c:
        raise ValueError(f"mean and std need one value per channel ({c}), got {len(mean_t)} and {len(std_t)}")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"std must be positive, got {std_t}")

    model = copy.deepcopy(model).cpu().eval()
    probe = torch.zeros(2, c, h, w)
    cam_h, cam_w = _check_target_layer(model, target_layer, probe)
    with torch.no_grad():
        num_classes = int(model(probe).shape[1])
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names but the model scores {num_classes} classes")

    norm = Normalisation(PIXEL_SCALE[pixel_dtype], mean_t, std_t)
    module = ScoringModule(model, target_layer, norm).eval()
    gen = torch.Generator().manual_seed(0)
    hi = 256 if pixel_dtype == "uint8" else 65536
    example = (
        torch.randint(0, hi, (2, c, h, w), generator=gen).to(_TORCH_DTYPE[pixel_dtype]),
        torch.randint(0, 2, (2, h, w), generator=gen).to(torch.uint8),
        torch.tensor([-1, 0], dtype=torch.int64),
    )
    try:
        traced = trace_scoring_module(module, example)
    except RuntimeError as exc:
        if "not have been used in the graph" in str(exc):
            raise ValueError(
                f"target layer {target_layer!r} does not influence the class scores, so it has "
                "no gradient for Grad-CAM"
            ) from None
        raise

    batch = torch.export.Dim("N", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(
            traced,
            example,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    metadata = {
        "xgal.format": FORMAT,
        "xgal.version": xgal.__version__,
        "xgal.class_names": json.dumps(names),
        "xgal.input_shape": json.dumps([c, h, w]),
        "xgal.pixel_dtype": pixel_dtype,
        "xgal.normalisation": json.dumps({"scale": norm.scale, "mean": norm.mean, "std": norm.std}),
        "xgal.target_layer": target_layer,
        "xgal.cam_shape": json.dumps([cam_h, cam_w]),
        "xgal.head": str(getattr(model, "head_kind", "unknown")),
        "xgal.arch": str(getattr(model, "arch", type(model).__name__)),
        "xgal.round": str(int(round_index)),
    }
    proto = _finish(program.model_proto, metadata)
    onnx.checker.check_model(proto, full_check=True)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a reader never sees half a model.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


class _ForwardOnly(nn.Module):
    """Stored pixels in, probabilities out: what a plain classifier export runs."""

    def __init__(self, model: nn.Module, norm: Normalisation) -> None:
        super().__init__()
        self.model = model
        self.scale = norm.scale
        c = len(norm.mean)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image.to(torch.float32) / self.scale - self.mean) / self.std).softmax(1)


def export_forward_graph(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    image_shape: Sequence[int],
    pixel_dtype: str = "uint8",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """The same network without Grad-CAM (input `image`, output `probs`): the throughput
    ceiling a scoring graph is measured against."""
    c, h, w = (int(v) for v in image_shape)
    norm = Normalisation(
        PIXEL_SCALE[pixel_dtype],
        tuple(float(v) for v in (mean if mean is not None else [0.0] * c)),
        tuple(float(v) for v in (std if std is not None else [1.0] * c)),
    )
    module = _ForwardOnly(copy.deepcopy(model).cpu().eval(), norm).eval()
    example = (torch.zeros(2, c, h, w, dtype=_TORCH_DTYPE[pixel_dtype]),)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            example,
            input_names=["image"],
            output_names=["probs"],
            dynamic_shapes=({0: torch.export.Dim("N", min=1)},),
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(program.model_proto.SerializeToString())
    return out

"""Export a classifier, with its Grad-CAM gradient path, as one ONNX scoring graph.

    export_scoring_graph(model, "features.denseblock4.denselayer16.conv2", "round3.onnx",
                         image_shape=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         class_names=["edema", "necrotic", "enhancing"])

The graph's contract (inputs, outputs, metadata) is DESIGN.md §1, written down once in
`xgal.core.contract`, which the scorer reads it back with.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import torch
from torch import nn

import xgal
from xgal.core.contract import (
    CAM_METHODS,
    EXPORTED_OUTPUTS,
    INPUT_NAMES,
    LEARNED_ROI_OUTPUTS,
    MAX_VIEWS,
    VIEW_PROBS,
    Normalisation,
    ScoringGraphInfo,
    write_metadata,
)
from xgal.core.errors import InvalidArgument
from xgal.export.gradpath import ScoringModule, trace_scoring_module
from xgal.export.onnx_files import quiet_exporter, write_atomically
from xgal.train.nets.roi_head import DEFAULT_ROI_THRESHOLD

_TORCH_DTYPE = {"uint8": torch.uint8, "uint16": torch.uint16}


def _check_target_layer(model: nn.Module, target_layer: str, probe: torch.Tensor) -> tuple[int, int]:
    """Fail early, naming the problem, if `target_layer` cannot carry a Grad-CAM."""
    try:
        layer = model.get_submodule(target_layer)
    except AttributeError:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        hint = ", ".join(convs[-3:]) if convs else "none"
        raise InvalidArgument(
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
        raise InvalidArgument(f"target layer {target_layer!r} is never called in the model's forward")
    out = seen[-1]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        desc = f"a {out.dim()}-D tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidArgument(
            f"target layer {target_layer!r} outputs {desc}; Grad-CAM needs a 4-D feature map "
            "[N, C, h, w] (choose a convolution or a block of them)"
        )
    return int(out.shape[2]), int(out.shape[3])


def _finish(model_proto: onnx.ModelProto, info: ScoringGraphInfo) -> onnx.ModelProto:
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
    write_metadata(model_proto, info)
    return model_proto


@dataclass
class _Template:
    """The unoptimised graph of one traced architecture and where its weights sit in it."""

    signature: tuple
    proto: bytes  # before the ONNX optimizer, so every initializer is a model tensor as stored
    weights: dict[str, str]  # ONNX initializer name -> key in the ScoringModule's state_dict
    cam_shape: tuple[int, int]
    num_classes: int


def _signature(model: nn.Module) -> tuple:
    """What must be equal for a traced graph to serve another model: the module tree and the
    names, shapes and dtypes of its tensors."""
    layout = tuple((name, type(m).__qualname__) for name, m in model.named_modules())
    state = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    return layout, state


def _weight_map(traced: torch.fx.GraphModule, module: ScoringModule) -> dict[str, str] | None:
    """Which state_dict entry each constant of the traced graph is (by identity), or None when
    a floating-point tensor of the model is not one of them (e.g. folded into a literal while
    tracing): then the graph cannot be refilled and every export traces anew."""
    state = module.state_dict(keep_vars=True)
    key_of = {id(v): k for k, v in state.items()}
    weights = {}
    for node in traced.graph.nodes:
        if node.op == "get_attr":
            key = key_of.get(id(getattr(traced, node.target)))
            if key is None:
                return None
            weights[node.target] = key
    covered = {id(state[k]) for k in weights.values()}
    if any(v.is_floating_point() and id(v) not in covered for v in state.values()):
        return None
    return weights


class ScoringGraphExporter:
    """Exports the scoring graph (DESIGN.md §1) of models that share one architecture.

    Tracing forward + backward and running the ONNX exporter takes seconds (about 8 s for the
    demo's small CNN on 2 cores), every round. The graph depends on the architecture, not on
    the weights, so the first export keeps the exporter's unoptimised graph; a later model with
    the same module tree and tensor shapes gets a copy of it with its own weights, then the
    same ONNX optimizer `torch.onnx.export(optimize=True)` runs (a fraction of a second).
    A model of another shape is traced anew.
    """

    def __init__(
        self,
        target_layer: str,
        *,
        image_shape: Sequence[int],
        pixel_dtype: str = "uint8",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        cam_method: str = "gradcam",
        views: int = 1,
        roi_threshold: float = DEFAULT_ROI_THRESHOLD,
    ) -> None:
        """`views` > 1 adds `view_probs`: the probabilities of that many flipped views (up to
        MAX_VIEWS), for BALD; each costs a forward pass per image. A model with an ROI head
        gets LEARNED_ROI_OUTPUTS, its mask the soft map at or above `roi_threshold`."""
        if not 0.0 < roi_threshold < 1.0:
            raise InvalidArgument(f"roi_threshold must lie in (0, 1), got {roi_threshold}")
        self.roi_threshold = float(roi_threshold)
        if not 1 <= views <= MAX_VIEWS:
            raise InvalidArgument(f"views must be 1 to {MAX_VIEWS}, got {views}")
        self.views = views
        if cam_method not in CAM_METHODS:
            raise InvalidArgument(f"cam_method must be one of {', '.join(CAM_METHODS)}; got {cam_method!r}")
        self.cam_method = cam_method
        self.target_layer = target_layer
        self.image_shape, self.norm = Normalisation.for_input(image_shape, pixel_dtype, mean, std)
        self.pixel_dtype = pixel_dtype
        self.class_names = list(class_names) if class_names is not None else None
        self._template: _Template | None = None
        self.traces = 0  # how many exports traced the model (the rest reused the graph)

    @property
    def settings(self) -> dict[str, object]:
        """What the graph is made for, apart from the model: two exporters with equal settings
        export any model identically."""
        return {
            "target_layer": self.target_layer,
            "image_shape": self.image_shape,
            "pixel_dtype": self.pixel_dtype,
            "normalisation": self.norm,
            "class_names": self.class_names,
            "cam_method": self.cam_method,
            "views": self.views,
            "roi_threshold": self.roi_threshold,
        }

    def export(self, model: nn.Module, path: str | os.PathLike[str], *, round_index: int = 0) -> Path:
        """Write the scoring graph of `model` to `path` (atomically) and return the path."""
        # A plain contiguous copy: training may leave weights in channels_last.
        model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
        template = self._template
        if template is None or template.signature != _signature(model):
            template = self._trace(model)
        module = self._module(model)
        proto = onnx.ModelProto.FromString(template.proto)
        state = module.state_dict()
        for init in proto.graph.initializer:
            if init.name in template.weights:
                value = state[template.weights[init.name]].detach().contiguous().numpy()
                init.CopyFrom(onnx.numpy_helper.from_array(value, init.name))
        program = torch.onnx.ONNXProgram(onnx_ir.from_proto(proto), None)
        with quiet_exporter():
            program.optimize()

        # Their count was checked against the model's classes when the graph was traced.
        names = self.class_names or [f"class{i}" for i in range(template.num_classes)]
        info = ScoringGraphInfo(
            class_names=tuple(names),
            input_shape=self.image_shape,
            pixel_dtype=self.pixel_dtype,
            cam_shape=template.cam_shape,
            target_layer=self.target_layer,
            head=str(getattr(model, "head_kind", "unknown")),
            arch=str(getattr(model, "arch", type(model).__name__)),
            round_index=int(round_index),
            version=xgal.__version__,
            normalisation=self.norm,
            cam_method=self.cam_method,
            roi_head=str(getattr(model, "roi_head_kind", "none")),
            roi_threshold=self.roi_threshold,
        )
        proto = _finish(onnx_ir.to_proto(program.model), info)
        onnx.checker.check_model(proto, full_check=True)
        return write_atomically(proto, Path(path))

    def _module(self, model: nn.Module) -> ScoringModule:
        return ScoringModule(
            model, self.target_layer, self.norm, self.cam_method, self.views, self.roi_threshold
        ).eval()

    def _trace(self, model: nn.Module) -> _Template:
        c, h, w = self.image_shape
        probe = torch.zeros(2, c, h, w)
        cam_shape = _check_target_layer(model, self.target_layer, probe)
        module = self._module(model)
        with torch.no_grad():
            num_classes = int(model(probe).shape[1])
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise InvalidArgument(
                f"class_names has {len(self.class_names)} names but the model scores {num_classes} classes"
            )
        gen = torch.Generator().manual_seed(0)
        hi = 256 if self.pixel_dtype == "uint8" else 65536
        example = (
            torch.randint(0, hi, (2, c, h, w), generator=gen).to(_TORCH_DTYPE[self.pixel_dtype]),
            torch.randint(0, 2, (2, h, w), generator=gen).to(torch.uint8),
            torch.tensor([-1, 0], dtype=torch.int64),
        )
        try:
            traced = trace_scoring_module(module, example)
        except RuntimeError as exc:
            if "not have been used in the graph" in str(exc):
                raise InvalidArgument(
                    f"target layer {self.target_layer!r} does not influence the class scores, so it "
                    "has no gradient for Grad-CAM"
                ) from None
            raise
        batch = torch.export.Dim("N", min=1)
        try:
            with quiet_exporter():
                program = torch.onnx.export(
                    traced,
                    example,
                    input_names=list(INPUT_NAMES),
                    output_names=[
                        *EXPORTED_OUTPUTS,
                        *([VIEW_PROBS] if self.views > 1 else []),
                        *(LEARNED_ROI_OUTPUTS if module.learned_roi else []),
                    ],
                    dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
                    dynamo=True,
                    optimize=False,  # after the weights are in (export)
                    verbose=False,
                )
        except torch.onnx.OnnxExporterError as exc:
            # The exporter names an op it has no translation for only in its messages, somewhere
            # along the chain of causes; any other failure is a defect and keeps its traceback.
            found: list[str] = []
            cause: BaseException | None = exc
            while cause is not None:
                found += re.findall(r"No ONNX function found for <OpOverload\(op='(aten\.\w+)'", str(cause))
                cause = cause.__cause__
            ops = sorted(set(found))
            if not ops:
                raise
            raise InvalidArgument(
                f"cannot export the scoring graph: the ONNX exporter has no translation for ATen "
                f"operator{'s' if len(ops) > 1 else ''} {', '.join(ops)}, which the model (or its "
                f"gradient back to target layer {self.target_layer!r}) uses; write that part of the "
                "model with other torch operators, or choose a target layer after it"
            ) from exc
        self.traces += 1
        weights = _weight_map(traced, module)
        template = _Template(
            signature=_signature(model),
            proto=program.model_proto.SerializeToString(),
            weights=weights or {},
            cam_shape=cam_shape,
            num_classes=num_classes,
        )
        # Without a complete weight map the graph holds this model's weights only: use it once.
        self._template = template if weights is not None else None
        return template


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
    cam_method: str = "gradcam",
    views: int = 1,
) -> Path:
    """Write the scoring graph of `model` (Grad-CAM, or another `cam_method` of CAM_METHODS,
    at `target_layer`) to `path`.

    `image_shape` is (C, H, W) of the pool's pixels, which enter the graph as stored
    (`pixel_dtype` uint8 or uint16) and are scaled to [0, 1], then standardised with the
    per-channel `mean` and `std` when given. The batch dimension is dynamic. Returns the path.
    Exporting the same architecture every round: keep one `ScoringGraphExporter`.
    """
    exporter = ScoringGraphExporter(
        target_layer,
        image_shape=image_shape,
        pixel_dtype=pixel_dtype,
        mean=mean,
        std=std,
        class_names=class_names,
        cam_method=cam_method,
        views=views,
    )
    return exporter.export(model, path, round_index=round_index)

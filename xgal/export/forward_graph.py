"""The forward-only graph: the same network without Grad-CAM, the throughput ceiling a scoring
graph is measured against."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from xgal.core.contract import Normalisation
from xgal.export.onnx_files import quiet_exporter
from xgal.train.gradcam import PixelNormalise

_TORCH_DTYPE = {"uint8": torch.uint8, "uint16": torch.uint16}


class _ForwardOnly(nn.Module):
    """Stored pixels in, probabilities out: what a plain classifier export runs."""

    def __init__(self, model: nn.Module, norm: Normalisation) -> None:
        super().__init__()
        self.model = model
        self.pixels = PixelNormalise(norm)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(self.pixels(image)).softmax(1)


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
    (c, h, w), norm = Normalisation.for_input(image_shape, pixel_dtype, mean, std)
    module = _ForwardOnly(copy.deepcopy(model).cpu().eval(), norm).eval()
    example = (torch.zeros(2, c, h, w, dtype=_TORCH_DTYPE[pixel_dtype]),)
    with quiet_exporter():
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

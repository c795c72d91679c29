"""The Grad-CAM scoring computation as a traceable module, and its trace to an exportable graph.

`ScoringModule` computes, for uint8/uint16 pixels and ROI masks, what DESIGN.md §1 asks of the
scoring graph: probabilities, entropy, the Grad-CAM map (with the gradient taken by autograd
through whatever follows the target layer), the soft Dice against the ROI and the ROI area.

`torch.onnx.export` cannot export `torch.autograd.grad`, so `trace_scoring_module` first runs
the module under `make_fx`, which records the forward *and* the backward as plain ATen ops.
The few of those the ONNX exporter cannot translate (`aten.convolution_backward`, torch.cdist's
ops, the pooling gradients, ...) are rewritten while tracing into ops it can, by the table in
`xgal.export.decompositions`. Autograd's own derivative formulas thus define the gradient
path: it is exact for heads made of torch's usual layers (normalisations, activations,
concatenation, pooling, dropout in eval, linear, L2 normalisation, prototype distances,
further and transposed convolutions). An op that is still untranslatable is refused at export,
by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from xgal.core.contract import Normalisation
from xgal.export.decompositions import tracing_decompositions
from xgal.train.gradcam import CAM_FUNCTIONS, PixelNormalise, scale_cam, soft_dice

# The views of `view_probs`, in order: the image, flipped left-right, up-down, both.
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


class ScoringModule(nn.Module):
    """Everything the ranking needs, for one batch, in one forward call (the outputs in
    `EXPORTED_OUTPUTS` order, then `view_probs` when views > 1, then LEARNED_ROI_OUTPUTS when the
    model has an ROI head)."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: str,
        norm: Normalisation,
        cam_method: str = "gradcam",
        views: int = 1,
        roi_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.roi_threshold = float(roi_threshold)
        self.learned_roi = getattr(model, "roi_head", None) is not None
        self.views = views  # > 1: also the probabilities of flipped views (`view_probs`)
        self.cam = CAM_FUNCTIONS[cam_method]
        self.model = model
        self.target = model.get_submodule(target_layer)
        self.pixels = PixelNormalise(norm)

    def forward(self, image: Tensor, roi: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        x = self.pixels(image)
        captured: list[Tensor] = []

        def hook(_mod: nn.Module, _inp: object, out: Tensor) -> Tensor:
            # A leaf that requires grad: d score / d A without any gradient to the weights.
            # The clone keeps A intact if a later layer works in place.
            leaf = out.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()

        handle = self.target.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                if self.learned_roi:
                    scores, roi_logits = self.model.forward_with_roi(x)
                else:
                    scores, roi_logits = self.model(x), None
        finally:
            handle.remove()
        acts = captured[0]
        logp = F.log_softmax(scores.detach(), dim=1)
        probs = logp.exp()
        entropy = -(probs * logp).sum(1)

        # target < 0 selects the predicted class (acquisition); >= 0 a given one (evaluation).
        chosen = torch.where(target >= 0, target, scores.detach().argmax(1))
        classes = torch.arange(scores.shape[1], device=scores.device)
        onehot = (classes.unsqueeze(0) == chosen.unsqueeze(1)).to(scores.dtype)
        # Samples are independent in eval mode, so one backward of the sum gives every
        # sample's own gradient.
        (grads,) = torch.autograd.grad((scores * onehot).sum(), acts)

        cam = self.cam(acts.detach(), grads)
        roi_area = roi.to(torch.float32).sum(dim=(1, 2))
        cam01 = scale_cam(cam, image.shape[-2:])  # at the ROI's size: both Dice read it
        dice = soft_dice(cam01, roi)
        embedding = acts.detach().mean(dim=(2, 3))
        out: tuple[Tensor, ...] = (probs, entropy, cam, dice, roi_area, embedding)
        if self.views > 1:
            with torch.no_grad():
                flipped = [torch.flip(x, dims) for dims in FLIPS[1 : self.views]]
                other = F.softmax(self.model(torch.cat(flipped)), dim=1)
            view_probs = torch.cat(
                [probs.unsqueeze(1), other.view(self.views - 1, -1, probs.shape[1]).transpose(0, 1)], 1
            )
            out = (*out, view_probs)
        if roi_logits is not None:
            # The predicted ROI as a soft map, and as a mask (as an expert's ROI is) for the Dice.
            roi_prob = torch.sigmoid(roi_logits.detach())
            mask = (roi_prob >= self.roi_threshold).to(torch.float32)
            learned_dice = soft_dice(cam01, mask)
            out = (*out, roi_prob, learned_dice, mask.sum(dim=(1, 2)))
        return out


def trace_scoring_module(
    module: ScoringModule, example: tuple[Tensor, Tensor, Tensor]
) -> torch.fx.GraphModule:
    """Record forward + backward of `module` as an FX graph of exportable ATen ops."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        return make_fx(
            module,
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
            decomposition_table=tracing_decompositions(),
        )(*example)
    finally:
        for p in params:
            p.requires_grad_(True)

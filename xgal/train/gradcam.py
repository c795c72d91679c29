"""The one torch implementation of Grad-CAM's map, its scaling and the soft Dice (DESIGN.md §1),
shared by training (differentiable, the guidance loss), evaluation and the exported scoring
graph (`gradpath`), and the one pixel normalisation they all apply.

As in the authors' EGxFSL, the channel weights come from a separate backward pass and are held
constant; the map ReLU(Σ_k w_k A_k), upsampled and min–max scaled, stays differentiable through
A, so a loss on it moves the features. The eager reference engine
(`xgal.scorer.engines.torch_ref`) keeps its own NumPy implementation on purpose: parity between
it and an exported graph is evidence only if they share no code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xgal.core.contract import CAM_EPS, Normalisation


class PixelNormalise(nn.Module):
    """Stored pixels -> the network's input: (pixel / scale - mean) / std, per channel."""

    def __init__(self, norm: Normalisation) -> None:
        super().__init__()
        c = len(norm.mean)
        self.scale = norm.scale
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        return (image.to(torch.float32) / self.scale - self.mean) / self.std


def grad_cam(acts: Tensor, grads: Tensor) -> Tensor:
    """ReLU(Σ_k w_k A_k) [N, h, w], w_k the spatial mean of d score / d A_k."""
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1))


def grad_cam_pp(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al., 2018, as pytorch-grad-cam computes it): channel weights
    Σ_ij α_ij·ReLU(g_ij), α = g² / (2g² + Σ_ij A·g³), 0 where g = 0."""
    g2, g3 = grads.pow(2), grads.pow(3)
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    denom = 2 * g2 + sum_acts * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
    weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts).sum(1))


def hires_cam(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin, 2020): ReLU(Σ_k g_k ⊙ A_k), the gradient kept per location."""
    return F.relu((grads * acts).sum(1))


def layer_cam(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM (Jiang et al., 2021): ReLU(Σ_k ReLU(g_k) ⊙ A_k)."""
    return F.relu((F.relu(grads) * acts).sum(1))


# The map from the target layer's activations and their gradient; the rest (upsampling, scaling,
# Dice) is shared. Names as `ScoringGraphInfo.cam_method` records them.
CAM_FUNCTIONS = {"gradcam": grad_cam, "gradcam++": grad_cam_pp, "hirescam": hires_cam, "layercam": layer_cam}


def scale_cam(cam: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Upsample [N, h, w] to `size` (bilinear, half-pixel centres) and min–max scale each map
    to [0, 1]; a flat map scales to zeros."""
    up = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo + CAM_EPS)


def soft_dice(cam01: Tensor, roi: Tensor) -> Tensor:
    """2·Σ(cam·roi) / (Σcam + Σroi) per sample; 0 where both are empty (misalignment 1, the
    authors' fallback)."""
    roi = roi.to(cam01.dtype)
    inter = (cam01 * roi).sum(dim=(1, 2))
    denom = cam01.sum(dim=(1, 2)) + roi.sum(dim=(1, 2))
    return 2 * inter / torch.where(denom > 0, denom, torch.ones_like(denom))


def scores_and_cam(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    classes: Tensor | None = None,
    *,
    differentiable: bool = True,
) -> tuple[Tensor, Tensor]:
    """Class scores [N, K] and the [0, 1]-scaled CAM [N, H, W] for `classes` (None = predicted)."""
    scores, cam01, _ = scores_cam_roi(model, layer, x, classes, differentiable=differentiable, roi=False)
    return scores, cam01


def scores_cam_roi(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    classes: Tensor | None = None,
    *,
    differentiable: bool = True,
    roi: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`scores_and_cam` and, from the same pass, the ROI head's logits [N, H, W] (when `roi`:
    the model's `forward_with_roi`)."""
    store: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.enable_grad():
            scores, roi_logits = model.forward_with_roi(x) if roi else (model(x), None)
    finally:
        handle.remove()
    acts = store[-1]
    chosen = scores.argmax(1) if classes is None else classes
    picked = scores.gather(1, chosen.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(picked, acts, retain_graph=differentiable)
    cam = grad_cam(acts if differentiable else acts.detach(), grads.detach())
    if not differentiable:
        scores = scores.detach()
        roi_logits = None if roi_logits is None else roi_logits.detach()
    return scores, scale_cam(cam, x.shape[-2:]), roi_logits

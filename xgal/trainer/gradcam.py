"""Grad-CAM for training and evaluation, differentiable through the activations.

As in the authors' EGxFSL: the channel weights come from a separate backward pass and are held
constant; the map ReLU(Σ_k w_k A_k), upsampled and min–max scaled, stays differentiable through
A, so a loss on it moves the features. (The scorer's exported graph and its reference engine
have their own, non-differentiable implementations.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-7


def scores_and_cam(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    classes: Tensor | None = None,
    *,
    differentiable: bool = True,
) -> tuple[Tensor, Tensor]:
    """Class scores [N, K] and the [0, 1]-scaled CAM [N, H, W] for `classes` (None = predicted)."""
    store: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.enable_grad():
            scores = model(x)
    finally:
        handle.remove()
    acts = store[-1]
    chosen = scores.argmax(1) if classes is None else classes
    picked = scores.gather(1, chosen.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(picked, acts, retain_graph=differentiable)
    weights = grads.detach().mean(dim=(2, 3), keepdim=True)
    a = acts if differentiable else acts.detach()
    cam = F.relu((weights * a).sum(1, keepdim=True))
    up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (scores if differentiable else scores.detach()), (up - lo) / (hi - lo + EPS)


def soft_dice(cam01: Tensor, roi: Tensor) -> Tensor:
    """2·Σ(cam·roi) / (Σcam + Σroi) per sample; 0 where both are empty."""
    roi = roi.to(cam01.dtype)
    inter = (cam01 * roi).sum(dim=(1, 2))
    denom = cam01.sum(dim=(1, 2)) + roi.sum(dim=(1, 2))
    return 2 * inter / torch.where(denom > 0, denom, torch.ones_like(denom))

"""The ROI head's loss and its quality: only scans the radiologist drew an ROI on count.

A labelled scan without an ROI (an all-zero mask: not drawn, or beyond the ROI budget) says
nothing about where the lesion is, so it feeds neither the loss nor the Dice: the head learns
only from what an expert drew.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xgal.train.gradcam import soft_dice


def has_roi(roi: Tensor) -> Tensor:
    """[N] bool: the mask holds at least one pixel."""
    return roi.flatten(1).amax(1) > 0


def roi_loss(logits: Tensor, roi: Tensor) -> Tensor:
    """Binary cross-entropy plus (1 − soft Dice) of the predicted ROI against the drawn one,
    averaged over the scans with an ROI; 0 (with a gradient of zeros) when none has one."""
    has = has_roi(roi)
    if not bool(has.any()):
        return logits.sum() * 0.0
    logits, target = logits[has], roi[has].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + (1 - soft_dice(torch.sigmoid(logits), target)).mean()


def mask_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per scan, the Dice 2|A∩B| / (|A| + |B|) of two [N, H, W] masks (1 where both are empty)."""
    a = pred.reshape(len(pred), -1).astype(bool)
    b = truth.reshape(len(truth), -1).astype(bool)
    inter = (a & b).sum(1)
    total = a.sum(1) + b.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


@torch.no_grad()
def learned_roi_dice(model: nn.Module, x: Tensor, roi: Tensor, threshold: float, batch: int = 128) -> float:
    """Mean Dice of the predicted ROI (soft map ≥ `threshold`) against the expert's, over the
    scans of `x` with an ROI; NaN when none has one or the model has no ROI head."""
    if getattr(model, "roi_head", None) is None:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    dices = []
    for i in range(0, len(x), batch):
        rb = roi[i : i + batch]
        keep = has_roi(rb)
        if not bool(keep.any()):
            continue
        _, logits = model.forward_with_roi(x[i : i + batch].to(device))
        pred = (torch.sigmoid(logits[keep.to(device)]) >= threshold).cpu().numpy()
        dices.append(mask_dice(pred, rb[keep].numpy()))
    return float(np.concatenate(dices).mean()) if dices else float("nan")

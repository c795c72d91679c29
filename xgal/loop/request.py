"""What a person is told about the scans they are asked about: what chose them, and what the
choosing model says of them (its probabilities and its Grad-CAM at the pool's size, for the
hints; torch, where the hand-off that draws them is not)."""

from __future__ import annotations

import numpy as np
import torch

from xgal.core.acquisition import RoiSource
from xgal.core.contract import ROW_ROI_SOURCES
from xgal.core.errors import InvalidArgument
from xgal.core.selection_text import describe_selection
from xgal.loop.config import LoopConfig
from xgal.pool.body import rois_for
from xgal.train.fit import to_input
from xgal.train.gradcam import scores_cam_roi
from xgal.train.nets.classifier import Classifier
from xgal.train.nets.roi_head import DEFAULT_ROI_THRESHOLD

CAM_BATCH = 32  # scans per Grad-CAM pass (memory, at 224 px and more)


def model_view(
    model: Classifier,
    images: np.ndarray,
    layer: str,
    scale: float,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    roi_threshold: float = DEFAULT_ROI_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Probabilities [n, K] and Grad-CAMs [n, H, W] in [0, 1] of the predicted class, and with
    an ROI head the predicted ROI masks [n, H, W] uint8 (its map at or above `roi_threshold`)."""
    model.eval()  # a resumed round's model comes back in train mode: no batch statistics here
    x = to_input(images, scale, mean, std)
    device = next(model.parameters()).device
    learned = model.roi_head is not None
    probs, cams, masks = [], [], []
    for lo in range(0, len(x), CAM_BATCH):
        part = x[lo : lo + CAM_BATCH].to(device)
        scores, cam, logits = scores_cam_roi(
            model, model.get_submodule(layer), part, differentiable=False, roi=learned
        )
        probs.append(scores.softmax(1).cpu().numpy())
        cams.append(cam.cpu().numpy())
        if logits is not None:
            masks.append((logits.sigmoid() >= roi_threshold).to(torch.uint8).cpu().numpy())
    return np.concatenate(probs), np.concatenate(cams), np.concatenate(masks) if masks else None


def hint_rois(
    images: np.ndarray, rois: np.ndarray, source: RoiSource, predicted: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The ROIs a request's hints outline, those the scoring measured misalignment against, and
    their ROW_ROI_SOURCES codes: the expert's, the body's (`rois_for`) or the predicted ones."""
    if not source.learned:
        out, body = rois_for(images, rois, source)
        return out, np.where(body, ROW_ROI_SOURCES.index("body"), ROW_ROI_SOURCES.index("expert"))
    learned = source.learned_rows(rois)
    if not learned.any():  # the expert drew on every scan (expert-else-learned)
        return rois, np.full(len(rois), ROW_ROI_SOURCES.index("expert"))
    if predicted is None:
        raise InvalidArgument(f"--roi {source.value} needs the model's ROI head, which this model lacks")
    out = rois.copy()
    out[learned] = predicted[learned]
    return out, np.where(learned, ROW_ROI_SOURCES.index("learned"), ROW_ROI_SOURCES.index("expert"))


def chosen_by(config: LoopConfig, n: int) -> str:
    """What chose request `n`'s scans: the initial set's draw (n = 0), the cold start, or the
    round's acquisition."""
    if n == 0:
        if config.initial_ids:
            return "the initial set: the scans the user listed (--initial-ids)"
        if config.initial_balance == "oracle":
            return (
                "the initial set: drawn at random, stratified by the pool's labels (--initial-balance oracle)"
            )
        return "the initial set: drawn at random, no label read"
    return describe_selection(
        config.round_acquisition(n - 1), config.per_round, cold_start=config.cold(n - 1)
    )

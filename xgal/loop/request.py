"""What a person is told about the scans they are asked about: what chose them, and what the
choosing model says of them (its probabilities and its Grad-CAM at the pool's size, for the
hints; torch, where the hand-off that draws them is not)."""

from __future__ import annotations

import numpy as np

from xgal.core.selection_text import describe_selection
from xgal.loop.config import LoopConfig
from xgal.train.fit import to_input
from xgal.train.gradcam import scores_and_cam
from xgal.train.nets.classifier import Classifier

CAM_BATCH = 32  # scans per Grad-CAM pass (memory, at 224 px and more)


def model_view(
    model: Classifier,
    images: np.ndarray,
    layer: str,
    scale: float,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [n, K] and Grad-CAMs [n, H, W] in [0, 1] of the predicted class."""
    model.eval()  # a resumed round's model comes back in train mode: no batch statistics here
    x = to_input(images, scale, mean, std)
    device = next(model.parameters()).device
    probs, cams = [], []
    for lo in range(0, len(x), CAM_BATCH):
        scores, cam = scores_and_cam(
            model, model.get_submodule(layer), x[lo : lo + CAM_BATCH].to(device), differentiable=False
        )
        probs.append(scores.softmax(1).cpu().numpy())
        cams.append(cam.cpu().numpy())
    return np.concatenate(probs), np.concatenate(cams)


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

"""What the choosing model says of the scans a person is asked about: its probabilities and its
Grad-CAM at the pool's size, for the hints (torch; the hand-off that draws them is not)."""

from __future__ import annotations

import numpy as np

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

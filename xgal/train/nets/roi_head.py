"""Light ROI segmentation heads: where the radiologist would draw, learned from the ROIs they drew.

Two kinds, measured against each other (docs/evidence.md, 2026-12-07: `shared` is the one to use):
- `shared` reads the classifier trunk's last feature map (two convolutions, then bilinear
  upsampling to the image); its loss also shapes the trunk. It segments the synthetic lesions
  well from a few dozen ROIs.
- `shared-detached` is `shared` whose loss stops at the trunk: it reads the features the
  classifier learns and never changes them, so the classifier trains exactly as without it.
- `beside` is a small network of its own on the normalised image, at half resolution: it never
  touches the classifier's features, so the classifier (and its Grad-CAM) is trained exactly as
  without it; at the demo's training budget it barely learns.
Either makes every run of the scoring graph slower (ONNX Runtime runs the head whatever is
fetched): the measured cost is in docs/evidence.md.

Each returns logits [N, H, W] at the image's size; `sigmoid` makes them the soft ROI map the
scoring graph exports, and a threshold (the graph's metadata) makes that a mask.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from xgal.core.contract import ROI_HEADS
from xgal.core.errors import InvalidArgument

ROI_HEAD_KINDS = ROI_HEADS[1:]  # every kind but "none"
# The soft map's value at and above which a pixel is in the predicted ROI.
DEFAULT_ROI_THRESHOLD = 0.5
# The last layer's bias at the start: sigmoid(-2) ≈ 0.12, about an ROI's share of a scan. From
# 0 (half the scan) a small head spends its first hundred steps learning only that.
_PRIOR_LOGIT = -2.0


class SharedRoiHead(nn.Module):
    """Trunk features [N, C, h, w] -> ROI logits [N, H, W]; `detached`: no gradient to the trunk."""

    reads = "features"

    def __init__(self, in_channels: int, hidden: int = 32, detached: bool = False) -> None:
        super().__init__()
        self.detached = detached
        self.kind = "shared-detached" if detached else "shared"
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 1, 1)
        nn.init.constant_(self.out.bias, _PRIOR_LOGIT)

    def forward(self, feats: Tensor, size: tuple[int, int]) -> Tensor:
        low = self.out(F.relu(self.conv(feats.detach() if self.detached else feats)))
        return F.interpolate(low, size=size, mode="bilinear", align_corners=False).squeeze(1)


class BesideRoiHead(nn.Module):
    """Normalised image [N, C, H, W] -> ROI logits [N, H, W], by a small CNN of its own."""

    kind = "beside"
    reads = "image"

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4),
            nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )
        nn.init.constant_(self.body[-1].bias, _PRIOR_LOGIT)

    def forward(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.body(image), size=size, mode="bilinear", align_corners=False).squeeze(1)


def build_roi_head(kind: str, in_channels: int, feature_channels: int) -> nn.Module:
    """The head of `kind` (ROI_HEAD_KINDS) for images of `in_channels` and a trunk of
    `feature_channels`."""
    if kind in ("shared", "shared-detached"):
        return SharedRoiHead(feature_channels, detached=kind == "shared-detached")
    if kind == "beside":
        return BesideRoiHead(in_channels)
    raise InvalidArgument(f"unknown ROI head {kind!r}; choose one of {', '.join(ROI_HEAD_KINDS)}")

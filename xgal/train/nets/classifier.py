"""`Classifier` = feature trunk -> global average pool -> head, and the model factory."""

import torch.nn.functional as F
from torch import Tensor, nn

from xgal.core.errors import InvalidArgument
from xgal.train.nets.densenet import DenseNet121Features
from xgal.train.nets.heads import LinearHead, MLPHead, PrototypicalHead
from xgal.train.nets.resnet import ResNet18Features
from xgal.train.nets.roi_head import build_roi_head
from xgal.train.nets.small_cnn import SmallCNNFeatures

ARCHS: dict[str, type[nn.Module]] = {
    "small_cnn": SmallCNNFeatures,
    "resnet18": ResNet18Features,
    "densenet121": DenseNet121Features,
}
HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "prototypical": PrototypicalHead,
}
_DEFAULT_TARGET = {
    "small_cnn": "features.stage4.0",
    "resnet18": "features.layer4.1.conv2",
    "densenet121": "features.denseblock4.denselayer16.conv2",
}


class Classifier(nn.Module):
    """forward(x) returns class scores `[N, K]`; their softmax is the class probabilities.

    With an `roi_head` (train/nets/roi_head.py), `forward_with_roi(x)` also returns the
    predicted ROI's logits [N, H, W], from the same pass through the trunk."""

    def __init__(
        self, features: nn.Module, head: nn.Module, arch: str = "custom", roi_head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.arch = arch
        self.roi_head = roi_head

    @property
    def roi_head_kind(self) -> str:
        """ "none", or the kind of the ROI head (ROI_HEAD_KINDS)."""
        return "none" if self.roi_head is None else str(self.roi_head.kind)

    @property
    def head_kind(self) -> str:
        return getattr(self.head, "kind", type(self.head).__name__)

    def pooled(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pooled(x))

    def forward_with_roi(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class scores [N, K] and ROI logits [N, H, W] (the model must have an ROI head)."""
        if self.roi_head is None:
            raise InvalidArgument("this classifier has no ROI head (build_model(..., roi_head=...))")
        feats = self.features(x)
        scores = self.head(F.adaptive_avg_pool2d(feats, 1).flatten(1))
        source = feats if self.roi_head.reads == "features" else x
        return scores, self.roi_head(source, tuple(x.shape[-2:]))


def build_model(
    arch: str,
    head: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    roi_head: str | None = None,
    **head_kwargs: int,
) -> Classifier:
    """Build e.g. `build_model("densenet121", "prototypical", 3)`, the authors' network;
    `roi_head` ("shared" or "beside") adds a learned ROI."""
    if arch not in ARCHS:
        raise InvalidArgument(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if head not in HEADS:
        raise InvalidArgument(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be at least 2, got {num_classes}")
    features = ARCHS[arch](in_channels=in_channels)
    classes = HEADS[head](features.out_channels, num_classes, **head_kwargs)
    # Built last: under one seed, the trunk and the class head start as they do without it.
    roi = None if roi_head in (None, "none") else build_roi_head(roi_head, in_channels, features.out_channels)
    return Classifier(features, classes, arch, roi_head=roi)


def default_target_layer(arch: str) -> str:
    """The conventional Grad-CAM layer of a built-in network (the last convolution)."""
    try:
        return _DEFAULT_TARGET[arch]
    except KeyError:
        raise InvalidArgument(f"no default target layer for arch {arch!r}") from None

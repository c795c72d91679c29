"""`Classifier` = feature trunk -> global average pool -> head, and the model factory."""

import torch.nn.functional as F
from torch import Tensor, nn

from xgal.core.errors import InvalidArgument
from xgal.train.nets.densenet import DenseNet121Features
from xgal.train.nets.heads import LinearHead, MLPHead, PrototypicalHead
from xgal.train.nets.resnet import ResNet18Features
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
    """forward(x) returns class scores `[N, K]`; their softmax is the class probabilities."""

    def __init__(self, features: nn.Module, head: nn.Module, arch: str = "custom") -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.arch = arch

    @property
    def head_kind(self) -> str:
        return getattr(self.head, "kind", type(self.head).__name__)

    def pooled(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pooled(x))


def build_model(
    arch: str, head: str, num_classes: int, in_channels: int = 3, **head_kwargs: int
) -> Classifier:
    """Build e.g. `build_model("densenet121", "prototypical", 3)`, the authors' network."""
    if arch not in ARCHS:
        raise InvalidArgument(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if head not in HEADS:
        raise InvalidArgument(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be at least 2, got {num_classes}")
    features = ARCHS[arch](in_channels=in_channels)
    return Classifier(features, HEADS[head](features.out_channels, num_classes, **head_kwargs), arch)


def default_target_layer(arch: str) -> str:
    """The conventional Grad-CAM layer of a built-in network (the last convolution)."""
    try:
        return _DEFAULT_TARGET[arch]
    except KeyError:
        raise InvalidArgument(f"no default target layer for arch {arch!r}") from None

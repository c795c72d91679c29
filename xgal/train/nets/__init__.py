"""Networks in plain PyTorch (no torchvision) and the classifier that joins a trunk to a head.

`build_model(arch, head, num_classes, in_channels)` is the one entry point; each model is a
`Classifier` whose `features` end in a 4-D feature map, so Grad-CAM target layers are named
`features.<...>` as in torchvision (e.g. DenseNet-121 `features.denseblock4.denselayer16.conv2`).
"""

from xgal.train.nets.classifier import ARCHS, HEADS, Classifier, build_model, default_target_layer
from xgal.train.nets.heads import LinearHead, MLPHead, PrototypicalHead

__all__ = [
    "ARCHS",
    "HEADS",
    "Classifier",
    "LinearHead",
    "MLPHead",
    "PrototypicalHead",
    "build_model",
    "default_target_layer",
]

"""A small CNN for tests and CPU demos: four conv-BN-ReLU stages, the last two downsampling."""

from torch import Tensor, nn


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class SmallCNNFeatures(nn.Module):
    """Feature trunk; `stage4.0` (the last convolution) is the natural Grad-CAM layer."""

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stage1 = _stage(in_channels, width, 1)
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = _stage(width, width * 2, 1)
        self.pool2 = nn.MaxPool2d(2)
        self.stage3 = _stage(width * 2, width * 4, 1)
        self.stage4 = _stage(width * 4, width * 4, 2)
        self.out_channels = width * 4

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.stage1(x))
        x = self.pool2(self.stage2(x))
        return self.stage4(self.stage3(x))

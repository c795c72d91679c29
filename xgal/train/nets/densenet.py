"""DenseNet-121 (Huang et al., 2017) with torchvision's module names, in plain torch.

The authors' Grad-CAM layer is `denseblock4.denselayer16.conv2`: the last convolution, followed
by a concatenation with every earlier feature map of the block, `norm5`, ReLU and pooling. The
exported gradient path has to go back through all of that.
"""

import torch
from torch import Tensor, nn


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n_layers: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)


class DenseNet121Features(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        growth: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        init_features: int = 64,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, init_features, 7, stride=2, padding=3, bias=False)
        self.norm0 = nn.BatchNorm2d(init_features)
        self.relu0 = nn.ReLU()
        self.pool0 = nn.MaxPool2d(3, stride=2, padding=1)
        c = init_features
        for i, n in enumerate(block_config):
            self.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(block_config) - 1:
                self.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.norm5 = nn.BatchNorm2d(c)
        self.relu5 = nn.ReLU()
        self.out_channels = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        # Children run in registration order: stem, dense blocks and transitions, norm5, relu5.
        for module in self.children():
            x = module(x)
        return x

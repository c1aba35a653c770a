"""ResNet, CIFAR variant: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

The CIFAR variant of ResNet-18 used by adversarial-training papers (TRADES, MART, MAT):
a 3x3 stride-1 stem without max-pool, four stages of BasicBlocks (64, 128, 256, 512 channels,
strides 1, 2, 2, 2), global average pooling and one fc. Parameter names follow
kuangliu/pytorch-cifar ``models/resnet.py`` (``layer1.0.shortcut.0``, ``linear``), the code
those papers start from, so their checkpoints map onto this with only ``normalize.*`` added.
Initialisation as torchvision's ResNet: Kaiming-normal (fan-out) convs, BN weight 1, bias 0.
About 1.11 GFLOPs per 32x32 image.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mutualat.models.factory import MODELS
from mutualat.models.layers import Normalize


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch-norm; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: ``(B, C, H, W)`` images in [0,1] -> logits ``(B, num_classes)``."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize or Normalize.identity(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        in_planes = 64
        for i, (planes, stride, blocks) in enumerate(zip(widths, strides, blocks_per_stage)):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pooling rather than kuangliu's fixed 4x4 pool: same at 32x32, and
        # any other input size (28x28 MNIST) works too.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# The MAT paper's ResNet-18 learning rate and weight decay (docs/METHOD.md §4; used unless
# a run sets models.N.lr / weight_decay).
@MODELS.register("resnet18", lr=0.01, weight_decay=3.5e-3)
def resnet18(
    *, num_classes: int, in_channels: int, input_size: int, normalize: Normalize
) -> ResNet:
    del input_size  # global average pooling: any input size works
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                  normalize=normalize)

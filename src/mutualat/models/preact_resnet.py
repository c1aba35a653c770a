"""Pre-activation ResNet, CIFAR variant.

He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016): each block computes
BN-ReLU-conv-BN-ReLU-conv and adds the untouched input (or, when the shape changes, a 1x1 conv
of the pre-activated input); a final BN-ReLU comes before pooling, as in the paper and in Rice
et al.'s "Overfitting in adversarially robust deep learning" code (kuangliu/pytorch-cifar omits
it). 3x3 stride-1 stem, no max-pool, stages of 64, 128, 256, 512 channels. Parameter names
follow those codes (``layer1.0.shortcut.0``, ``bn``, ``linear``). Convs Kaiming-normal
(fan-out), as the paper's Torch code. About 1.11 GFLOPs per 32x32 image.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mutualat.models.factory import MODELS
from mutualat.models.layers import Normalize


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """``(B, C, H, W)`` images in [0,1] -> logits ``(B, num_classes)``."""

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
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        in_planes = 64
        for i, (planes, stride, blocks) in enumerate(zip(widths, strides, blocks_per_stage)):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# ResNet-18's learning rate and weight decay in the MAT paper (docs/METHOD.md §4; used
# unless a run sets models.N.lr / weight_decay).
@MODELS.register("preact_resnet18", lr=0.01, weight_decay=3.5e-3)
def preact_resnet18(
    *, num_classes: int, in_channels: int, input_size: int, normalize: Normalize
) -> PreActResNet:
    del input_size  # global average pooling: any input size works
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                        normalize=normalize)

"""Wide ResNet: Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016).

WRN-``depth``-``widen_factor``: a 3x3 stem of 16 channels, three stages of ``(depth - 4) / 6``
pre-activation blocks of ``16k``, ``32k``, ``64k`` channels (strides 1, 2, 2), optional dropout
between a block's convs, a final BN-ReLU, global average pooling and one fc. This is the
WideResNet of the TRADES and MART code (WRN-34-10 in MAT, Table 2), with parameter names kept
as theirs (``block1.layer.0.convShortcut``, ``bn1``, ``fc``) so their checkpoints map onto it
(TRADES' unused ``sub_block1`` is left out). Initialisation as theirs: convs
N(0, 2 / (k*k*out_channels)), BN weight 1 bias 0, fc bias 0.

GFLOPs per 32x32 image: WRN-34-10 ~ 13.3, WRN-28-10 ~ 10.5, WRN-16-4 ~ 0.79.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mutualat.errors import ConfigError
from mutualat.models.factory import MODELS
from mutualat.models.layers import Normalize

# Every WRN registers the MAT paper's WRN-34-10 learning rate and weight decay, lr=0.1,
# weight_decay=7e-4 (used unless a run sets models.N.lr / weight_decay).


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        # Name kept from the reference code so its checkpoints load.
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes or stride != 1:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # A projection shortcut takes the pre-activated input, the identity the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class _Stage(nn.Module):
    # A module with a ``layer`` attribute only to keep the reference's parameter names.
    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int,
                 dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, dropout)
            for i in range(blocks)
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: ``(B, C, H, W)`` in [0,1] -> logits ``(B, num_classes)``."""

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...); "
                f"got {depth!r}"
            )
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ConfigError(
                f"WideResNet widen_factor must be a positive integer; got {widen_factor!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"WideResNet dropout must be in [0, 1); got {dropout!r}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = normalize or Normalize.identity(in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(blocks, widths[0], widths[1], 1, dropout)
        self.block2 = _Stage(blocks, widths[1], widths[2], 2, dropout)
        self.block3 = _Stage(blocks, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@MODELS.register("wrn", lr=0.1, weight_decay=7e-4)
def wrn(
    *,
    num_classes: int,
    in_channels: int,
    input_size: int,
    normalize: Normalize,
    depth: int = 34,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    del input_size  # global average pooling: any input size works
    return WideResNet(depth, widen_factor, dropout, num_classes, in_channels, normalize)


# Fixed-size aliases, registered under their own names so a saved file rebuilds by that name.


@MODELS.register("wrn34_10", lr=0.1, weight_decay=7e-4)
def wrn34_10(
    *, num_classes: int, in_channels: int, input_size: int, normalize: Normalize,
    dropout: float = 0.0,
) -> WideResNet:  # fmt: skip
    del input_size
    return WideResNet(34, 10, dropout, num_classes, in_channels, normalize)


@MODELS.register("wrn28_10", lr=0.1, weight_decay=7e-4)
def wrn28_10(
    *, num_classes: int, in_channels: int, input_size: int, normalize: Normalize,
    dropout: float = 0.0,
) -> WideResNet:  # fmt: skip
    del input_size
    return WideResNet(28, 10, dropout, num_classes, in_channels, normalize)


@MODELS.register("wrn16_4", lr=0.1, weight_decay=7e-4)
def wrn16_4(
    *, num_classes: int, in_channels: int, input_size: int, normalize: Normalize,
    dropout: float = 0.0,
) -> WideResNet:  # fmt: skip
    del input_size
    return WideResNet(16, 4, dropout, num_classes, in_channels, normalize)

"""Small CNNs for MNIST-sized inputs and fast CPU runs on CIFAR-10.

FLOPs (multiply-accumulates x 2, one image, ``count_flops``): smallcnn 1x28x28 ~ 19.9 M,
madrycnn 1x28x28 ~ 27.8 M, tinycnn 1x28x28 ~ 2.5 M, cnn32 3x32x32 ~ 58 M.
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.errors import ConfigError
from mutualat.models.factory import MODELS
from mutualat.models.layers import Normalize

# Every small CNN registers lr=0.05, weight_decay=5e-4 (used unless a run sets models.N.lr /
# weight_decay): a larger rate than the paper's ResNet-18 one, because CPU-scale runs are short.


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: the batch-norm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@MODELS.register("smallcnn", lr=0.05, weight_decay=5e-4)
class SmallCNN(nn.Module):
    """The SmallCNN of the TRADES MNIST experiments.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy"
    (ICML 2019), ``models/small_cnn.py`` of yaodongyu/TRADES: conv32-conv32-pool-conv64-conv64-
    pool-fc200-fc200-fc, 3x3 valid convolutions, dropout before the second fc. The flatten
    size is computed from ``input_size`` (64*4*4 at 28x28), so it works for any size >= 16.

    One deliberate difference: TRADES initialises the last layer to zero, which makes the
    input gradient of a fresh model exactly zero and every attack on it a no-op; here it
    keeps PyTorch's default initialisation.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        normalize: Normalize | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2  # two valid 3x3 convs then a 2x2 pool, twice
        if side < 1:
            raise ConfigError(f"smallcnn needs input_size >= 16; got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"smallcnn dropout must be in [0, 1); got {dropout}")
        self.normalize = normalize or Normalize.identity(in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 200), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(200, 200), nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )  # fmt: skip
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # as TRADES
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


@MODELS.register("madrycnn", lr=0.05, weight_decay=5e-4)
class MadryCNN(nn.Module):
    """The MNIST network of Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks" (ICLR 2018), MadryLab/mnist_challenge ``model.py``.

    conv 5x5x32 (same padding) - ReLU - maxpool 2 - conv 5x5x64 - ReLU - maxpool 2 - fc 1024 -
    ReLU - fc. About 27.8 MFLOPs per 28x28 image. The original initialises weights from a
    truncated normal (std 0.1) and biases to 0.1; this keeps PyTorch's default.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        side = input_size // 4  # two 2x2 max-pools (floor, like TF's VALID pooling)
        if side < 1:
            raise ConfigError(f"madrycnn needs input_size >= 4; got {input_size}")
        self.normalize = normalize or Normalize.identity(in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


@MODELS.register("tinycnn", lr=0.05, weight_decay=5e-4)
class TinyCNN(nn.Module):
    """A small, fast CNN for CPU demos: about 2.5 MFLOPs per 28x28 grey image.

    conv 3x3x16 - maxpool 2 - conv 3x3x32 stride 2 - conv 3x3x64 - global average pool - fc,
    each conv followed by batch-norm and ReLU (they make a few CPU epochs enough). Global
    pooling makes it work at any input size >= 4 (28x28 grey or 32x32 RGB alike).
    Not from a paper.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        if input_size < 4:
            raise ConfigError(f"tinycnn needs input_size >= 4; got {input_size}")
        self.normalize = normalize or Normalize.identity(in_channels)
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 16),
            nn.MaxPool2d(2),  # 28 -> 14
            _conv_bn_relu(16, 32, stride=2),  # 14 -> 7
            _conv_bn_relu(32, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.normalize(x)))


@MODELS.register("cnn32", lr=0.05, weight_decay=5e-4)
class CNN32(nn.Module):
    """A small VGG-style CNN for 32x32 RGB that trains on CIFAR-10 on a CPU.

    Stages of ``width``, ``2*width``, ``4*width`` channels (1, 2 and 2 convs 3x3, each with
    batch-norm and ReLU), each stage ending in a 2x2 max-pool, then global average pooling and
    one fc. About 58 MFLOPs per 32x32 image at the default ``width=32`` (FLOPs grow as
    ``width**2``). Not from a paper.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        normalize: Normalize | None = None,
        width: int = 32,
    ) -> None:
        super().__init__()
        if input_size < 8:
            raise ConfigError(f"cnn32 needs input_size >= 8; got {input_size}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"cnn32 width must be a positive integer; got {width!r}")
        w = width
        self.normalize = normalize or Normalize.identity(in_channels)
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            nn.MaxPool2d(2),  # 32 -> 16
            _conv_bn_relu(w, 2 * w),
            _conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 16 -> 8
            _conv_bn_relu(2 * w, 4 * w),
            _conv_bn_relu(4 * w, 4 * w),
            nn.MaxPool2d(2),  # 8 -> 4
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.normalize(x)))

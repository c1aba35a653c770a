"""Count a model's floating-point operations with PyTorch's own counter."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass: multiply-accumulates x 2 of convolutions and matmuls.

    ``input_shape`` is ``(C, H, W)`` for one image, or ``(B, C, H, W)`` for a batch. Counted
    by ``torch.utils.flop_counter.FlopCounterMode`` on a zero input on the model's device;
    element-wise ops (normalization, batch-norm, ReLU, pooling) are not counted. The model
    runs in eval mode so batch-norm statistics are left untouched; every submodule's mode is
    restored afterwards.
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W); got {tuple(input_shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for m, training in modes.items():
            m.training = training
    return int(counter.get_total_flops())

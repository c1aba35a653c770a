"""Fog attack: an adversarially optimized diamond-square fog over the image.

Kang, Sun, Hendrycks, Brown, Steinhardt, "Testing Robustness Against Unforeseen
Adversaries" (2019), Sec. 3 (code: ddkang/advex-uar ``fog.py``, ``fog_attack.py``). The
fog is the diamond-square "plasma fractal" of Hendrycks & Dietterich's ImageNet-C fog,
whose random offsets become the attack's parameters.

Calibration (``CALIBRATED_EPS``). advex-uar's ImageNet strengths (128 to 8192 on its 0-255
scale, i.e. 0.5 to 32 here) leave nothing of a 32x32 or 28x28 image, so ``eps`` was swept on
small trained models (a 5-conv batch-norm net; CIFAR-10: natural 76% clean and a copy
fine-tuned adversarially with FGSM-RS at 8/255, 52% clean on the 128 sweep images;
Fashion-MNIST: natural, 91% clean) and chosen where the attack is meaningful for a robust model
without being total for a natural one. Accuracy drops in points (128 test images; 30 steps
unless stated):

- 32x32: robust model: 0.1 -> 20, 0.2 -> 26, 0.3 -> 41, 0.5 -> 48; natural model: 0.05 ->
  28, 0.1 -> 47, 0.2 -> 70, 0.3 -> 75 (total). Chosen 0.1.
- 28x28 (natural model, 100 steps): 0.05 -> 16, 0.06 -> 22, 0.075 -> 35 (30 steps: 0.1 ->
  47, 0.2 -> 80). Chosen 0.06.

Fog is the strongest of the three, as in the MAT paper's Table 2 (an AT ResNet-18 loses
44 points to it there). The 100-step default is a little stronger than the 30-step sweep
(robust CIFAR-10 model at 0.1: 21 points).
"""

from __future__ import annotations

import torch

from mutualat.attacks.base import ATTACKS, Example, check_positive
from mutualat.attacks.unforeseen import ParameterSpaceAttack, check_no_norm

#: Fog strength ``eps`` (in [0,1] pixel units) per input size; see the module docstring.
CALIBRATED_EPS = {"32x32": 0.1, "28x28": 0.06}


def map_size(h: int, w: int) -> int:
    """The fog map's side: the smallest power of two above the image (advex-uar: 64 for 32,
    256 for 224), so the cropped centre does not wrap around the torus of the fractal."""
    return 1 << max(h, w).bit_length()


def fog_map(params: list[torch.Tensor], wibble_decay: float) -> torch.Tensor:
    """The diamond-square map ``(B, M, M)`` in [0,1] from ``3 * log2(M)`` parameter grids.

    Level ``i`` (grids of ``n = 2**i`` points, ``params[3i:3i+3]`` of shape ``(B, n, n)``
    in [0,1]) refines the map from ``n x n`` to ``2n x 2n``: square centres are the mean
    of their 4 corners, edge midpoints the mean of their 4 diamond neighbours (wrapping
    around, as the reference), each plus ``wibble * (2 p - 1)``; ``wibble`` is divided by
    ``wibble_decay`` per level, so coarse levels dominate. Built without in-place writes by
    interleaving the four grids. advex-uar rolls the centre grid by 2 rows when averaging
    a diamond, where the ImageNet-C original rolls by 1 (a neighbour): we use 1. The map is
    min-max normalized per example (advex-uar normalizes over the whole batch, which makes
    one image's fog depend on the others).
    """
    b = params[0].shape[0]
    grid = params[0].new_zeros(b, 1, 1)
    wibble = 1.0  # the absolute scale cancels in the normalization; only the decay matters
    for level in range(len(params) // 3):
        p_centre, p_top, p_left = params[3 * level: 3 * level + 3]
        n = grid.shape[1]
        sq = grid + grid.roll(-1, dims=1)
        centre = (sq + sq.roll(-1, dims=2)) / 4 + wibble * (2 * p_centre - 1)
        # Midpoint of a top edge: centres above and below, corners left and right.
        top = (centre + centre.roll(1, dims=1) + grid + grid.roll(-1, dims=2)) / 4
        top = top + wibble * (2 * p_top - 1)
        # Midpoint of a left edge: centres left and right, corners above and below.
        left = (centre + centre.roll(1, dims=2) + grid + grid.roll(-1, dims=1)) / 4
        left = left + wibble * (2 * p_left - 1)
        even_rows = torch.stack([grid, top], dim=-1).reshape(b, n, 2 * n)
        odd_rows = torch.stack([left, centre], dim=-1).reshape(b, n, 2 * n)
        grid = torch.stack([even_rows, odd_rows], dim=2).reshape(b, 2 * n, 2 * n)
        wibble /= wibble_decay
    low = grid.amin(dim=(1, 2), keepdim=True)
    high = grid.amax(dim=(1, 2), keepdim=True)
    return (grid - low) / (high - low).clamp_min(1e-12)


@ATTACKS.register("fog", family="unforeseen", examples=(
    Example(dict(eps=0.3, steps=3), strong=dict(eps=1.0, steps=10)),
))
class Fog(ParameterSpaceAttack):
    """Fog: ``x_adv = (x + eps * fog) / (max_c(x) + eps)``, fog in [0,1] optimized.

    As advex-uar's ``FogAttack``: the fog parameters start uniform in [0,1] and take
    ``steps`` signed-gradient steps on the cross-entropy, clipped to [0,1]; the fog is the
    centre crop of a diamond-square map (:func:`fog_map`), the same for every channel; the
    image is blended with it and divided by its per-channel maximum plus ``eps``, so
    ``eps`` (in [0,1] pixel units, advex-uar's value / 255) is the fog's strength relative
    to the image. No lp ball: ``norm`` is None.

    Args:
        eps: fog strength (default ``CALIBRATED_EPS["32x32"]``; see the module docstring).
        steps: signed-gradient steps (default 100; advex-uar evaluates with 200).
        step_size: default ``2.5 * 0.5 / steps`` (parameters live in [0,1]).
        wibble_decay: per-level decay of the fractal's offsets (default 2.0, advex-uar's
            attack default; larger gives smoother fog).
        norm: must be None (accepted for a uniform constructor).
        bn_mode: "eval" (default) or "train".

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    def __init__(
        self,
        eps: float = CALIBRATED_EPS["32x32"],
        steps: int = 100,
        step_size: float | None = None,
        wibble_decay: float = 2.0,
        norm: str | None = None,
        bn_mode: str = "eval",
    ) -> None:
        check_no_norm("fog", norm)
        super().__init__(eps, steps, step_size, bn_mode)
        self.wibble_decay = check_positive("wibble_decay", wibble_decay)

    def param_radius(self) -> float:
        return 0.5

    def init_params(self, x):
        b, _, h, w = x.shape
        levels = map_size(h, w).bit_length() - 1
        params = [
            torch.rand(b, 2**i, 2**i, device=x.device, dtype=x.dtype)
            for i in range(levels)
            for _ in range(3)
        ]
        # The per-channel maximum of the image, a constant of the blend.
        return params, {"x_max": x.amax(dim=(2, 3), keepdim=True)}

    def render(self, x, params, const):
        _, _, h, w = x.shape
        fog = fog_map(params, self.wibble_decay)
        top, left = (fog.shape[1] - h) // 2, (fog.shape[2] - w) // 2
        fog = fog[:, None, top: top + h, left: left + w]
        return (x + self.eps * fog) / (const["x_max"] + self.eps)

    def clamp_params(self, params, const):
        return [p.clamp(0.0, 1.0) for p in params]

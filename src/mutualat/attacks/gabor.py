"""Gabor attack: adversarially optimized sparse noise convolved with a random Gabor kernel.

Kang, Sun, Hendrycks, Brown, Steinhardt, "Testing Robustness Against Unforeseen
Adversaries" (2019), Sec. 3 (code: ddkang/advex-uar ``gabor.py``, ``gabor_attack.py``),
after the procedural Gabor noise of Co, Munoz-Gonzalez, de Maupeou, Lupu (CCS 2019).

Calibration (``CALIBRATED_EPS``). advex-uar's ImageNet strengths (6.25 to 1600 on its
0-255 scale) do not transfer, so ``eps`` (the linf size of the pattern) was swept on small
trained models (a 5-conv batch-norm net; CIFAR-10: natural 76% clean and a copy fine-tuned
adversarially with FGSM-RS at 8/255, 52% clean on the 128 sweep images; Fashion-MNIST:
natural, 91% clean) and chosen where the attack is meaningful for a robust model without
being total for a natural one. Accuracy drops in points (128 test images; 30 steps unless
stated):

- 32x32: robust model: 0.03 -> 12.5, 0.05 -> 18, 0.1 -> 33; natural model: 0.01 -> 20,
  0.02 -> 44, 0.03 -> 58, 0.05 -> 70. Chosen 0.03 (just below the 8/255 linf budget robust
  models are trained for).
- 28x28 (natural model): 0.03 -> 9, 0.05 -> 20 (100 steps: 22), 0.1 -> 62. Chosen 0.05.

A dense pattern of +-eps, Gabor acts much like a structured linf perturbation: it is the
weakest of the three on robust models, as in the MAT paper's Table 2 (an AT ResNet-18
loses 15 points to it there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mutualat.attacks.base import ATTACKS, Example, check_positive_int
from mutualat.attacks.unforeseen import ParameterSpaceAttack, check_no_norm
from mutualat.errors import ConfigError

#: linf strength ``eps`` of the Gabor pattern per input size; see the module docstring.
CALIBRATED_EPS = {"32x32": 0.03, "28x28": 0.05}

# advex-uar: a sparse grid with one non-zero in 14 pixels, at most 10 kernel orientations
# ("sides"), and the contrast constant of the variance normalization.
_DENSITY = 1.0 / 14
_MAX_SIDES = 10
_MIN_CONTRAST = 1e-3


def gabor_kernels(b: int, k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, k, k)`` random Gabor kernels, one per example, as advex-uar draws them.

    A Gaussian envelope (sigma ~ U(0.1, 0.4) of the kernel width) times a cosine of
    frequency ``Lambda ~ U(3, k/4)`` cycles per kernel width, summed over ``sides ~
    U{1..10}`` orientations evenly spread from ``theta ~ U(0, pi)``.
    """
    coords = torch.linspace(-0.5, 0.5, k, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    sides = torch.randint(1, _MAX_SIDES + 1, (b,), device=device)
    sigma = 0.3 * torch.rand(b, device=device, dtype=dtype) + 0.1
    freq = (k / 4.0 - 3) * torch.rand(b, device=device, dtype=dtype) + 3
    theta = math.pi * torch.rand(b, device=device, dtype=dtype)
    side = torch.arange(_MAX_SIDES, device=device)
    angle = theta[:, None] + math.pi * side[None, :] / sides[:, None]  # (B, S)
    cos, sin = angle.cos()[..., None, None], angle.sin()[..., None, None]
    rot_x = xx * cos + yy * sin  # (B, S, k, k)
    radius2 = xx.square() + yy.square()  # rotation leaves the isotropic envelope unchanged
    envelope = torch.exp(-0.5 * radius2 / (sigma + 1e-3).square()[:, None, None])
    wave = torch.cos(2 * math.pi * freq[:, None, None, None] * rot_x)
    used = (side[None, :] < sides[:, None]).to(dtype)[..., None, None]
    return (envelope[:, None] * wave * used).sum(dim=1, keepdim=True)


def gabor_noise(sparse: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` pattern in [-1, 1]: each example's sparse map under its kernel.

    The convolution (grouped, one kernel per example) is followed by advex-uar's "spectral
    variance normalization". There its ``rfft``/``irfft`` pair cancels, so what it computes is
    a pointwise contrast stretch ``d * (1 + c) / (c + |d| / max|d|)`` of the centred pattern
    ``d`` (``c = 1e-3``, the factor treated as a constant for gradients), which pushes the
    pattern towards ``±max|d|``. We then divide by the maximum magnitude (advex-uar
    min-max rescales to [0,1] and only ever adds it, brightening the image), so the
    perturbation ``eps * pattern`` has linf norm exactly ``eps``, as in the paper.
    """
    b, _, h, w = sparse.shape
    k = kernels.shape[-1]
    out = F.conv2d(sparse.reshape(1, b, h, w), kernels, padding=k // 2, groups=b)
    d = out.reshape(b, 1, h, w)
    d = d - d.mean(dim=(1, 2, 3), keepdim=True)
    peak = d.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    stretch = ((1 + _MIN_CONTRAST) / (_MIN_CONTRAST + d.abs() / peak)).detach()
    d = d * stretch
    return d / d.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12).detach()


@ATTACKS.register("gabor", family="unforeseen", examples=(
    Example(dict(eps=0.05, steps=3), strong=dict(eps=0.3, steps=10)),
))
class Gabor(ParameterSpaceAttack):
    """Gabor: ``x_adv = clip(x + eps * gabor_noise(sparse, kernel))``, the sparse values
    optimized.

    As advex-uar's ``GaborAttack``: a random sparse map (one pixel in 14, values U(-1, 1))
    and a random kernel per example; ``steps`` signed-gradient steps on the cross-entropy
    move the non-zero values, kept in [-1, 1] and on their sparsity pattern. The same
    pattern is added to every channel. No lp ball: ``norm`` is None, although the
    perturbation's linf norm is at most ``eps``.

    Args:
        eps: linf strength of the pattern, [0,1] pixel units (default
            ``CALIBRATED_EPS["32x32"]``; see the module docstring).
        steps: signed-gradient steps (default 100).
        step_size: default ``2.5 * 1 / steps`` (values live in [-1, 1]).
        kernel_size: odd side of the Gabor kernel (default 23, advex-uar's).
        norm: must be None (accepted for a uniform constructor).
        bn_mode: "eval" (default) or "train".

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    def __init__(
        self,
        eps: float = CALIBRATED_EPS["32x32"],
        steps: int = 100,
        step_size: float | None = None,
        kernel_size: int = 23,
        norm: str | None = None,
        bn_mode: str = "eval",
    ) -> None:
        check_no_norm("gabor", norm)
        super().__init__(eps, steps, step_size, bn_mode)
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ConfigError(f"gabor: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size

    def param_radius(self) -> float:
        return 1.0

    def init_params(self, x):
        b, _, h, w = x.shape
        mask = (torch.rand(b, 1, h, w, device=x.device) < _DENSITY).to(x.dtype)
        values = (2 * torch.rand(b, 1, h, w, device=x.device, dtype=x.dtype) - 1) * mask
        kernels = gabor_kernels(b, self.kernel_size, x.device, x.dtype)
        return [values], {"mask": mask, "kernels": kernels}

    def render(self, x, params, const):
        return x + self.eps * gabor_noise(params[0], const["kernels"])

    def clamp_params(self, params, const):
        return [params[0].clamp(-1.0, 1.0) * const["mask"]]

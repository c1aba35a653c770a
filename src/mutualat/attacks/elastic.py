"""Elastic attack: an adversarially optimized, Gaussian-smoothed flow field warps the image.

Kang, Sun, Hendrycks, Brown, Steinhardt, "Testing Robustness Against Unforeseen
Adversaries" (2019), Sec. 3 (code: ddkang/advex-uar ``elastic.py``,
``elastic_attack.py``), after the elastic deformations of Simard, Steinkraus, Platt (2003).

Calibration (``CALIBRATED_EPS``). ``eps`` is the largest displacement in pixels. advex-uar
calibrated CIFAR-10 from 0.125 to 16 pixels against models trained on the attack itself;
for the models this project evaluates, ``eps`` was swept on small trained models (a 5-conv
batch-norm net; CIFAR-10: natural 76% clean and a copy fine-tuned adversarially with
FGSM-RS at 8/255, 52% clean on the 128 sweep images; Fashion-MNIST: natural, 91% clean) and
chosen where the attack is meaningful for a robust model without being total for a natural
one. Accuracy drops in points (128 test images; 30 steps unless stated):

- 32x32: robust model: 0.25 -> 7, 0.5 -> 14, 1.0 -> 24; natural model: 0.125 -> 12.5,
  0.25 -> 28, 0.5 -> 48. Chosen 0.5 pixel.
- 28x28 (natural model): 0.125 -> 5.5, 0.25 -> 13, 0.5 -> 28 (100 steps: 30). Chosen 0.5
  pixel.

Half a pixel sounds small, but the Gaussian smoothing lets the attack move whole strokes
and edges coherently; a 1-pixel flow already costs a robust model a quarter of its
accuracy (the MAT paper's AT ResNet-18 loses 33 points to Elastic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mutualat.attacks.base import ATTACKS, Example, check_positive, check_positive_int
from mutualat.attacks.unforeseen import ParameterSpaceAttack, check_no_norm
from mutualat.errors import ConfigError

#: Largest displacement ``eps`` of the flow, in pixels, per input size; see the docstring.
CALIBRATED_EPS = {"32x32": 0.5, "28x28": 0.5}


def gaussian_kernel(
    size: int, std: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``(2, 1, size, size)`` normalized Gaussian, one copy per flow component."""
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / std).square())
    k2 = g[:, None] * g[None, :]
    return (k2 / k2.sum()).expand(2, 1, size, size).contiguous()


def smooth_flow(flow: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Smooth each flow component with ``kernel``; edges padded by replication (advex-uar
    reflects, which fails on images smaller than the kernel's half-width)."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(flow, (pad,) * 4, mode="replicate"), kernel, groups=2)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of ``x`` at ``pixel + flow`` (flow ``(B, 2, H, W)`` in pixels, x then y).

    Outside the image the border pixel is repeated (advex-uar samples zeros there, which
    darkens the edges, an artefact that is not a deformation). With ``align_corners=True``
    a zero flow returns ``x``.
    """
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    base_y, base_x = torch.meshgrid(ys, xs, indexing="ij")
    # One pixel is 2 / (side - 1) in grid_sample's normalized coordinates.
    gx = base_x + flow[:, 0] * (2.0 / max(w - 1, 1))
    gy = base_y + flow[:, 1] * (2.0 / max(h - 1, 1))
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


@ATTACKS.register("elastic", family="unforeseen", examples=(
    Example(dict(eps=0.5, steps=3), strong=dict(eps=2.0, steps=10)),
))
class Elastic(ParameterSpaceAttack):
    """Elastic: ``x_adv = warp(x, gaussian * flow)``, ``|flow| <= eps`` pixels, optimized.

    As advex-uar's ``ElasticAttack``: a flow field (two components per pixel, in pixels)
    starts uniform in [-eps, eps], takes ``steps`` signed-gradient steps on the
    cross-entropy and is clipped back to [-eps, eps]; it is smoothed by a normalized
    Gaussian (so the displacement applied is at most ``eps`` pixels too) and the image is
    resampled bilinearly at the displaced positions. No lp ball: ``norm`` is None.

    Args:
        eps: largest displacement, in pixels (default ``CALIBRATED_EPS["32x32"]``).
        steps: signed-gradient steps (default 100).
        step_size: in pixels, default ``2.5 * eps / steps``.
        kernel_size: odd side of the smoothing kernel (default 25, advex-uar's).
        kernel_std: its standard deviation, in pixels (default 3, advex-uar's).
        norm: must be None (accepted for a uniform constructor).
        bn_mode: "eval" (default) or "train".

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    def __init__(
        self,
        eps: float = CALIBRATED_EPS["32x32"],
        steps: int = 100,
        step_size: float | None = None,
        kernel_size: int = 25,
        kernel_std: float = 3.0,
        norm: str | None = None,
        bn_mode: str = "eval",
    ) -> None:
        check_no_norm("elastic", norm)
        super().__init__(eps, steps, step_size, bn_mode)
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ConfigError(f"elastic: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.kernel_std = check_positive("kernel_std", kernel_std)

    def param_radius(self) -> float:
        return self.eps

    def init_params(self, x):
        b, _, h, w = x.shape
        flow = (2 * torch.rand(b, 2, h, w, device=x.device, dtype=x.dtype) - 1) * self.eps
        kernel = gaussian_kernel(self.kernel_size, self.kernel_std, x.device, x.dtype)
        return [flow], {"kernel": kernel}

    def render(self, x, params, const):
        return warp(x, smooth_flow(params[0], const["kernel"]))

    def clamp_params(self, params, const):
        return [params[0].clamp(-self.eps, self.eps)]

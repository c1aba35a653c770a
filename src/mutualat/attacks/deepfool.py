"""DeepFool, l2 and linf, judged at a fixed epsilon.

Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool deep
neural networks" (CVPR 2016), Algorithm 2 (multi-class) and Sec. 3.3 (general lp; linf
uses the dual l1 norm and the sign of the gradient difference).
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError

_TINY = 1e-12
# Added to the linearised distance, as in the reference code, so that the step crosses the
# linearised boundary rather than landing on it.
_CROSS = 1e-4


@ATTACKS.register("deepfool", family="gradient", examples=(
    Example(dict(norm="l2", eps=0.5, steps=3)),
    Example(dict(norm="linf", eps=8 / 255, steps=3), "linf"),
))
class DeepFool(Attack):
    """DeepFool: repeatedly step to the nearest linearised decision boundary.

    Args:
        norm: "l2" (default) or "linf".
        eps: the radius the result is judged at (default 0.5).
        steps: maximum iterations (default 50).
        overshoot: the total perturbation is scaled by ``1 + overshoot`` (default 0.02).
        num_classes: candidate classes, the top ones by clean logit (default 10; all if
            the model has fewer). Each iteration takes ``num_classes`` backward passes.
        bn_mode: "eval" (default) or "train".

    Examples drop out of the working batch once misclassified (one host sync per
    iteration). Returned per example: ``x + (1 + overshoot) * r``, projected onto the eps-ball
    if outside. Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> (B, C, H, W).
    """

    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        eps: float = 0.5,
        steps: int = 50,
        overshoot: float = 0.02,
        num_classes: int = 10,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm not in ("l2", "linf"):
            raise ConfigError(f"deepfool supports norm 'l2' or 'linf', got {norm!r}")
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.steps = check_positive_int("steps", steps)
        if not overshoot >= 0:
            raise ConfigError(f"overshoot must be >= 0, got {overshoot!r}")
        self.overshoot = float(overshoot)
        self.num_classes = check_positive_int("num_classes", num_classes)

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(x)
        k = min(self.num_classes, logits.shape[1])
        # Candidate classes: the true class first, then the other top-k classes by clean logit.
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        classes = torch.cat([y[:, None], others], dim=1)
        r_tot = torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)
        for t in range(self.steps):
            xa, ca, ra = x[active], classes[active], r_tot[active]
            x_adv = (xa + (1 + self.overshoot) * ra).clamp(0.0, 1.0).requires_grad_(True)
            out = model(x_adv)
            still = out.argmax(dim=1) == ca[:, 0]
            f = out.gather(1, ca)  # (b, k)
            grads = torch.stack(
                [torch.autograd.grad(f[:, j].sum(), x_adv, retain_graph=j + 1 < k)[0]
                 for j in range(k)],
                dim=1,
            )  # (b, k, C, H, W)
            if t == 0:
                warn_if_zero_gradient(grads, "deepfool")
            w = (grads[:, 1:] - grads[:, :1]).flatten(2)  # (b, k-1, d)
            fd = (f[:, 1:] - f[:, :1]).detach()  # (b, k-1), negative while correct
            dual = w.abs().sum(dim=2) if self.norm == "linf" else w.norm(dim=2)
            dist = (fd.abs() + _CROSS) / dual.clamp_min(_TINY)
            best = dist.argmin(dim=1)
            w_l = w[torch.arange(w.shape[0]), best]
            dist_l = dist.gather(1, best[:, None])
            if self.norm == "linf":
                r = dist_l * w_l.sign()
            else:
                r = dist_l * w_l / w_l.norm(dim=1, keepdim=True).clamp_min(_TINY)
            r = torch.where(still[:, None], r, torch.zeros_like(r))
            r_tot[active] = ra + r.reshape(ra.shape)
            active = active[still]
            if active.numel() == 0:
                break
        return self.threat.finalize(x, (x + (1 + self.overshoot) * r_tot).clamp(0.0, 1.0) - x)

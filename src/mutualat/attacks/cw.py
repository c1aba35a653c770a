"""Carlini-Wagner l2 attack, judged at a fixed epsilon.

Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks" (IEEE S&P 2017),
Sec. V.A: minimise ``||delta||_2^2 + c * max(z_y - max_{k!=y} z_k, -kappa)`` over
``x + delta = (tanh(w) + 1) / 2`` with Adam, and binary-search ``c`` per example.
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError
from mutualat.losses import cw_margin

# atanh(+-1) is infinite and tanh's gradient there is 0: pixels at exactly 0 or 1 could never
# move. Mapping [0,1] into [1e-6, 1 - 1e-6] first keeps them movable.
_BOX_SHRINK = 1 - 2e-6
# Upper bound of c meaning "no successful c seen yet" in the binary search.
_C_UNSET = 1e10


def _to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * _BOX_SHRINK)


def _from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return ((torch.tanh(w) / _BOX_SHRINK + 1) / 2).clamp(0.0, 1.0)


def _compact(w: torch.Tensor, optimizer: torch.optim.Adam, kept: torch.Tensor):
    """A smaller batch of variables, the rows where ``kept`` is True, with an Adam that carries
    their moments and step count on, as though the dropped rows had never been there."""
    state = optimizer.state[w]
    smaller = w.detach()[kept].clone().requires_grad_(True)
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    resumed = torch.optim.Adam([smaller], **settings)
    # Per-element state (the moments, and amsgrad's maximum) has w's shape and is sliced;
    # the rest (the step count) is shared by every row.
    resumed.state[smaller] = {
        key: (value[kept].clone() if value.shape == w.shape else value.clone())
        for key, value in state.items()
    }
    return smaller, resumed


@ATTACKS.register("cw", family="gradient", examples=(
    Example(dict(eps=0.5, steps=5, binary_search_steps=2)),
    Example(dict(eps=0.5, steps=5, binary_search_steps=2, stop_at_eps=True), name="stop-at-eps"),
))
class CarliniWagnerL2(Attack):
    """C&W-l2 with per-example binary search over ``c``; the result is judged at ``eps``.

    Args:
        eps: the l2 radius the result is judged at (default 0.5).
        steps: Adam iterations per binary-search step (default 1000).
        lr: Adam learning rate (default 0.01).
        c: initial trade-off constant (default 1e-2).
        kappa: confidence margin (default 0).
        binary_search_steps: number of values of ``c`` tried per example (default 9).
        abort_early: stop a search step when the objective has not decreased by 0.01 % over
            a tenth of the steps (as the original code does; one host sync per check).
        stop_at_eps: stop searching for an example once a misclassified point within ``eps``
            is found (default False). Its judged outcome is final then; the rest of the search
            would only shrink a norm the judgement ignores. The examples still searched are
            compacted into a smaller batch at each abort check and before each value of ``c``,
            so an evaluation at ``eps`` costs what its unbroken examples cost. The abort test
            then reads the objective of the examples still searched. Needs ``bn_mode``
            "eval" (in train mode batch-norm would mix the rows of the shrinking batch).
        bn_mode: "eval" (default) or "train".

    Returned per example: the misclassified point of smallest l2 norm found (with
    ``stop_at_eps``, the first one found within ``eps``), projected onto the eps-ball if it
    lies outside (unchanged if inside); if no misclassified point was found, the last iterate
    projected onto the ball.
    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> (B, C, H, W).
    """

    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        eps: float = 0.5,
        steps: int = 1000,
        lr: float = 0.01,
        c: float = 1e-2,
        kappa: float = 0.0,
        binary_search_steps: int = 9,
        abort_early: bool = True,
        stop_at_eps: bool = False,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm != "l2":
            raise ConfigError(f"cw is an l2 attack; got norm={norm!r}")
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.steps = check_positive_int("steps", steps)
        self.lr = check_positive("lr", lr)
        self.c = check_positive("c", c)
        if not kappa >= 0:
            raise ConfigError(f"kappa must be >= 0, got {kappa!r}")
        self.kappa = float(kappa)
        self.binary_search_steps = check_positive_int("binary_search_steps", binary_search_steps)
        self.abort_early = bool(abort_early)
        self.stop_at_eps = bool(stop_at_eps)
        if self.stop_at_eps and bn_mode == "train":
            raise ConfigError(
                "cw: stop_at_eps needs bn_mode 'eval': it shrinks the batch as examples break, "
                "and in train mode batch-norm statistics, so every example's logits, would "
                "depend on which others are still searched")

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        c = torch.full((batch,), self.c, device=x.device)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, _C_UNSET)
        best_l2 = torch.full_like(c, float("inf"))
        best_adv = x.clone()
        last = x.clone()
        w_clean = _to_tanh_space(x)
        warned = False
        for _ in range(self.binary_search_steps):
            # rows: the examples this value of c searches (all of them unless stop_at_eps).
            rows = self._searched(torch.arange(batch, device=x.device), best_l2)
            if rows.numel() == 0:
                break
            w = w_clean[rows].clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            success = torch.zeros(batch, dtype=torch.bool, device=x.device)
            prev = float("inf")
            x_rows, y_rows, c_rows = x[rows], y[rows], c[rows]  # gathered again on compaction
            for step in range(self.steps):
                x_adv = _from_tanh_space(w)
                logits = model(x_adv)
                l2_sq = (x_adv - x_rows).flatten(1).pow(2).sum(dim=1)
                # cw_margin is max_other - true; C&W's f is its negation, floored at -kappa.
                f = (-cw_margin(logits, y_rows, reduction="none")).clamp_min(-self.kappa)
                cost_each = l2_sq + c_rows * f
                if not warned:
                    # Judged on the classifier term alone: the distance term always has a gradient.
                    (grad_f,) = torch.autograd.grad(f.sum(), w, retain_graph=True)
                    warn_if_zero_gradient(grad_f, "cw")
                    warned = True
                (grad,) = torch.autograd.grad(cost_each.sum(), w)
                with torch.no_grad():
                    adv_now = (logits.argmax(dim=1) != y_rows) & (f <= -self.kappa)
                    l2 = l2_sq.detach().sqrt()
                    improved = adv_now & (l2 < best_l2[rows])
                    best_l2[rows] = torch.where(improved, l2, best_l2[rows])
                    best_adv[rows] = torch.where(
                        improved.reshape(-1, 1, 1, 1), x_adv.detach(), best_adv[rows])
                    success[rows] |= adv_now
                w.grad = grad
                optimizer.step()
                if self.abort_early and step % max(self.steps // 10, 1) == 0:
                    now = float(cost_each.detach().sum())
                    if now > prev * 0.9999:
                        break
                    prev = now
                if self.stop_at_eps and step % max(self.steps // 10, 1) == 0:
                    keep = self._searched(rows, best_l2)
                    if keep.numel() < rows.numel():
                        last[rows] = _from_tanh_space(w.detach())
                        if keep.numel() == 0:
                            break
                        kept = torch.isin(rows, keep)
                        w, optimizer = _compact(w, optimizer, kept)
                        prev = float(cost_each.detach()[kept].sum())
                        rows = keep
                        x_rows, y_rows, c_rows = x[rows], y[rows], c[rows]
            last[rows] = _from_tanh_space(w.detach())
            # Binary search on c: smaller after a success, larger (x10 until bounded) otherwise.
            upper = torch.where(success, torch.minimum(upper, c), upper)
            lower = torch.where(success, lower, torch.maximum(lower, c))
            c = torch.where(
                upper < _C_UNSET, (lower + upper) / 2, torch.where(success, c, c * 10)
            )
        return self._judge(x, best_adv, best_l2, last)

    def _searched(self, rows: torch.Tensor, best_l2: torch.Tensor) -> torch.Tensor:
        """The rows still to search: all of them, or with stop_at_eps those not yet broken
        within eps."""
        if not self.stop_at_eps:
            return rows
        return rows[~(best_l2[rows] <= self.eps)]

    def _judge(self, x, best_adv, best_l2, last) -> torch.Tensor:
        found = torch.isfinite(best_l2).reshape(-1, 1, 1, 1)
        return self.threat.finalize(x, torch.where(found, best_adv, last) - x)

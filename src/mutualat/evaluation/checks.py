"""Sanity checks that warn about gradient masking (an evaluation that looks robust because the
attacks were blind, not because the model is).

Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security" (ICML 2018),
Sec. 3.1, and Carlini et al., "On Evaluating Adversarial Robustness" (2019), list the signs;
the MAT paper (Sec. 3.2.4) argues with two of them. A check never changes a number: it adds
a sentence to ``summary.json["warnings"]`` (and prints it). Warnings are prompts to look
closer, not verdicts; thresholds are :class:`CheckConfig` fields.

From the suite's own results (:func:`suite_warnings`, free):

- a single-step attack (FGSM) beats an iterative one (PGD, MIM, APGD) of the same threat;
- random noise (Gaussian, salt & pepper) is as strong as PGD of the same threat.

Measured on a small subset (:func:`run_checks`, when enabled), each attack standalone: by
default a class-balanced sample of ``n`` examples of the evaluation set (seed 0), since an
evaluation set read from an image folder is ordered by class and its first ``n`` would be
one or two classes only:

- a single step (FGSM at l-inf, one step of length eps along the normalised gradient at
  l2; none at l1, see ``_ThreatChecks``) against PGD-20 with a random start;
- uniform random points of the ball (``noise_draws`` of them) against that PGD;
- black-box against white-box: PGD crafted on every other evaluated model (a transfer
  attack) must not beat the white-box PGD on the target;

  these three at every lp threat of the suite (the first one l-inf, when the suite has one:
  its numbers sit at the record's top level as they did when only it was checked; the others
  under ``other_threats``), since a model can mask one norm's gradients and not another's;
- PGD at a large radius (l-inf 0.5 by default): accuracy must fall to about 0;
- as AutoAttack's ``checks.py``: outputs that look like probabilities instead of logits, a
  randomized model (two forward passes differ), inputs whose gradient is exactly zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mutualat.attacks import attack_mode, create_attack, make_threat
from mutualat.attacks.threat import NORMS
from mutualat.data import balanced_indices, to_unit
from mutualat.errors import ConfigError
from mutualat.evaluation.worst_case import BROKEN, ROBUST

SINGLE_STEP = ("fgsm",)
ITERATIVE = ("pgd", "mim", "apgd", "apgd-ce", "apgd-dlr", "autoattack")
NOISE = ("gaussian_noise", "salt_and_pepper")


@dataclass
class CheckConfig:
    n: int = 256  # examples the measured checks run on
    # which n: "balanced" (a seeded class-balanced sample of the evaluation set) or "first"
    # (its first n, as before 2026-12-01: on a class-ordered set, its first classes only)
    sample: str = "balanced"
    pgd_steps: int = 20  # the iterative reference attack: PGD-20, random start
    noise_draws: int = 10  # uniform random points of the ball per example
    large_eps: float = 0.5  # l-inf radius at which any model must be broken
    large_eps_steps: int = 10
    large_eps_max_acc: float = 0.05  # "about 0": warn above this accuracy
    tol: float = 0.01  # accuracy margin before "A stronger than B" warns


# --------------------------------------------------------------------------------------------
# Pure checks on numbers
# --------------------------------------------------------------------------------------------


def single_step_vs_iterative(model: str, single: str, acc_single: float, iterative: str,
                             acc_iterative: float, tol: float) -> str | None:
    if acc_single < acc_iterative - tol:
        return (f"{model}: single-step {single} ({acc_single:.1%}) is stronger than iterative "
                f"{iterative} ({acc_iterative:.1%}); the iterative attack misses what one "
                "gradient step finds: a sign of gradient masking, or of an iterative attack too "
                "weak for this model")
    return None


def noise_vs_pgd(model: str, noise: str, acc_noise: float, pgd: str, acc_pgd: float,
                 tol: float) -> str | None:
    if acc_noise <= acc_pgd + tol:
        return (f"{model}: random noise ({noise}: {acc_noise:.1%}) is as strong as {pgd} "
                f"({acc_pgd:.1%}); gradient attacks should beat random noise by far (gradient "
                "masking, or a model already broken by noise)")
    return None


def large_eps(model: str, acc: float, eps: float, max_acc: float) -> str | None:
    if acc > max_acc:
        return (f"{model}: PGD at l-inf eps={eps:g} leaves {acc:.1%} accuracy; at such a radius "
                f"any model is breakable (expected <= {max_acc:.0%}), so the attack cannot follow "
                "the gradient: a sign of gradient masking")
    return None


def transfer_vs_whitebox(accuracy: Mapping[str, Mapping[str, float]],
                         white_box: Mapping[str, float], tol: float, threat: str = "") -> list[str]:
    """``accuracy[source][target]`` of transferred attacks, ``white_box[target]``: warn where a
    black-box (another source) attack beats the white-box one on the same target (``threat``,
    when given, names the threat both ran at)."""
    at = f" at {threat}" if threat else ""
    warnings = []
    for target, wb in white_box.items():
        for source, row in accuracy.items():
            if source == target or target not in row:
                continue
            if row[target] < wb - tol:
                warnings.append(
                    f"{target}: the black-box attack transferred from {source}{at} ({row[target]:.1%}) "
                    f"is stronger than the white-box attack ({wb:.1%}); white-box gradients are "
                    "uninformative, a sign of gradient masking"
                )
    return warnings


def suite_warnings(model: str, attacks: Sequence[Mapping], outcome: np.ndarray, clean: np.ndarray,
                   per_attack: str, tol: float = 0.01) -> list[str]:
    """Warnings from a suite's own results for one model.

    ``attacks`` are the suite's attack specs as dicts (``id``, ``name``, ``threat``) in order,
    ``outcome`` the ``(N, A)`` matrix. In ``standalone`` mode accuracies compare directly. In
    ``cumulative`` mode an attack only ran on what earlier attacks of its type left, so only
    one direction is observable: a single-step attack run *after* an iterative one that
    still breaks more than ``tol`` of the examples the iterative attack failed on.
    """
    out: list[str] = []
    n = max(len(clean), 1)
    for j, a in enumerate(attacks):
        earlier = [k for k, b in enumerate(attacks[:j])
                   if b["threat"] == a["threat"] and b["name"] in ITERATIVE]
        if per_attack != "standalone" and a["name"] in SINGLE_STEP and earlier:
            # cumulative: what the single-step attack broke that every iterative one before it
            # (of its type) failed on, in one warning
            extra = int(((outcome[:, j] == BROKEN)
                         & (outcome[:, earlier] == ROBUST).all(axis=1)).sum())
            if extra > tol * n:
                names = ", ".join(attacks[k]["id"] for k in earlier)
                out.append(f"{model}: single-step {a['id']} broke {extra} examples on which the "
                           f"iterative {names} failed; a sign of gradient masking")
        for k, b in enumerate(attacks):
            if a["threat"] != b["threat"]:
                continue
            if a["name"] in SINGLE_STEP and b["name"] in ITERATIVE:
                if per_attack == "standalone":
                    acc_a = float((clean & (outcome[:, j] == ROBUST)).sum() / n)
                    acc_b = float((clean & (outcome[:, k] == ROBUST)).sum() / n)
                    w = single_step_vs_iterative(model, a["id"], acc_a, b["id"], acc_b, tol)
                    if w:
                        out.append(w)
            if per_attack == "standalone" and a["name"] in NOISE and b["name"] == "pgd":
                acc_a = float((clean & (outcome[:, j] == ROBUST)).sum() / n)
                acc_b = float((clean & (outcome[:, k] == ROBUST)).sum() / n)
                w = noise_vs_pgd(model, a["id"], acc_a, b["id"], acc_b, tol)
                if w:
                    out.append(w)
    return out


# --------------------------------------------------------------------------------------------
# Measured checks
# --------------------------------------------------------------------------------------------


AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for start in range(0, len(y), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with attack_mode(model, "eval"):
        return model(x).argmax(dim=1)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackFn | None,
              batch_size: int) -> float:
    correct = 0
    for xb, yb in _batches(x, y, batch_size):
        if attack is not None:
            xb = attack(model, xb, yb)
        correct += int((_predict(model, xb) == yb).sum())
    return correct / max(len(y), 1)


def _noise_attack(norm: str, eps: float, draws: int) -> AttackFn:
    """Uniform random points of the ball; per example the first misclassified one."""
    threat = make_threat(norm, eps)

    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        done = _predict(model, x) != y
        for _ in range(draws):
            candidate = (x + threat.random_init(x)).clamp(0, 1)
            new = ~done & (_predict(model, candidate) != y)
            out = torch.where(new.reshape(-1, 1, 1, 1), candidate, out)
            done |= new
        return out

    return attack


def _output_checks(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int) -> list[str]:
    """What makes loss-based attacks unreliable on the model's outputs, over every example of
    the check sample, ``batch_size`` at a time: a randomized forward pass, probabilities
    instead of logits, inputs whose loss gradient is exactly zero."""
    if len(y) == 0:
        return []
    randomized, probabilities, zero = False, True, 0  # any batch; every batch; a count
    for xb, yb in _batches(x, y, batch_size):
        with torch.no_grad(), attack_mode(model, "eval"):
            a, b = model(xb), model(xb)
        randomized |= bool((a - b).abs().max() > 1e-4 * max(1.0, float(a.abs().max())))
        probabilities &= bool(a.min() >= 0 and a.max() <= 1 and torch.allclose(
            a.sum(dim=1), torch.ones_like(a[:, 0]), atol=1e-4))
        with attack_mode(model, "eval"):
            xg = xb.detach().clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xg), yb, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xg)
        zero += int((grad.flatten(1).abs().sum(dim=1) == 0).sum())
    out = []
    if randomized:
        out.append(f"{name}: two forward passes on the same images differ; a randomized model "
                   "needs expectation over transformation (EOT) attacks")
    if probabilities:
        out.append(f"{name}: the outputs look like probabilities, not logits; loss-based "
                   "attacks on a softmax output see vanishing gradients")
    if zero:
        out.append(f"{name}: {zero} of {len(y)} inputs have an exactly zero gradient; gradient "
                   "attacks cannot move them")
    return out


class _ThreatChecks:
    """PGD against a single step and against uniform noise, and PGD transferred between the
    models, at one lp threat."""

    def __init__(self, norm: str, eps: float, cfg: CheckConfig) -> None:
        self.norm, self.eps, self.cfg = norm, float(eps), cfg
        self.label = f"{norm} {eps:g}"
        self.pgd = create_attack("pgd", norm=norm, eps=eps, steps=cfg.pgd_steps,
                                 random_start=True, early_stop=True)
        # No single step at l1: the l1 PGD's sparse steps ignore the [0,1] box (Croce & Hein,
        # "Mind the box", 2021), and in a review of this check the one exact steepest l1 step,
        # which respects it, beat PGD-20 and PGD-100 on a plainly trained MLP: the comparison
        # would measure the attack, not masking (APGD at l1 is the suites' remedy).
        self.single, self.single_name = None, ""
        if norm == "linf":
            self.single, self.single_name = create_attack("fgsm", eps=eps), "FGSM"
        elif norm == "l2":
            self.single = create_attack("pgd", norm="l2", eps=eps, steps=1, step_size=eps,
                                        random_start=False)
            self.single_name = "FGM-l2 (one step of length eps)"
        self.noise = _noise_attack(norm, eps, cfg.noise_draws)

    def measure(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                batch_size: int) -> tuple[dict[str, float], list[str]]:
        cfg, pgd_name = self.cfg, f"PGD-{self.cfg.pgd_steps} at {self.label}"
        m = {"pgd": _accuracy(model, x, y, self.pgd, batch_size),
             "noise": _accuracy(model, x, y, self.noise, batch_size)}
        found = [noise_vs_pgd(name, f"uniform noise in the {self.label} ball", m["noise"],
                              pgd_name, m["pgd"], cfg.tol)]
        if self.single is not None:
            m["single_step"] = _accuracy(model, x, y, self.single, batch_size)
            found.append(single_step_vs_iterative(name, self.single_name, m["single_step"],
                                                  pgd_name, m["pgd"], cfg.tol))
        return m, [w for w in found if w]

    def transfer(self, models: Mapping[str, nn.Module], names: Sequence[str], x: torch.Tensor,
                 y: torch.Tensor, batch_size: int,
                 white_box: Mapping[str, float]) -> tuple[dict[str, dict[str, float]], list[str]]:
        transfer: dict[str, dict[str, float]] = {}
        if len(names) < 2:  # nothing to transfer from
            return transfer, []
        for source in names:
            row: dict[str, float] = {t: 0.0 for t in names if t != source}
            for xb, yb in _batches(x, y, batch_size):
                x_adv = self.pgd(models[source], xb, yb)
                for target in row:
                    row[target] += int((_predict(models[target], x_adv) == yb).sum())
            transfer[source] = {t: c / max(len(y), 1) for t, c in row.items()}
        return transfer, transfer_vs_whitebox(transfer, {t: white_box[t] for t in names},
                                              self.cfg.tol, self.label)


def run_checks(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: str | None,
    eps: float | None,
    batch_size: int,
    device: torch.device,
    config: CheckConfig | None = None,
    transfer_models: Sequence[str] | None = None,
    other_threats: Mapping[str, tuple[str, float]] | None = None,
) -> dict:
    """Measure the checks on ``config.n`` examples (``config.sample`` says which); returns
    ``{"config", "threat", "threats", "n", "models": {name: {measurement: accuracy}},
    "transfer", "other_threats": {key: {"threat", "models", "transfer"}}, "warnings": [...]}``.

    ``images`` are float in [0,1] or uint8, ``labels`` a tensor; ``norm``/``eps`` the first
    threat the comparisons use (``None``: only the large-eps and output checks run), whose
    measurements sit beside the threat-free ones; ``other_threats`` (key -> (norm, eps)) are
    checked after it, each under its key. ``transfer_models`` (default: all) take part in the
    black-box check; the caller seeds torch for repeatability.
    """
    cfg = config or CheckConfig()
    if cfg.sample == "balanced":
        index = torch.from_numpy(balanced_indices(labels.cpu().numpy(), cfg.n, seed=0))
    elif cfg.sample == "first":
        index = torch.arange(min(cfg.n, len(labels)))
    else:
        raise ConfigError(f"checks' sample must be 'balanced' or 'first', got {cfg.sample!r}")
    x = to_unit(images[index.to(images.device)].to(device))
    y = labels[index.to(labels.device)].to(device)
    warnings: list[str] = []
    measured: dict[str, dict[str, float]] = {}

    first = _ThreatChecks(norm, eps, cfg) if norm in NORMS and eps is not None else None
    large = create_attack("pgd", norm="linf", eps=cfg.large_eps, steps=cfg.large_eps_steps,
                          random_start=False, early_stop=True)
    for name, model in models.items():
        m: dict[str, float] = {"clean": _accuracy(model, x, y, None, batch_size)}
        warnings += _output_checks(name, model, x, y, batch_size)
        if first is not None:
            values, found = first.measure(name, model, x, y, batch_size)
            m.update(values)
            warnings += found
        m["large_eps_pgd"] = _accuracy(model, x, y, large, batch_size)
        w = large_eps(name, m["large_eps_pgd"], cfg.large_eps, cfg.large_eps_max_acc)
        warnings += [w] if w else []
        measured[name] = m

    names = [n for n in (transfer_models if transfer_models is not None else models) if n in models]
    transfer: dict[str, dict[str, float]] = {}
    if first is not None:
        transfer, found = first.transfer(models, names, x, y, batch_size,
                                         {t: measured[t]["pgd"] for t in names})
        warnings += found

    others: dict[str, dict] = {}
    for key, (o_norm, o_eps) in (other_threats or {}).items():
        if o_norm not in NORMS:
            raise ConfigError(f"checks: threat {key!r} has norm {o_norm!r}, not one of {NORMS}")
        checks = _ThreatChecks(o_norm, o_eps, cfg)
        rows: dict[str, dict[str, float]] = {}
        for name, model in models.items():
            rows[name], found = checks.measure(name, model, x, y, batch_size)
            warnings += found
        o_transfer, found = checks.transfer(models, names, x, y, batch_size,
                                            {t: rows[t]["pgd"] for t in names})
        warnings += found
        others[key] = {"threat": {"norm": o_norm, "eps": float(o_eps)}, "models": rows,
                       "transfer": o_transfer}

    return {
        "config": asdict(cfg),
        "threat": {"norm": norm, "eps": eps},
        "threats": [{"norm": norm, "eps": eps}] + [o["threat"] for o in others.values()],
        "n": int(len(y)),
        "models": measured,
        "transfer": transfer,
        "other_threats": others,
        "warnings": warnings,
    }

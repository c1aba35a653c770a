"""What a study selects on: validation robust accuracy as the per-example worst case over a
method's threat types (never the lowest type's accuracy), and the multiple-perturbation
methods' training attacks built with the batch-norm mode the config asks for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mutualat.attacks.threat import Threat
from mutualat.config import AttackConfig
from mutualat.methods.at_multi import ATMax, ATMSD, MultiATParams, MSDATParams
from mutualat.methods.mat_mp import MATMP, MATMPParams
from mutualat.train.validate import robust_accuracies


class _FirstPixelWins(nn.Module):
    """Class 1 where pixel 0 exceeds pixel 1, else class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # where the validation finds the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([flat[:, 1], flat[:, 0]], dim=1)


def _flip(rows: list[int]):
    """A stand-in attack that swaps pixels 0 and 1 of the given examples (by their pixel 2,
    which holds the example's index): those examples become misclassified."""

    def attack(model, x, y):
        out = x.clone()
        hit = torch.isin((x[:, 0, 0, 2] * 100).round().long(), torch.tensor(rows))
        out[hit, 0, 0, 0], out[hit, 0, 0, 1] = x[hit, 0, 0, 1], x[hit, 0, 0, 0]
        return out

    return attack


def test_validation_robust_accuracy_is_the_per_example_worst_case_over_the_types():
    n = 10
    x = torch.zeros(n, 1, 1, 4)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0.9, 0.1  # every example class 1...
    x[:, 0, 0, 2] = torch.arange(n) / 100  # ... with its index in pixel 2
    y = torch.ones(n, dtype=torch.long)
    y[5] = 0  # ... but example 5 is labelled 0: wrong when clean
    accuracies = robust_accuracies(_FirstPixelWins(), x, y, {"linf": _flip([0, 1, 2]),
                                                             "l2": _flip([2, 3, 4])}, batch_size=4)
    assert accuracies["clean"] == pytest.approx(0.9)
    # each type alone: 6 correct (its flipped three and example 5 wrong)
    assert accuracies["linf"] == pytest.approx(0.6) and accuracies["l2"] == pytest.approx(0.6)
    # the worst case: robust only where clean-correct and no type broke it (6, 7, 8, 9),
    # below the lowest type's 0.6
    assert accuracies["worst"] == pytest.approx(0.4)


THREATS = [Threat("linf", 0.1, 2), Threat("l2", 1.0, 2), Threat("l1", 10.0, 2)]


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_the_multiple_perturbation_methods_attack_with_the_configured_batch_norm_mode(bn_mode):
    attack = AttackConfig(eps=0.1, steps=2, bn_mode=bn_mode)
    built = {
        "at-max": ATMax(MultiATParams(threats=THREATS), attack, [False]),
        "at-msd": ATMSD(MSDATParams(threats=THREATS), attack, [False]),
        "mat-mp": MATMP(MATMPParams(generalist="msd", threats=THREATS), attack, [False] * 4),
    }
    for name, method in built.items():
        attacks = list(getattr(method, "attacks", [])) + [getattr(method, "msd", None)]
        attacks = [a for a in attacks if a is not None]
        assert attacks, name
        assert {a.bn_mode for a in attacks} == {bn_mode}, name

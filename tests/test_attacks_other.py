"""Property tests of the decision-based, noise and unforeseen attacks.

Every attack below runs on a tiny conv net with batch-norm and random [0,1] images, with few
steps, and must: stay in [0,1] (and in its ball where it has a norm), restore the model's
mode and batch-norm buffers, leave parameter gradients alone, and return either the clean
image or a point that is misclassified (or, for minimum-norm attacks, the projection onto
the ball of one). On a linear model with a tiny margin each attack must break most of the
batch at a large budget.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mutualat.attacks import boundary, elastic, fog, gabor, noise, pointwise  # noqa: F401
from mutualat.attacks.base import ATTACKS, FAMILIES, Example, create_attack
from mutualat.attacks.noise import judge_at_eps, perturbation_norm, salt_and_pepper_draw
from mutualat.errors import ConfigError

from conftest import attack_examples

# Every registered decision-based, noise and unforeseen attack with each of its examples, as
# declared at its registration: small settings, so that the whole file runs in seconds on a
# CPU, and strong ones for test_breaks_a_linear_model_with_a_tiny_margin.
EXAMPLES = attack_examples("decision", "unforeseen")
FAST = {case: example.settings for case, (_, example) in EXAMPLES.items()}
LARGE = {case: example.strong for case, (_, example) in EXAMPLES.items()}
DECISION = {case for case, (name, _) in EXAMPLES.items()
            if ATTACKS.declared(name)["family"] == "decision"}
UNFORESEEN = set(FAST) - DECISION
OURS = {name for name, _ in EXAMPLES.values()}


def build(case: str, **overrides):
    return create_attack(EXAMPLES[case][0], **{**FAST[case], **overrides})


MIN_NORM = {case for case in DECISION if build(case).minimum_norm}


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10),
    )


def batch(model: nn.Module, n: int = 8, side: int = 8):
    torch.manual_seed(1)
    x = torch.rand(n, 3, side, side)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # the clean images are classified "correctly"
    y[:2] = (y[:2] + 1) % 10  # ... except two, which any attack may return unchanged
    return x, y


def test_every_attack_of_ours_is_registered_and_tested():
    # The decision-based, noise and unforeseen attacks of today, at least.
    assert OURS >= {"gaussian_noise", "salt_and_pepper", "pointwise", "boundary", "fog", "gabor",
                    "elastic"}
    assert OURS <= set(ATTACKS.names())
    assert {"pointwise", "pointwise-l1", "pointwise-l0", "boundary"} <= MIN_NORM
    assert {"fog", "gabor", "elastic"} <= UNFORESEEN


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_registered_attack_declares_its_family_and_examples(name: str):
    """Declared at the registration, @ATTACKS.register(name, family=..., examples=(...)):
    what puts an attack under the property tests of its family."""
    declared = ATTACKS.declared(name)
    assert declared.get("family") in FAMILIES, f"{name}: family must be one of {FAMILIES}"
    examples = declared.get("examples", ())
    assert examples and all(isinstance(e, Example) for e in examples), name
    assert len({e.name for e in examples}) == len(examples), f"{name}: examples need distinct names"
    if declared["family"] != "gradient":  # test_breaks_a_linear_model_with_a_tiny_margin
        assert all(e.strong for e in examples), f"{name}: every example needs strong=..."


def test_every_registered_attack_is_under_a_property_test():
    """Every registered attack is run by the property tests of its family, here or in
    test_attacks_gradient.py: no attack escapes them."""
    covered = OURS | {name for name, _ in attack_examples("gradient").values()}
    assert set(ATTACKS.names()) == covered, set(ATTACKS.names()) ^ covered


class _Constant(nn.Module):
    """Logits that do not depend on the input: every gradient is exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.arange(10, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 10) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("case", sorted(UNFORESEEN))
def test_unforeseen_warn_on_a_zero_gradient_and_do_not_crash(case: str):
    x = torch.rand(4, 3, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="exactly zero"):
        x_adv = build(case)(_Constant(), x, y)
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("case", sorted(FAST))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_properties(case: str, mode: str):
    model = tiny_net()
    x, y = batch(model)
    model.train(mode == "train")
    # Give the batch-norm statistics non-default values so that a change would show.
    with torch.no_grad():
        model(torch.rand(16, 3, 8, 8))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    attack = build(case)
    torch.manual_seed(2)
    x_adv = attack(model, x, y)

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(m.training == (mode == "train") for m in model.modules())
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert all(p.grad is None for p in model.parameters())

    if attack.norm is not None:
        assert (perturbation_norm(x_adv - x, attack.norm) <= attack.eps + 1e-6).all()
    if case in DECISION:
        model.eval()
        with torch.no_grad():
            wrong = model(x_adv).argmax(dim=1) != y
        changed = (x_adv != x).flatten(1).any(dim=1)
        if case in MIN_NORM:
            # A point that is not misclassified can only be a projection onto the sphere.
            on_sphere = perturbation_norm(x_adv - x, attack.norm) >= attack.eps - 1e-4
            assert (~changed | wrong | on_sphere).all()
        else:
            assert (~changed | wrong).all()
        assert not changed[:2].any()  # misclassified clean images come back unchanged


@pytest.mark.parametrize("case", ["boundary", "fog"])
def test_train_mode_attacks_restore_batch_norm_statistics(case: str):
    model = tiny_net()
    x, y = batch(model)
    model.eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    build(case, bn_mode="train")(model, x, y)
    assert not model.training
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


@pytest.mark.parametrize("case", sorted(UNFORESEEN))
def test_unforeseen_change_the_image_and_are_deterministic(case: str):
    model = tiny_net()
    x, y = batch(model)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(build(case)(model, x, y))
    assert torch.equal(outs[0], outs[1])
    assert ((outs[0] - x).abs().flatten(1).amax(dim=1) > 1e-3).all()
    torch.manual_seed(4)
    assert not torch.equal(build(case)(model, x, y), outs[0])


def breakable_linear(n: int = 32, side: int = 8):
    """A random linear classifier: on random images its decisions have tiny margins (the
    nearest decision boundary is about 0.1 away in l2)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, 10))
    x = torch.rand(n, 3, side, side)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


@pytest.mark.parametrize("case", sorted(FAST))
def test_breaks_a_linear_model_with_a_tiny_margin(case: str):
    lin, x, y = breakable_linear()
    torch.manual_seed(6)
    x_adv = build(case, **LARGE[case])(lin, x, y)
    with torch.no_grad():
        broken = (lin(x_adv).argmax(dim=1) != y).float().mean().item()
    assert broken >= 0.75, f"{case} broke only {broken:.0%}"


def test_salt_and_pepper_draw_respects_the_budget_exactly():
    torch.manual_seed(7)
    x = torch.rand(16, 3, 8, 8)
    for norm, eps in [("l1", 3.7), ("l2", 0.9), ("l0", 11)]:
        budget = torch.full((16,), float(eps), dtype=torch.float64)
        x_sp = salt_and_pepper_draw(x, budget, norm)
        assert (perturbation_norm(x_sp - x, norm) <= eps).all()
        assert ((x_sp == x) | (x_sp == 0) | (x_sp == 1)).all()
    everything = salt_and_pepper_draw(x, torch.full((16,), float("inf"), dtype=torch.float64), "l1")
    assert ((everything == 0) | (everything == 1)).all()


def test_judge_at_eps_keeps_projects_or_returns_clean():
    x = torch.full((3, 1, 2, 2), 0.5)
    far = x.clone()
    far[:, 0, 0, 0] = 1.0  # l2 distance 0.5
    far[:, 0, 1, 1] = 0.4  # ... and l0 distance 2
    found = torch.tensor([True, True, False])
    out = judge_at_eps(x, far, found, "l2", 1.0)
    assert torch.equal(out[0], far[0]) and torch.equal(out[2], x[2])
    out = judge_at_eps(x, far, found, "l2", 0.25)
    assert perturbation_norm(out[:2] - x[:2], "l2").sub(0.25).abs().max() < 1e-6
    out = judge_at_eps(x, far, found, "l0", 1)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.5  # the larger change is kept


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("gaussian_noise", dict(norm="l1")),
        ("salt_and_pepper", dict(norm="linf")),
        ("pointwise", dict(init="zeros")),
        ("boundary", dict(step_adaptation=1.0)),
        ("fog", dict(norm="linf")),
        ("gabor", dict(kernel_size=4)),
        ("elastic", dict(steps=0)),
    ],
)
def test_bad_arguments_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError):
        create_attack(name, **kwargs)


@pytest.mark.parametrize("module", [fog, gabor, elastic])
def test_calibrated_eps_are_published_for_both_sizes(module):
    assert set(module.CALIBRATED_EPS) == {"32x32", "28x28"}
    assert all(v > 0 for v in module.CALIBRATED_EPS.values())


def test_fog_map_is_in_unit_range_and_sized_for_the_image():
    assert fog.map_size(32, 32) == 64 and fog.map_size(28, 28) == 32
    torch.manual_seed(8)
    params = [torch.rand(2, 2**i, 2**i) for i in range(5) for _ in range(3)]
    m = fog.fog_map(params, 2.0)
    assert m.shape == (2, 32, 32) and m.min() == 0 and m.max() == 1

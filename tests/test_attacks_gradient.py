"""Gradient attacks: properties every one must have, PGD/MSD semantics, and a cross-check
of robust accuracy against torchattacks on a quickly trained Fashion-MNIST model."""

from __future__ import annotations

import copy
import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mutualat.attacks import ATTACKS, MSD, PGD, create_attack, make_threat
from mutualat.errors import ConfigError

from conftest import attack_examples, reference_missing

# Every registered gradient attack with each of its examples (few steps), as declared at its
# registration, so that the whole property suite runs in seconds.
GRADIENT_ATTACKS = attack_examples("gradient")


def registry_name(case: str) -> str:
    return GRADIENT_ATTACKS[case][0]


def build(case: str, **extra):
    name, example = GRADIENT_ATTACKS[case]
    return create_attack(name, **example.settings, **extra)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )


class ConstantNet(nn.Module):
    """Logits that do not depend on the input: its input gradient is exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x).mean(dim=(2, 3)) * 0)


def batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=gen)
    x[0] = 0.0  # saturated images exercise the clipping
    x[1] = 1.0
    return x, torch.randint(0, 10, (n,), generator=gen)


def inside(attack, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    if isinstance(attack, MSD):
        balls = [t.contains(x, x_adv) for t in attack.threats]
        return torch.stack(balls).any(dim=0)
    return make_threat(attack.norm, attack.eps).contains(x, x_adv)


def test_every_gradient_attack_is_registered_and_covered():
    names = {registry_name(c) for c in GRADIENT_ATTACKS}
    # The gradient attacks of today, at least; a new one joins through its registration.
    assert names >= {
        "fgsm", "pgd", "mim", "cw", "ddn", "deepfool", "msd", "apgd", "apgd-ce", "apgd-dlr"
    }
    assert names <= set(ATTACKS.names())
    assert {"pgd-l2", "pgd-l1", "pgd-lc", "pgd-trades", "deepfool-linf"} <= set(GRADIENT_ATTACKS)


@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", GRADIENT_ATTACKS)
def test_attack_properties(case, train_mode):
    model = tiny_net()
    model.train(train_mode)
    model[4].eval()  # a mixed-mode model: every flag must come back as it was
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch()
    attack = build(case)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    assert inside(attack, x, x_adv).all()
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert all(p.grad is None for p in model.parameters())
    if attack.minimum_norm or getattr(attack, "loss", None) not in ("ce", "lc"):
        return  # minimum-norm attacks, and objectives other than cross-entropy (L_C is a CE)
    # It is an attack: the cross-entropy goes up on average.
    model.eval()
    with torch.no_grad():
        ce = nn.functional.cross_entropy
        assert ce(model(x_adv), y) > ce(model(x), y)


@pytest.mark.parametrize("case", GRADIENT_ATTACKS)
def test_zero_gradient_warns_and_does_not_crash(case):
    model = ConstantNet()
    x, y = batch(4)
    with pytest.warns(RuntimeWarning, match="gradient is exactly zero"):
        x_adv = build(case)(model, x, y)
    assert torch.isfinite(x_adv).all()
    assert inside(build(case), x, x_adv).all()


def test_train_bn_mode_restores_running_statistics():
    model = tiny_net().eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch()
    PGD(norm="linf", eps=8 / 255, steps=2, bn_mode="train")(model, x, y)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k


def test_pgd_rejects_bad_configuration():
    with pytest.raises(ConfigError, match="l1"):
        PGD(norm="l3")
    with pytest.raises(ConfigError):
        PGD(eps=0)
    with pytest.raises(ConfigError, match="lc"):
        PGD(loss="nope")
    with pytest.raises(ConfigError):
        PGD(steps=0)
    with pytest.raises(ConfigError, match="random_start"):
        PGD(loss="trades_kl", random_start=False)
    with pytest.raises(ConfigError):
        create_attack("fgsm", norm="l2")


def test_pgd_restarts_keep_the_per_example_best(monkeypatch):
    model = tiny_net().eval()
    x, y = batch()
    x = 0.2 + 0.6 * x  # away from the box so that candidates are not clipped
    eps = 8 / 255
    gen = torch.Generator().manual_seed(5)
    candidates = [(torch.rand(x.shape, generator=gen) - 0.5) * eps for _ in range(3)]
    runs = iter(candidates)
    attack = PGD(norm="linf", eps=eps, steps=1, restarts=3)
    monkeypatch.setattr(attack, "run_once", lambda *args, **kwargs: next(runs))
    x_adv = attack(model, x, y)
    with torch.no_grad():
        logits = [model(x + d) for d in candidates]
    wrong = torch.stack([z.argmax(1) != y for z in logits])
    loss = torch.stack([nn.functional.cross_entropy(z, y, reduction="none") for z in logits])
    # Misclassifying first, then the highest loss.
    expected = (wrong.double() * 1e3 + loss.double()).argmax(dim=0)
    for i in range(x.shape[0]):
        assert torch.allclose(x_adv[i], x[i] + candidates[expected[i]][i], atol=1e-6)


def test_early_stop_pgd_is_at_least_as_strong_as_plain_pgd():
    model = tiny_net().eval()
    x, y = batch(64)
    kwargs = dict(norm="linf", eps=4 / 255, steps=10, random_start=False)
    with torch.no_grad():
        plain = model(PGD(**kwargs)(model, x, y)).argmax(1) != y
        early = model(PGD(early_stop=True, **kwargs)(model, x, y)).argmax(1) != y
    assert (early | ~plain).all()


def test_msd_beats_each_single_norm_step_at_the_first_iteration():
    model = tiny_net().eval()
    x, y = batch(32)
    eps, steps = (8 / 255, 0.5, 5.0), (2 / 255, 0.2, 0.1)
    torch.manual_seed(7)  # the l1 step draws k from the global generator
    x_adv = MSD(eps=eps, step_size=steps, steps=1)(model, x, y)
    torch.manual_seed(7)
    delta = torch.zeros_like(x, requires_grad=True)
    total = nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(total, delta)
    ce = lambda z: nn.functional.cross_entropy(z, y, reduction="none")  # noqa: E731
    with torch.no_grad():
        msd_loss = ce(model(x_adv))
        for norm, e, s in zip(("linf", "l2", "l1"), eps, steps):
            threat = make_threat(norm, e)
            single = threat.project(x, threat.ascent_step(grad, s, x_adv=x))
            assert (msd_loss >= ce(model(x + single)) - 1e-4).all(), norm


# --------------------------------------------------------------------------------------------
# Cross-check against torchattacks on a trained model
# --------------------------------------------------------------------------------------------

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def _fashion_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), uint8 (N, 1, 28, 28)."""
    try:
        from mutualat.data import load_dataset

        data = load_dataset("fashion-mnist-embedded")
        return data.train.images, data.train.labels, data.test.images, data.test.labels
    except Exception:  # the data module is optional here; fall back to the shared files
        pass

    def idx(name: str) -> np.ndarray:
        path = SHARED_FMNIST / name
        if not path.exists():
            pytest.skip(f"no Fashion-MNIST at {SHARED_FMNIST}")
        raw = gzip.open(path).read()
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)

    tr, te = idx("train-images-idx3-ubyte.gz"), idx("t10k-images-idx3-ubyte.gz")
    return (tr[:10000, None], idx("train-labels-idx1-ubyte.gz")[:10000].astype(np.int64),
            te[:, None], idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained for one epoch on 10k Fashion-MNIST images (a few seconds), and
    500 test images (of which the slow per-example torchattacks DeepFool sees 100)."""
    xtr, ytr, xte, yte = _fashion_mnist()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.from_numpy(xtr[:10000]).float() / 255
    y = torch.from_numpy(ytr[:10000])
    for i in torch.randperm(len(y)).split(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # torchattacks would otherwise accumulate parameter grads
    return model, torch.from_numpy(xte[:500]).float() / 255, torch.from_numpy(yte[:500])


def robust_accuracy(model, x_adv, y) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def judged_at(norm: str, eps: float, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """torchattacks' minimum-norm attacks are unbounded: judge them at eps like ours."""
    return make_threat(norm, eps).finalize(x, x_adv - x)


CROSS_CHECKS = {
    # name: (ours, theirs(model), norm, eps, exact) ; exact: same algorithm, within 1 pp.
    "fgsm": (lambda: create_attack("fgsm", eps=0.05),
             lambda ta, m: ta.FGSM(m, eps=0.05), "linf", 0.05, True),
    "pgd-linf": (lambda: PGD(norm="linf", eps=0.03, steps=10, step_size=0.0075, random_start=False),
                 lambda ta, m: ta.PGD(m, eps=0.03, alpha=0.0075, steps=10, random_start=False),
                 "linf", 0.03, True),
    "pgd-l2": (lambda: PGD(norm="l2", eps=0.5, steps=10, step_size=0.125, random_start=False),
               lambda ta, m: ta.PGDL2(m, eps=0.5, alpha=0.125, steps=10, random_start=False),
               "l2", 0.5, True),
    "mim": (lambda: create_attack("mim", eps=0.03, steps=10, step_size=0.003),
            lambda ta, m: ta.MIFGSM(m, eps=0.03, alpha=0.003, steps=10, decay=1.0),
            "linf", 0.03, True),
    # C&W: torchattacks has one c and no binary search; ours searches c from the same start.
    "cw": (lambda: create_attack("cw", eps=0.5, steps=30, c=1.0, binary_search_steps=2),
           lambda ta, m: ta.CW(m, c=1.0, kappa=0, steps=30, lr=0.01), "l2", 0.5, False),
    # DeepFool: ours applies the overshoot to the total perturbation (as the original code);
    # torchattacks applies it to each clipped step, which on images with many saturated
    # pixels (Fashion-MNIST's black background) creeps towards the boundary without
    # crossing it, so ours is stronger. Their loop is per example: 100 images, 10 steps.
    "deepfool": (lambda: create_attack("deepfool", norm="l2", eps=0.5, steps=10, overshoot=0.02),
                 lambda ta, m: ta.DeepFool(m, steps=10, overshoot=0.02), "l2", 0.5, False),
}


@pytest.mark.parametrize("name", CROSS_CHECKS)
def test_robust_accuracy_matches_torchattacks(trained, name):
    try:
        import torchattacks as ta
    except ImportError as error:
        reference_missing(f"could not import 'torchattacks': {error}")
    model, x, y = trained
    if name == "deepfool":
        x, y = x[:100], y[:100]
    ours_factory, theirs_factory, norm, eps, exact = CROSS_CHECKS[name]
    start = time.perf_counter()
    ours = robust_accuracy(model, ours_factory()(model, x, y), y)
    mid = time.perf_counter()
    theirs_adv = theirs_factory(ta, model)(x, y)
    theirs = robust_accuracy(model, judged_at(norm, eps, x, theirs_adv), y)
    end = time.perf_counter()
    print(f"{name}: clean {robust_accuracy(model, x, y):.3f} ours {ours:.3f} ({mid - start:.1f}s) "
          f"torchattacks {theirs:.3f} ({end - mid:.1f}s)")
    assert ours <= theirs + 0.01
    if exact:
        assert abs(ours - theirs) <= 0.01


def test_cw_compaction_carries_adam_on_as_if_the_dropped_rows_were_never_there():
    """cw._compact: Adam on the kept rows after compaction follows exactly the trajectory those
    rows follow in the full batch (Adam is element-wise and the objective a sum over rows)."""
    from mutualat.attacks.cw import _compact

    torch.manual_seed(0)
    target = torch.randn(6, 3)
    kept = torch.tensor([True, False, True, True, False, True])

    def run(w, optimizer, steps):
        for _ in range(steps):
            w.grad = torch.autograd.grad(((w - target[rows]) ** 3).abs().sum(), w)[0]
            optimizer.step()
        return w

    rows = torch.arange(6)
    full = torch.zeros(6, 3, requires_grad=True)
    full_opt = torch.optim.Adam([full], lr=0.1)
    run(full, full_opt, 7)
    split = full.detach().clone().requires_grad_(True)
    split_opt = torch.optim.Adam([split], lr=0.1)
    split_opt.load_state_dict(copy.deepcopy(full_opt.state_dict()))  # load shares tensors
    run(full, full_opt, 5)
    small, small_opt = _compact(split, split_opt, kept)
    rows = rows[kept]
    run(small, small_opt, 5)
    # Element-wise arithmetic on rows of different tensors: equal up to vectorisation's
    # rounding on other processors (bitwise equal here).
    torch.testing.assert_close(small.detach(), full.detach()[kept], rtol=0, atol=1e-6)


def test_cw_stop_at_eps_judges_as_the_full_search_and_attacks_fewer_rows(trained):
    """Without the abort test every example's search is independent of the others, so stopping
    an example once it is broken within eps cannot change any judged outcome: the same
    examples are broken, and the model sees fewer rows."""
    model, x, y = trained
    x, y = x[:64], y[:64]
    seen = {"rows": 0}
    hook = model.register_forward_pre_hook(lambda m, args: seen.__setitem__(
        "rows", seen["rows"] + args[0].shape[0]))
    try:
        outcome, rows, found = {}, {}, {}
        for stop in (False, True):
            seen["rows"] = 0
            attack = create_attack("cw", eps=1.0, steps=40, lr=0.05, binary_search_steps=4,
                                   abort_early=False, stop_at_eps=stop)
            x_adv = attack(model, x, y)
            found[stop] = x_adv
            rows[stop] = seen["rows"]
            assert ((x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()
            with torch.no_grad():
                outcome[stop] = model(x_adv).argmax(1) == y
    finally:
        hook.remove()
    assert 0 < (~outcome[False]).sum() < len(y)  # the test sees both outcomes
    assert torch.equal(outcome[True], outcome[False])
    assert rows[True] < 0.8 * rows[False], rows
    # The examples never broken were searched to the end in both: the same last iterate, so
    # compaction carried their Adam state on (a fresh Adam would move them elsewhere).
    robust = outcome[True]
    torch.testing.assert_close(found[True][robust], found[False][robust], rtol=0, atol=1e-5)


def test_cw_stop_at_eps_refuses_train_mode_batch_norm():
    with pytest.raises(ConfigError, match="stop_at_eps needs bn_mode 'eval'"):
        create_attack("cw", eps=0.5, stop_at_eps=True, bn_mode="train")

"""Training-method losses against values computed by hand.

The "models" are affine maps ``logits = scale * x + bias`` of a (B, 1, 1, 3) input, so every
logit is known in advance, and the attacks are replaced by fixed perturbations, so these
tests depend neither on real networks nor on the attack package. The expected numbers are
computed below in plain Python with ``math.exp`` / ``math.log`` on lists, never with the
library function under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mutualat import losses
from mutualat.config import AttackConfig, MethodConfig, ModelConfig, RunConfig
from mutualat.errors import ConfigError
from mutualat.methods import METHODS, build_method
from mutualat.methods.act import ACT, ACTParams, act_attack_objective
from mutualat.methods.ard import ARD, ARDParams
from mutualat.methods.mart import MART, MARTParams
from mutualat.methods.mat import MAT, MATParams
from mutualat.methods.scenarios import SCENARIOS, scenario_configs, stage1_model_file
from mutualat.methods.trades import TRADES, TRADESParams
from mutualat.train.cohort import Cohort

# --- arithmetic by hand ---------------------------------------------------------------


def softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    s = sum(e)
    return [v / s for v in e]


def ce(z: list[float], y: int) -> float:
    return -math.log(softmax(z)[y])


def lc(z: list[float], y: int) -> float:
    """MART's boosted CE: -log p_y - log(1 - max_{k != y} p_k)."""
    p = softmax(z)
    return -math.log(p[y]) - math.log(1.0 - max(p[k] for k in range(len(p)) if k != y))


def kl(target: list[float], inp: list[float], t: float = 1.0) -> float:
    """KL(softmax(target/t) || softmax(inp/t)) summed over classes."""
    p, q = softmax(target, t), softmax(inp, t)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def add(a: list[float], b: list[float]) -> list[float]:
    return [u + v for u, v in zip(a, b)]


# --- fixtures: affine "models", fixed perturbations -----------------------------------

X = [[0.2, 0.5, 0.1], [0.9, 0.0, 0.3], [0.4, 0.4, 0.8]]  # three images of three "pixels"
Y = [1, 0, 2]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(X).reshape(3, 1, 1, 3), torch.tensor(Y)


class Affine(nn.Module):
    """``logits = x.flatten(1) + bias``: known logits for every input, a parameter for gradients."""

    def __init__(self, bias: list[float]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(bias))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) + self.bias

    def logits(self, rows: list[list[float]]) -> list[list[float]]:
        b = self.bias.tolist()
        return [add(r, b) for r in rows]


class FixedAttack:
    """Returns ``x + delta[model]`` and records which models were attacked."""

    def __init__(self, deltas: dict[int, list[float]]) -> None:
        self.deltas = deltas  # id(model) -> perturbation of each image's three pixels
        self.attacked: list[int] = []

    def __call__(self, model, x, y, *extra):
        self.attacked.append(id(model))
        d = torch.tensor(self.deltas[id(model)]).reshape(1, 1, 1, 3)
        return x + d

    def adv_rows(self, model) -> list[list[float]]:
        return [add(r, self.deltas[id(model)]) for r in X]


ATTACK = AttackConfig(steps=0)  # no PGD is built; the tests replace .attack anyway


# --- losses.py ------------------------------------------------------------------------


def test_boosted_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([0, 2])
    # example 1: p = (e^1, e^2, e^0) / (e + e^2 + 1), y = 0, max other = p_1
    z = math.e + math.e**2 + 1.0
    first = -math.log(math.e / z) - math.log(1.0 - math.e**2 / z)
    # example 2: y = 2, max other = p_0
    z2 = math.exp(0.5) + math.exp(-1.0) + math.exp(3.0)
    second = -math.log(math.exp(3.0) / z2) - math.log(1.0 - math.exp(0.5) / z2)
    assert losses.boosted_cross_entropy(logits, y).item() == pytest.approx((first + second) / 2, rel=1e-5)
    per = losses.boosted_cross_entropy(logits, y, reduction="none")
    assert per.tolist() == pytest.approx([first, second], rel=1e-5)


def test_kl_divergence_by_hand():
    target = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    inp = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # example 1: q uniform, KL = sum p log(3 p); example 2: q uniform as well
    z1 = math.e + 1.0 + math.exp(-1.0)
    p1 = [math.e / z1, 1.0 / z1, math.exp(-1.0) / z1]
    z2 = 2.0 + math.e**2
    p2 = [1.0 / z2, math.e**2 / z2, 1.0 / z2]
    k1 = sum(p * math.log(3.0 * p) for p in p1)
    k2 = sum(p * math.log(3.0 * p) for p in p2)
    assert losses.kl_divergence(target, inp).item() == pytest.approx((k1 + k2) / 2, rel=1e-5)
    # temperature 2 divides the logits before the softmax
    t = 2.0
    z1t = math.exp(0.5) + 1.0 + math.exp(-0.5)
    k1t = sum(p * math.log(3.0 * p) for p in (math.exp(0.5) / z1t, 1.0 / z1t, math.exp(-0.5) / z1t))
    got = losses.kl_divergence(target[:1], inp[:1], temperature=t)
    assert got.item() == pytest.approx(k1t, rel=1e-5)
    assert kl([1.0, 0.0, -1.0], [0.0, 0.0, 0.0]) == pytest.approx(k1)  # the helper agrees


# --- MAT ------------------------------------------------------------------------------


def make_mat(biases, deltas, alpha=0.6, natural=(), frozen=None, temperature=1.0, loss="lc"):
    models = [Affine(b) for b in biases]
    frozen = frozen or [False] * len(models)
    params = MATParams(alpha=alpha, natural=list(natural), temperature=temperature, loss=loss)
    method = MAT(params, ATTACK, frozen)
    method.attack = FixedAttack({id(m): d for m, d in zip(models, deltas)})
    return method, models


def mat_by_hand(models, attack, alpha, natural=(), frozen=None, t=1.0, label=lc):
    n = len(models)
    frozen = frozen or [False] * n
    clean = [m.logits(X) for m in models]
    total = 0.0
    for i, model in enumerate(models):
        if frozen[i]:
            continue
        own = clean[i] if i in natural else model.logits(attack.adv_rows(model))
        l_c = mean([label(z, y) for z, y in zip(own, Y)])
        k = sum(mean([kl(clean[m][b], own[b], t) * t * t for b in range(3)]) for m in range(n) if m != i)
        total += (1 - alpha) * l_c + alpha / (n - 1) * k
    return total


def test_mat_two_models_by_hand():
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05]],
    )
    x, y = batch()
    out = method.loss(Cohort.of(models, method), x, y)
    # Eq. 4 written out for N = 2
    h1, h2 = models
    a1, a2 = h1.logits(method.attack.adv_rows(h1)), h2.logits(method.attack.adv_rows(h2))
    c1, c2 = h1.logits(X), h2.logits(X)
    at1 = mean([lc(a1[b], Y[b]) for b in range(3)])
    at2 = mean([lc(a2[b], Y[b]) for b in range(3)])
    kd1 = mean([kl(c2[b], a1[b]) for b in range(3)])
    kd2 = mean([kl(c1[b], a2[b]) for b in range(3)])
    expected = 0.4 * (at1 + at2) + 0.6 * (kd1 + kd2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.loss.item() == pytest.approx(mat_by_hand(models, method.attack, 0.6), rel=1e-5)
    assert out.metrics["lc/h1"].item() == pytest.approx(at1, rel=1e-5)
    assert out.metrics["kl/h2"].item() == pytest.approx(kd2, rel=1e-5)
    assert out.metrics["loss/h1"].item() == pytest.approx(0.4 * at1 + 0.6 * kd1, rel=1e-5)
    assert set(out.metrics) == {f"{k}/{r}" for k in ("loss", "lc", "kl", "adv_acc") for r in ("h1", "h2")}


def test_mat_three_models_by_hand():
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1], [0.0, 0.0, 0.6]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05], [0.1, 0.0, -0.1]],
        alpha=0.45,
    )
    x, y = batch()
    out = method.loss(Cohort.of(models, method), x, y)
    expected = mat_by_hand(models, method.attack, 0.45)  # alpha / (N - 1) = 0.225 per peer KL
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert method.roles == ["h1", "h2", "h3"]


def test_mat_with_a_cross_entropy_label_term_by_hand():
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05]],
        alpha=0.3, loss="ce",
    )
    x, y = batch()
    out = method.loss(Cohort.of(models, method), x, y)
    h1, h2 = models
    a1 = h1.logits(method.attack.adv_rows(h1))
    ce1 = mean([ce(a1[b], Y[b]) for b in range(3)])
    kd1 = mean([kl(h2.logits(X)[b], a1[b]) for b in range(3)])
    assert out.metrics["loss/h1"].item() == pytest.approx(0.7 * ce1 + 0.3 * kd1, rel=1e-5)
    assert out.metrics["ce/h1"].item() == pytest.approx(ce1, rel=1e-5)
    assert "lc/h1" not in out.metrics
    assert out.loss.item() == pytest.approx(mat_by_hand(models, method.attack, 0.3, label=ce), rel=1e-5)
    # ... and differs from the paper's L_C on the same numbers
    assert out.loss.item() != pytest.approx(mat_by_hand(models, method.attack, 0.3), rel=1e-3)


@pytest.mark.parametrize("loss", ["lc", "ce"])
def test_mat_training_attack_maximizes_its_label_loss(loss):
    method = MAT(MATParams(loss=loss), AttackConfig(steps=3), [False, False])
    assert method.attack.loss == loss


def test_mat_natural_member_uses_clean_input_and_one_forward_each():
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05]],
        natural=[0],
    )
    x, y = batch()
    out = method.loss(Cohort.of(models, method), x, y)
    assert out.loss.item() == pytest.approx(mat_by_hand(models, method.attack, 0.6, natural=[0]), rel=1e-5)
    assert method.attack.attacked == [id(models[1])]  # no attack for the natural member
    # one clean forward per member; the robust one also runs on its x_adv
    assert [m.calls for m in models] == [1, 2]


def test_mat_temperature_scales_kl_by_t_squared():
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05]],
        temperature=3.0,
    )
    x, y = batch()
    expected = mat_by_hand(models, method.attack, 0.6, t=3.0)
    assert method.loss(Cohort.of(models, method), x, y).loss.item() == pytest.approx(expected, rel=1e-5)


def test_mat_no_gradient_reaches_a_peer_through_its_target():
    # alpha = 1: only the KD terms. d KL(p || softmax(z)) / dz = softmax(z) - p, and z = x + b,
    # so d loss / d b_n = mean_b (p_n(x_adv_n) - p_m(x)): nothing from the term where n is the
    # target of m. A leak through the target would add d KL(p_n(x) || p_m(.)) / d b_n != 0.
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05]],
        alpha=1.0,
    )
    x, y = batch()
    method.loss(Cohort.of(models, method), x, y).loss.backward()
    for n, m in ((0, 1), (1, 0)):
        own = models[n].logits(method.attack.adv_rows(models[n]))
        peer = models[m].logits(X)
        expected = [mean([softmax(own[b])[k] - softmax(peer[b])[k] for b in range(3)]) for k in range(3)]
        assert models[n].bias.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_mat_frozen_member_is_only_a_target():
    method, models = make_mat(
        biases=[[0.3, -0.2, 0.0], [-0.5, 0.4, 0.1]],
        deltas=[[0.05, -0.05, 0.02], [-0.03, 0.04, 0.05]],
        frozen=[True, False],
    )
    x, y = batch()
    out = method.loss(Cohort.of(models, method), x, y)
    # student: (1 - a) L_C + a KL(teacher(x) || student(x_adv)); the teacher has no loss term
    expected = mat_by_hand(models, method.attack, 0.6, frozen=[True, False])
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert not any(k.endswith("/h1") for k in out.metrics)
    assert method.attack.attacked == [id(models[1])]  # no attack crafted for the frozen one
    out.loss.backward()
    assert models[0].bias.grad is None  # its parameters still require grad here: no_grad did it
    assert models[1].bias.grad is not None


def test_mat_validation():
    with pytest.raises(ConfigError, match="alpha"):
        MATParams(alpha=1.2).validate()
    with pytest.raises(ConfigError, match="alpha"):
        MATParams(alpha=-0.1).validate()
    with pytest.raises(ConfigError, match="temperature"):
        MATParams(temperature=0.0).validate()
    with pytest.raises(ConfigError, match="natural"):
        MATParams(natural=[0, 0]).validate()
    with pytest.raises(ConfigError, match="loss must be 'ce' or 'lc', got 'mse'"):
        MATParams(loss="mse").validate()
    with pytest.raises(ConfigError, match="index 2"):
        MAT(MATParams(natural=[2]), ATTACK, [False, False])
    with pytest.raises(ConfigError, match="not frozen"):
        MAT(MATParams(), ATTACK, [True, True])


def test_mat_rejects_a_single_model():
    cfg = RunConfig(models=[ModelConfig()], method=MethodConfig("mat", {}), attack=ATTACK)
    with pytest.raises(ConfigError, match=r"N >= 2.*lists 1"):
        build_method(cfg)


# --- TRADES, MART ---------------------------------------------------------------------


def test_trades_by_hand():
    model = Affine([0.3, -0.2, 0.0])
    method = TRADES(TRADESParams(), ATTACK, [False])
    method.attack = FixedAttack({id(model): [0.05, -0.05, 0.02]})
    x, y = batch()
    out = method.loss(Cohort.of([model], method), x, y)
    nat, adv = model.logits(X), model.logits(method.attack.adv_rows(model))
    natural = mean([ce(nat[b], Y[b]) for b in range(3)])
    robust = mean([kl(nat[b], adv[b]) for b in range(3)])
    expected = natural + 6.0 * robust
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)

    # The KL's gradient flows through f(x) too: with logits x + b, the clean path contributes
    # d/db of sum p log p - p log q through p. Compare with a gradient through both paths.
    out.loss.backward()
    b = model.bias.detach().clone().requires_grad_(True)
    xs = torch.tensor(X)
    zn, za = xs + b, xs + torch.tensor([0.05, -0.05, 0.02]) + b
    log_p = zn - zn.exp().sum(1, keepdim=True).log()
    log_q = za - za.exp().sum(1, keepdim=True).log()
    ref = -log_p.gather(1, y[:, None]).mean() + 6.0 * (log_p.exp() * (log_p - log_q)).sum(1).mean()
    ref.backward()
    assert model.bias.grad.tolist() == pytest.approx(b.grad.tolist(), abs=1e-6)


def test_trades_needs_a_random_start():
    with pytest.raises(ConfigError, match="random_start"):
        TRADES(TRADESParams(), AttackConfig(random_start=False), [False])
    with pytest.raises(ConfigError, match="beta"):
        TRADESParams(beta=-1.0).validate()


def test_mart_by_hand():
    model = Affine([0.3, -0.2, 0.0])
    method = MART(MARTParams(), ATTACK, [False])
    method.attack = FixedAttack({id(model): [0.3, -0.2, 0.25]})
    x, y = batch()
    out = method.loss(Cohort.of([model], method), x, y)
    nat, adv = model.logits(X), model.logits(method.attack.adv_rows(model))
    bce = mean([lc(adv[b], Y[b]) for b in range(3)])
    robust = mean([kl(nat[b], adv[b]) * (1.0 - softmax(nat[b])[Y[b]]) for b in range(3)])
    assert out.loss.item() == pytest.approx(bce + 5.0 * robust, rel=1e-5)
    assert out.metrics["kl/model"].item() == pytest.approx(robust, rel=1e-5)
    with pytest.raises(ConfigError, match="beta"):
        MARTParams(beta=-0.5).validate()


# --- ARD ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_ard_by_hand(alpha):
    teacher, student = Affine([2.0, -1.0, 0.5]), Affine([-0.5, 0.4, 0.1])
    method = ARD(ARDParams(alpha=alpha), ATTACK, [True, False])
    method.attack = FixedAttack({id(student): [0.05, -0.05, 0.02]})
    x, y = batch()
    out = method.loss(Cohort.of([teacher, student], method), x, y)
    t = 30.0
    soft, adv = teacher.logits(X), student.logits(method.attack.adv_rows(student))
    expected = alpha * t * t * mean([kl(soft[b], adv[b], t) for b in range(3)])
    clean = student.logits(X)
    expected += (1 - alpha) * mean([ce(clean[b], Y[b]) for b in range(3)])
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    assert method.attack.attacked == [id(student)]
    assert student.calls == (1 if alpha == 1.0 else 2)  # clean CE forward only when used
    out.loss.backward()
    assert teacher.bias.grad is None
    assert method.roles == ["teacher", "student"]


def test_ard_requires_a_frozen_teacher():
    with pytest.raises(ConfigError, match="models.0.frozen"):
        ARD(ARDParams(), ATTACK, [False, False])
    with pytest.raises(ConfigError, match="two models"):
        ARD(ARDParams(), ATTACK, [True, False, False])
    with pytest.raises(ConfigError, match="student"):
        ARD(ARDParams(), ATTACK, [True, True])
    with pytest.raises(ConfigError, match="alpha"):
        ARDParams(alpha=2.0).validate()
    with pytest.raises(ConfigError, match="temperature"):
        ARDParams(temperature=-1.0).validate()


# --- ACT ------------------------------------------------------------------------------


def make_act(**params):
    natural, robust = Affine([0.3, -0.2, 0.0]), Affine([-0.5, 0.4, 0.1])
    method = ACT(ACTParams(**params), ATTACK, [False, False])
    attack = FixedAttack({id(robust): [0.05, -0.05, 0.02]})
    seen = []

    def fake(model, x, y, natural_logits):
        seen.append(natural_logits)
        return attack(model, x, y)

    method.attack = fake
    return method, natural, robust, attack, seen


def test_act_by_hand():
    method, natural, robust, attack, seen = make_act()
    x, y = batch()
    out = method.loss(Cohort.of([natural, robust], method), x, y)
    a, t = 0.9, 4.0
    f, g = natural.logits(X), robust.logits(attack.adv_rows(robust))
    ce_f, ce_g = mean([ce(f[b], Y[b]) for b in range(3)]), mean([ce(g[b], Y[b]) for b in range(3)])
    kl_f = mean([kl(g[b], f[b], t) for b in range(3)])  # natural learns from G(x_adv)
    kl_g = mean([kl(f[b], g[b], t) for b in range(3)])  # robust learns from F(x)
    l_f = (1 - a) * ce_f + a * t * t * kl_f
    l_g = (1 - a) * ce_g + a * t * t * kl_g
    assert out.loss.item() == pytest.approx(l_f + l_g, rel=1e-5)
    assert out.metrics["loss/natural"].item() == pytest.approx(l_f, rel=1e-5)
    assert out.metrics["loss/robust"].item() == pytest.approx(l_g, rel=1e-5)
    # the attack got the natural model's clean logits, detached
    assert not seen[0].requires_grad
    assert seen[0].flatten().tolist() == pytest.approx(sum(f, []))
    assert attack.attacked == [id(robust)]

    # Each model's gradient comes from its own term only: with z = x + b,
    # dL_F/db_F = (1-a) mean(p_F - onehot) + a T^2 (1/T) mean(softmax(f/T) - softmax(g/T)).
    out.loss.backward()
    for model, own, other in ((natural, f, g), (robust, g, f)):
        expected = [
            mean([(1 - a) * (softmax(own[b])[k] - (k == Y[b]))
                  + a * t * (softmax(own[b], t)[k] - softmax(other[b], t)[k]) for b in range(3)])
            for k in range(3)
        ]
        assert model.bias.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_act_attack_objective_by_hand():
    adv = torch.tensor([[0.2, 0.1, -0.3], [1.0, 0.0, 0.5]])
    nat = torch.tensor([[0.0, 1.0, 0.0], [0.3, 0.3, 0.3]])
    y = torch.tensor([0, 2])
    got = act_attack_objective(adv, y, None, natural_logits=nat, alpha=0.9)
    rows = [[0.2, 0.1, -0.3], [1.0, 0.0, 0.5]]
    nats = [[0.0, 1.0, 0.0], [0.3, 0.3, 0.3]]
    expected = [0.1 * ce(rows[b], [0, 2][b]) + 0.9 * kl(nats[b], rows[b]) for b in range(2)]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_act_validation():
    with pytest.raises(ConfigError, match="alpha_natural"):
        ACTParams(alpha_natural=1.1).validate()
    with pytest.raises(ConfigError, match="alpha_robust"):
        ACTParams(alpha_robust=-0.2).validate()
    with pytest.raises(ConfigError, match="attack_loss"):
        ACTParams(attack_loss="lc").validate()
    with pytest.raises(ConfigError, match="two models"):
        ACT(ACTParams(), ATTACK, [False])


# --- through the registry, with the real PGD -------------------------------------------


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )


CASES = {
    "mat": ([False, False], {"alpha": 0.6}),
    "mat3": ([False, True, False], {"natural": [0]}),
    "mat-ce": ([False, False], {"alpha": 0.3, "loss": "ce"}),
    "trades": ([False], {}),
    "mart": ([False], {}),
    "ard": ([True, False], {}),
    "act": ([False, False], {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_registered_method_runs_with_real_pgd(case):
    pytest.importorskip("mutualat.attacks")
    frozen, params = CASES[case]
    name = "mat" if case.startswith("mat") else case
    cfg = RunConfig(
        models=[ModelConfig(frozen=f) for f in frozen],
        method=MethodConfig(name, params),
        attack=AttackConfig(eps=0.1, steps=2),
    )
    method = build_method(cfg)
    models = [tiny_net(i) for i in range(len(frozen))]
    for m, f in zip(models, frozen):  # as the trainer does
        m.train(not f).requires_grad_(not f)
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    out = method.loss(Cohort.of(models, method), x, y)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    for m, f in zip(models, frozen):
        assert m.training == (not f)  # the attacks restored every mode
        grads = [p.grad for p in m.parameters()]
        assert all(g is None for g in grads) if f else all(g is not None for g in grads)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_all_methods_registered():
    assert {"at", "mat", "trades", "mart", "ard", "act", "mat-mp", "at-avg", "at-max", "at-msd"} \
        <= set(METHODS.names())


# --- the four KD scenarios --------------------------------------------------------------


def test_scenarios():
    base = RunConfig(models=[ModelConfig(name="tinycnn")], method=MethodConfig("mat", {"alpha": 0.45}))
    before = base.models[0]
    online = scenario_configs("rob-rob-online", base)
    assert len(online) == 1 and online[0].method.name == "mat"
    assert online[0].method.params == {"alpha": 0.45, "natural": []}
    assert [m.frozen for m in online[0].models] == [False, False]
    assert scenario_configs("nat-rob-online", base)[0].method.params["natural"] == [0]

    for name, steps in (("rob-rob-offline", base.attack.steps), ("nat-rob-offline", 0)):
        stage1, stage2 = scenario_configs(name, base, "runs/h1/models/model.safetensors")
        assert stage1.method.name == "at" and stage1.method.params == {"loss": "lc"}
        assert len(stage1.models) == 1 and stage1.attack.steps == steps
        assert stage2.method.name == "mat" and stage2.attack.steps == base.attack.steps
        teacher, student = stage2.models
        assert teacher.frozen and teacher.init == "runs/h1/models/model.safetensors"
        assert not student.frozen and student.init is None
        assert stage2.method.params["natural"] == ([0] if name.startswith("nat") else [])
        build_method(stage2)  # a valid cohort: roles fit, a trainable member exists
    assert base.models[0] is before and not before.frozen  # base untouched
    # A MAT on cross-entropy: its offline teacher is trained on cross-entropy as well.
    on_ce = RunConfig(models=[ModelConfig(name="tinycnn")], method=MethodConfig("mat", {"loss": "ce"}))
    stage1, stage2 = scenario_configs("rob-rob-offline", on_ce, "h1.safetensors")
    assert stage1.method.params == {"loss": "ce"} and stage2.method.params["loss"] == "ce"

    with pytest.raises(ConfigError, match="stage1_model_path"):
        scenario_configs("rob-rob-offline", base)
    with pytest.raises(ConfigError, match="unknown MAT scenario"):
        scenario_configs("rob-nat", base)
    assert set(SCENARIOS) == {"rob-rob-online", "rob-rob-offline", "nat-rob-online", "nat-rob-offline"}
    assert stage1_model_file("runs/h1").as_posix() == "runs/h1/models/model.safetensors"

"""Multiple-perturbation methods (MAT-MP, AT-AVG/MAX/MSD) against values computed by hand.

As in ``test_methods.py``, the "models" are affine maps ``logits = x + bias`` of a
(B, 1, 1, 3) input and the attacks are replaced by fixed perturbations (one per threat and
model, different per example), so every logit is known in advance. The expected numbers are
computed in plain Python with ``math.exp`` / ``math.log`` on lists, never with the library.
The MSD and smoke tests use the real attacks on a tiny conv net.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mutualat.config import AttackConfig, MethodConfig, ModelConfig, RunConfig, dump_config, load_config
from mutualat.errors import ConfigError
from mutualat.methods import METHODS, build_method, resolve_method_params
from mutualat.methods.at_multi import ATAvg, ATMax, ATMSD, MSDATParams, MultiATParams
from mutualat.methods.mat_mp import MATMP, MATMPParams
from mutualat.attacks.threat import Threat
from mutualat.methods.multi import msd_attack
from mutualat.train.cohort import Cohort

REPO = Path(__file__).resolve().parents[1]

# --- arithmetic by hand ---------------------------------------------------------------


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    s = sum(e)
    return [v / s for v in e]


def ce(z: list[float], y: int) -> float:
    return -math.log(softmax(z)[y])


def lc(z: list[float], y: int) -> float:
    """MART's boosted CE: -log p_y - log(1 - max_{k != y} p_k)."""
    p = softmax(z)
    return -math.log(p[y]) - math.log(1.0 - max(p[k] for k in range(len(p)) if k != y))


def kl(target: list[float], inp: list[float]) -> float:
    """KL(softmax(target) || softmax(inp)) summed over classes."""
    p, q = softmax(target), softmax(inp)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def add(a: list[float], b: list[float]) -> list[float]:
    return [u + v for u, v in zip(a, b)]


# --- fixtures: affine "models", fixed per-example perturbations ------------------------

X = [[0.2, 0.5, 0.1], [0.9, 0.0, 0.3], [0.4, 0.4, 0.8]]  # three images of three "pixels"
Y = [1, 0, 2]
B = range(3)
THREATS = [Threat("linf", 0.1, 2), Threat("l2", 1.0, 2), Threat("l1", 10.0, 2)]
ATTACK = AttackConfig(eps=0.1, steps=2)
BIASES = [[0.1, 0.0, -0.1], [0.3, -0.2, 0.0], [-0.5, 0.4, 0.1], [0.0, 0.2, 0.6]]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(X).reshape(3, 1, 1, 3), torch.tensor(Y)


class Affine(nn.Module):
    def __init__(self, bias: list[float]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(bias))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) + self.bias

    def logits(self, rows: list[list[float]]) -> list[list[float]]:
        return [add(r, self.bias.tolist()) for r in rows]


class FixedAttack:
    """``x + D[model]`` with ``D`` a per-example (3 x 3) perturbation; records its targets."""

    def __init__(self, deltas: dict[int, list[list[float]]]) -> None:
        self.deltas = deltas
        self.attacked: list[int] = []

    def __call__(self, model, x, y):
        self.attacked.append(id(model))
        return x + torch.tensor(self.deltas[id(model)]).reshape(3, 1, 1, 3)

    def rows(self, model) -> list[list[float]]:
        return [add(X[b], self.deltas[id(model)][b]) for b in B]


def delta(seed: int) -> list[list[float]]:
    """A small fixed perturbation per example (deterministic, different per seed)."""
    g = torch.Generator().manual_seed(seed)
    return (0.3 * (2 * torch.rand(3, 3, generator=g) - 1)).tolist()


# The generalist's per-type perturbations: type m pushes example m hard away from its label,
# so per example the worst type for h0 is a different one (example b -> type b).
def worst_type_delta(m: int) -> list[list[float]]:
    rows = delta(100 + m)
    rows[m] = [v - 2.0 if k == Y[m] else v for k, v in enumerate(rows[m])]
    return rows


def make_mat_mp(generalist="avg", alpha=0.6, frozen=None, **params):
    models = [Affine(b) for b in BIASES]
    frozen = frozen or [False] * 4
    method = MATMP(MATMPParams(generalist=generalist, alpha=alpha, threats=list(THREATS), **params),
                   ATTACK, frozen)
    g = models[0]
    # attacks[m]: specialist m+1's own perturbation and the generalist's type-m one.
    method.attacks = [
        FixedAttack({id(g): worst_type_delta(m), id(models[m + 1]): delta(m)}) for m in range(3)
    ]
    method.msd = FixedAttack({id(g): delta(50)})
    return method, models


def specialist_by_hand(models, method, m: int, alpha: float, teachers=None, label=lc) -> float:
    """Eq. 6: (1 - a) L_C(p_m(x_adv_m), y) + a/M sum_{n != m, 1 <= n <= M} KL(p_n(x) || p_m(x_adv_m))."""
    adv = models[m].logits(method.attacks[m - 1].rows(models[m]))
    teachers = teachers if teachers is not None else [n for n in (1, 2, 3) if n != m]
    l_c = mean([label(adv[b], Y[b]) for b in B])
    k = sum(mean([kl(models[n].logits(X)[b], adv[b]) for b in B]) for n in teachers)
    return (1 - alpha) * l_c + alpha / 3 * k


def generalist_by_hand(models, method, strategy: str, alpha: float,
                       label=lc) -> tuple[float, list[int]]:
    g = models[0]
    clean = {n: models[n].logits(X) for n in (1, 2, 3)}
    if strategy == "msd":  # Eq. 9
        z = g.logits(method.msd.rows(g))
        return mean([(1 - alpha) * label(z[b], Y[b]) + alpha / 3 * sum(kl(clean[n][b], z[b]) for n in (1, 2, 3))
                     for b in B]), []
    adv = {n: g.logits(method.attacks[n - 1].rows(g)) for n in (1, 2, 3)}
    if strategy == "avg":  # Eq. 7
        return mean([(1 - alpha) * mean([label(adv[n][b], Y[b]) for b in B])
                     + alpha * mean([kl(clean[n][b], adv[n][b]) for b in B]) for n in (1, 2, 3)]), []
    # "max", Eq. 8: per example the type with the highest label loss
    picks = [max((1, 2, 3), key=lambda n: label(adv[n][b], Y[b])) for b in B]
    return mean([(1 - alpha) * label(adv[k][b], Y[b]) + alpha * kl(clean[k][b], adv[k][b])
                 for b, k in zip(B, picks)]), picks


# --- MAT-MP by hand ---------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["lc", "ce"])
@pytest.mark.parametrize("strategy", ["avg", "max", "msd"])
def test_mat_mp_by_hand(strategy, loss):
    """Eq. 6-10; with ``loss: ce`` (beyond the paper) the cross-entropy takes L_C's place."""
    label = {"lc": lc, "ce": ce}[loss]
    method, models = make_mat_mp(strategy, alpha=0.6, loss=loss)
    out = method.loss(Cohort.of(models, method), *batch())
    gen, picks = generalist_by_hand(models, method, strategy, 0.6, label)
    specs = [specialist_by_hand(models, method, m, 0.6, label=label) for m in (1, 2, 3)]
    assert out.metrics["loss/generalist"].item() == pytest.approx(gen, rel=1e-5)
    for m, role in zip((1, 2, 3), ("linf", "l2", "l1")):
        assert out.metrics[f"loss/{role}"].item() == pytest.approx(specs[m - 1], rel=1e-5)
    assert out.loss.item() == pytest.approx(gen + sum(specs), rel=1e-5)  # Eq. 10
    assert {k.split("/")[0] for k in out.metrics} >= {loss, "kl", "loss"}
    assert ({"lc", "ce"} - {loss}).isdisjoint(k.split("/")[0] for k in out.metrics)
    if strategy == "max":
        assert picks == [1, 2, 3]  # the fixture makes every example pick a different type
        for norm in ("linf", "l2", "l1"):
            assert out.metrics[f"max_share/{norm}"].item() == pytest.approx(1 / 3)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_mat_mp_max_picks_the_per_example_worst_type():
    method, models = make_mat_mp("max", alpha=0.0)
    g = models[0]
    adv = [g.logits(a.rows(g)) for a in method.attacks]
    # Written out: example b's L_C under each type; its own type b is by far the worst.
    table = [[lc(adv[m][b], Y[b]) for m in range(3)] for b in B]
    assert [row.index(max(row)) for row in table] == [0, 1, 2]
    out = method.loss(Cohort.of(models, method), *batch())
    assert out.metrics["lc/generalist"].item() == pytest.approx(mean([table[b][b] for b in B]), rel=1e-5)
    # neither the batch-worst type nor the average: per-example selection
    for m in range(3):
        assert out.metrics["lc/generalist"].item() > mean([table[b][m] for b in B]) + 0.1


@pytest.mark.parametrize("loss, worst", [("lc", "linf"), ("ce", "l2")])
def test_mat_mp_max_picks_by_its_own_label_loss(loss, worst):
    """Per example, the generalist's logits under type linf put p_y = 0.30 with one rival at
    0.69, under l2 p_y = 0.28 with two rivals at 0.36, under l1 p_y = 0.9. The cross-entropy
    ranks l2 worst (-log 0.28 > -log 0.30); L_C ranks linf worst (its margin term,
    -log(1 - 0.69) against -log(1 - 0.36), outweighs it). MAX must follow the loss it trains on."""
    method, models = make_mat_mp("max", alpha=0.0, loss=loss)
    g = models[0]

    def probs(y: int, p_y: float, rivals: list[float]) -> list[float]:
        out, rest = [0.0] * 3, iter(rivals)
        for k in range(3):
            out[k] = p_y if k == Y[y] else next(rest)
        return out

    wanted = {"linf": lambda b: probs(b, 0.30, [0.69, 0.01]),
              "l2": lambda b: probs(b, 0.28, [0.36, 0.36]),
              "l1": lambda b: probs(b, 0.90, [0.05, 0.05])}
    for attack, norm in zip(method.attacks, ("linf", "l2", "l1")):
        # logits = x + delta + bias = log p: the delta that gives these probabilities
        attack.deltas[id(g)] = [[math.log(wanted[norm](b)[k]) - X[b][k] - BIASES[0][k] for k in range(3)]
                                for b in B]
    label = {"lc": lc, "ce": ce}[loss]
    table = {norm: [label([math.log(v) for v in wanted[norm](b)], Y[b]) for b in B] for norm in wanted}
    assert all(max(table, key=lambda n: table[n][b]) == worst for b in B)  # the fixture's premise
    out = method.loss(Cohort.of(models, method), *batch())
    assert out.metrics[f"max_share/{worst}"].item() == 1.0
    assert out.metrics[f"{loss}/generalist"].item() == pytest.approx(mean(table[worst]), rel=1e-5)


def test_mat_mp_specialist_written_out():
    # Specialist l2 (m = 2), example by example: its teachers are linf (n = 1) and l1 (n = 3).
    method, models = make_mat_mp("avg", alpha=0.25, frozen=[True, True, False, True])
    out = method.loss(Cohort.of(models, method), *batch())
    d = delta(1)  # the l2 specialist's own perturbation
    terms = []
    for b in B:
        z = [X[b][k] + d[b][k] + BIASES[2][k] for k in range(3)]
        e = [math.exp(v) for v in z]
        p = [v / sum(e) for v in e]
        l_c = -math.log(p[Y[b]]) - math.log(1 - max(p[k] for k in range(3) if k != Y[b]))
        kls = 0.0
        for n in (1, 3):
            t = [math.exp(X[b][k] + BIASES[n][k]) for k in range(3)]
            q = [v / sum(t) for v in t]
            kls += sum(q[k] * math.log(q[k] / p[k]) for k in range(3))
        terms.append(0.75 * l_c + 0.25 / 3 * kls)
    assert out.loss.item() == pytest.approx(sum(terms) / 3, rel=1e-5)
    assert set(k.split("/")[1] for k in out.metrics) == {"l2"}  # frozen members: no terms
    # only the trainable member is attacked; its two teachers give one clean forward each
    assert [a.attacked for a in method.attacks] == [[], [id(models[2])], []]
    assert [m.calls for m in models] == [0, 1, 1, 1]


def test_mat_mp_generalist_teaches_option():
    method, models = make_mat_mp("avg", alpha=0.6, generalist_teaches=True)
    out = method.loss(Cohort.of(models, method), *batch())
    for m, role in zip((1, 2, 3), ("linf", "l2", "l1")):
        teachers = [0] + [n for n in (1, 2, 3) if n != m]  # 0 <= n <= M, n != m
        expected = specialist_by_hand(models, method, m, 0.6, teachers)
        assert out.metrics[f"loss/{role}"].item() == pytest.approx(expected, rel=1e-5)


def test_mat_mp_one_clean_forward_per_member_and_none_at_alpha_zero():
    method, models = make_mat_mp("avg", alpha=0.6)
    method.loss(Cohort.of(models, method), *batch())
    # generalist: 3 adversarial forwards (it teaches nobody by default); specialists: their
    # clean target + their own adversarial forward
    assert [m.calls for m in models] == [3, 2, 2, 2]
    method, models = make_mat_mp("msd", alpha=0.0)
    method.loss(Cohort.of(models, method), *batch())
    assert [m.calls for m in models] == [1, 1, 1, 1]


@pytest.mark.parametrize("strategy", ["avg", "max", "msd"])
def test_mat_mp_no_gradient_reaches_a_peer_through_its_target(strategy):
    # alpha = 1: only KL terms. d KL(p || softmax(z)) / dz = softmax(z) - p and z = x + b, so
    # each member's bias gradient is the mean of (its prediction - its teachers' targets) over
    # its own terms; a leak through a target would add d KL(p_n(x) || .) / d b_n != 0.
    method, models = make_mat_mp(strategy, alpha=1.0)
    method.loss(Cohort.of(models, method), *batch()).loss.backward()
    clean = {n: softmax_rows(models[n].logits(X)) for n in range(4)}
    g = models[0]
    if strategy == "msd":
        q = softmax_rows(g.logits(method.msd.rows(g)))
        terms = [(q, clean[n], 1 / 3) for n in (1, 2, 3)]
    elif strategy == "avg":
        terms = [(softmax_rows(g.logits(method.attacks[n - 1].rows(g))), clean[n], 1 / 3) for n in (1, 2, 3)]
    else:
        _, picks = generalist_by_hand(models, method, "max", 0.0)
        qs = {n: softmax_rows(g.logits(method.attacks[n - 1].rows(g))) for n in (1, 2, 3)}
        q = [qs[k][b] for b, k in zip(B, picks)]
        terms = [(q, [clean[k][b] for b, k in zip(B, picks)], 1.0)]
    assert g.bias.grad.tolist() == pytest.approx(grad_by_hand(terms), abs=1e-6)
    for m in (1, 2, 3):
        q = softmax_rows(models[m].logits(method.attacks[m - 1].rows(models[m])))
        terms = [(q, clean[n], 1 / 3) for n in (1, 2, 3) if n != m]
        assert models[m].bias.grad.tolist() == pytest.approx(grad_by_hand(terms), abs=1e-6)


def softmax_rows(rows: list[list[float]]) -> list[list[float]]:
    return [softmax(r) for r in rows]


def grad_by_hand(terms) -> list[float]:
    """sum over (q, p, weight) of weight * mean_b (q_b - p_b): the bias gradient of KL terms."""
    return [sum(w * mean([q[b][k] - p[b][k] for b in B]) for q, p, w in terms) for k in range(3)]


def test_mat_mp_frozen_specialists_only_teach():
    method, models = make_mat_mp("avg", alpha=0.6, frozen=[False, True, True, True])
    out = method.loss(Cohort.of(models, method), *batch())
    gen, _ = generalist_by_hand(models, method, "avg", 0.6)
    assert out.loss.item() == pytest.approx(gen, rel=1e-5)
    assert all(a.attacked == [id(models[0])] for a in method.attacks)
    out.loss.backward()
    assert models[0].bias.grad is not None
    assert all(m.bias.grad is None for m in models[1:])


def test_mat_mp_roles_describe_and_model_count():
    cfg = RunConfig(models=[ModelConfig()] * 4, attack=ATTACK,
                    method=MethodConfig("mat-mp", {"generalist": "max"}))
    method = build_method(cfg)
    assert method.roles == ["generalist", "linf", "l2", "l1"]
    described = method.describe()
    assert described["generalist_role"] == "generalist" and described["name"] == "mat-mp"
    assert [t["eps"] for t in described["threats"]] == [0.03, 0.5, 12.0]  # the paper's default
    assert [a.steps for a in method.attacks] == [40, 50, 50]
    assert all(a.loss == "lc" for a in method.attacks)  # training attacks maximize L_C
    assert set(method.validation_attacks(20)) == {"linf", "l2", "l1"}
    cfg.models = [ModelConfig()] * 3
    with pytest.raises(ConfigError, match=r"3 threats trains 4 models.*lists 3"):
        build_method(cfg)


def test_mat_mp_msd_attack_comes_from_the_threats():
    method, _ = make_mat_mp("msd")
    assert method.params.msd_steps is None
    msd = MATMP(MATMPParams(generalist="msd", threats=list(THREATS), msd_steps=7), ATTACK, [False] * 4).msd
    assert msd.steps == 7 and msd.loss == "lc"
    ce_method = MATMP(MATMPParams(generalist="msd", threats=list(THREATS), loss="ce"), ATTACK, [False] * 4)
    assert ce_method.msd.loss == "ce" and all(a.loss == "ce" for a in ce_method.attacks)
    assert msd.eps == {"linf": 0.1, "l2": 1.0, "l1": 10.0}
    assert msd.step_size == pytest.approx({"linf": 2.5 * 0.1 / 2, "l2": 2.5 / 2, "l1": 2.5 * 10 / 2 / 20})


def mp_cfg(params: dict, name: str = "mat-mp", n: int = 4) -> RunConfig:
    return RunConfig(models=[ModelConfig()] * n, attack=ATTACK, method=MethodConfig(name, params))


def with_l2(first: dict) -> dict:
    """Params whose threat list is ``first`` followed by a valid l2 threat."""
    return {"threats": [first, {"norm": "l2", "eps": 1.0}]}


@pytest.mark.parametrize("params, message", [
    (with_l2({"norm": "l3", "eps": 1.0}), "unknown norm 'l3'"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ({"threats": []}, "at least 2"),
    ({"threats": [{"norm": "linf", "eps": 0.1}]}, "at least 2"),
    (with_l2({"norm": "linf"}), r"threats\.0\.eps is required"),
    (with_l2({"eps": 0.1}), r"threats\.0\.norm is required"),
    (with_l2({"norm": "linf", "eps": 0.0}), "eps must be a finite"),
    (with_l2({"norm": "linf", "eps": float("inf")}), "eps must be a finite"),
    (with_l2({"norm": "linf", "eps": 0.1, "steps": 0}), "steps must be >= 1"),
    (with_l2({"norm": "linf", "eps": 0.1, "step_size": -1.0}), "step_size must be"),
    (with_l2({"norm": "l2", "eps": 0.1}), "norm twice"),
    (with_l2({"norm": "linf", "eps": 0.1, "colour": 1}), "unknown config key"),
    ({"generalist": "min"}, "generalist must be one of avg, max, msd"),
    ({"temperature": 0.0}, "temperature"),
    ({"msd_steps": 0}, "msd_steps"),
    ({"loss": "mse"}, "loss must be 'ce' or 'lc', got 'mse'"),
])
def test_mat_mp_validation(params, message):
    with pytest.raises(ConfigError, match=message):
        build_method(mp_cfg(params))


def test_params_survive_the_saved_config(tmp_path):
    # The trainer saves the resolved config (threats as mappings); a resumed run reads it back.
    cfg = resolve_method_params(mp_cfg({"generalist": "msd", "threats": SMALL}))
    assert cfg.method.params["threats"][1] == {"norm": "l2", "eps": 0.5, "steps": 2,
                                               "step_size": None, "random_start": True}
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    again = load_config(tmp_path / "config.yaml")
    assert build_method(again).params == build_method(cfg).params


def test_at_multi_validation():
    with pytest.raises(ConfigError, match="at least 1"):
        build_method(mp_cfg({"threats": []}, "at-avg", 1))
    with pytest.raises(ConfigError, match="unknown norm"):
        build_method(mp_cfg({"threats": [{"norm": "l0", "eps": 1.0}]}, "at-max", 1))
    with pytest.raises(ConfigError, match="loss must be"):
        build_method(mp_cfg({"loss": "mse"}, "at-msd", 1))
    with pytest.raises(ConfigError, match="not frozen"):
        MATMP(MATMPParams(), ATTACK, [True] * 4)


# --- AT-AVG, AT-MAX, AT-MSD by hand -----------------------------------------------------


def make_at(cls, params_cls=MultiATParams, loss="ce"):
    model = Affine(BIASES[0])
    method = cls(params_cls(threats=list(THREATS), loss=loss), ATTACK, [False])
    method.attacks = [FixedAttack({id(model): worst_type_delta(m)}) for m in range(3)]
    method.msd = FixedAttack({id(model): delta(50)})
    return method, model


@pytest.mark.parametrize("loss", ["ce", "lc"])
def test_at_avg_max_msd_by_hand(loss):
    crit = ce if loss == "ce" else lc
    method, model = make_at(ATAvg, loss=loss)
    adv = [model.logits(a.rows(model)) for a in method.attacks]
    table = [[crit(adv[m][b], Y[b]) for m in range(3)] for b in B]  # (example, type)
    out = method.loss(Cohort.of([model], method), *batch())
    expected = mean([mean([table[b][m] for b in B]) for m in range(3)])  # mean over types
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    real = ATAvg(MultiATParams(threats=list(THREATS), loss=loss), ATTACK, [False])
    assert all(a.loss == loss for a in real.attacks)  # the attacks maximize the training loss

    method, model = make_at(ATMax, loss=loss)
    out = method.loss(Cohort.of([model], method), *batch())
    assert [row.index(max(row)) for row in table] == [0, 1, 2]
    assert out.loss.item() == pytest.approx(mean([max(row) for row in table]), rel=1e-5)
    assert out.metrics["max_share/model/l2"].item() == pytest.approx(1 / 3)

    method, model = make_at(ATMSD, MSDATParams, loss=loss)
    out = method.loss(Cohort.of([model], method), *batch())
    z = model.logits(method.msd.rows(model))
    assert out.loss.item() == pytest.approx(mean([crit(z[b], Y[b]) for b in B]), rel=1e-5)


def test_at_multi_defaults_and_registration():
    assert {"mat-mp", "at-avg", "at-max", "at-msd"} <= set(METHODS.names())
    method = build_method(mp_cfg({}, "at-msd", 1))
    assert method.params.loss == "ce" and method.msd.loss == "ce" and method.msd.steps == 50
    assert method.roles == ["model"]


# --- the real MSD on a tiny conv net ---------------------------------------------------


def tiny_net(seed: int, size: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * size * size, 3))


def test_msd_output_in_union_of_balls_and_beats_its_best_single_step():
    from mutualat import losses
    from mutualat.attacks import make_threat
    from mutualat.attacks.objectives import input_gradient, resolve_objective

    threats = [Threat("linf", 0.05, 6, 0.02), Threat("l2", 0.4, 6, 0.15),
               Threat("l1", 2.0, 6, 0.1)]
    msd = msd_attack(threats, None, "lc", "eval")
    assert msd.steps == 6
    model = tiny_net(0, 6).eval()
    torch.manual_seed(1)
    x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 3, (16,))
    balls = [make_threat(t.norm, t.eps) for t in threats]

    # The best single step from x, per example, drawing the l1 step's k as MSD's first
    # iteration does (same seed, same order of draws).
    torch.manual_seed(7)
    grad, _, _ = input_gradient(model, resolve_objective("lc"), x, y, torch.zeros_like(x), None)
    single = []
    for t, ball in zip(threats, balls):
        d = ball.project(x, ball.ascent_step(grad, t.step_size, x_adv=x))
        with torch.no_grad():
            single.append(losses.boosted_cross_entropy(model(x + d), y, "none"))
    best_single = torch.stack(single, 1).max(dim=1).values
    torch.manual_seed(7)
    x_adv = msd(model, x, y)

    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    inside = torch.stack([ball.contains(x, x_adv, tol=1e-5) for ball in balls], 1)
    assert inside.any(dim=1).all()  # every example lies in at least one ball
    assert not inside.all(dim=1).all()  # and the union is used: some leave the smallest balls
    with torch.no_grad():
        got = losses.boosted_cross_entropy(model(x_adv), y, "none")
        clean = losses.boosted_cross_entropy(model(x), y, "none")
    assert (got >= best_single - 1e-5).all()
    assert (got > clean).any()


# --- every multi-perturbation method with the real attacks -----------------------------

SMALL = [{"norm": "linf", "eps": 0.1, "steps": 2}, {"norm": "l2", "eps": 0.5, "steps": 2},
         {"norm": "l1", "eps": 2.0, "steps": 2}]
CASES = {
    "mat-mp-avg": ("mat-mp", [False] * 4, {"generalist": "avg"}),
    "mat-mp-max": ("mat-mp", [False] * 4, {"generalist": "max"}),
    "mat-mp-msd": ("mat-mp", [False, True, False, False], {"generalist": "msd"}),
    "mat-mp-msd-ce": ("mat-mp", [False] * 4, {"generalist": "msd", "loss": "ce"}),
    "at-avg": ("at-avg", [False], {}),
    "at-max": ("at-max", [False], {"loss": "lc"}),
    "at-msd": ("at-msd", [False], {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mp_method_runs_with_real_attacks(case):
    name, frozen, params = CASES[case]
    cfg = RunConfig(models=[ModelConfig(frozen=f) for f in frozen],
                    method=MethodConfig(name, {**params, "threats": SMALL}), attack=ATTACK)
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


# --- the generated experiment files ----------------------------------------------------

MP_CONFIGS = [p for p in sorted((REPO / "configs").glob("*/*.yaml"))
              if "scripts/make_mp_configs.py" in p.read_text()]


@pytest.mark.parametrize("path", MP_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_generated_mp_configs_load_and_build(path):
    cfg = load_config(path)
    method = build_method(cfg)
    if cfg.method.name == "mat-mp":
        assert method.roles[0] == "generalist" and len(cfg.models) == 1 + len(method.norms)
    if hasattr(method, "norms"):
        assert cfg.attack.norm == "linf"  # the trainer's validation attack: the linf threat
        linf = next(t for t in method.params.threats if t.norm == "linf")
        assert cfg.attack.eps == linf.eps

"""The batched cohort computes what the plain loop computes.

MAT's loss with its trainable robust members run as one batched computation
(:mod:`mutualat.methods.cohort_batch`) must give the loop's loss, gradients and batch-norm
statistics, for N = 2 and 3 and a model with batch-norm; the choice between the two paths
must be made and recorded as documented.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from mutualat.config import AttackConfig, load_config
from mutualat.errors import ConfigError
from mutualat.methods.cohort_batch import BatchedCohort, decide, incompatibility, repeat_for, time_paths
from mutualat.methods.mat import MAT, MATParams
from mutualat.models import create_model
from mutualat.train import Trainer
from mutualat.train.checkpoint import load_checkpoint

from conftest import tiny_overrides

TOL = dict(rtol=1e-4, atol=1e-6)


def cohort(n: int, name: str = "tinycnn") -> list[nn.Module]:
    models = []
    for i in range(n):
        torch.manual_seed(i)
        models.append(create_model(name, in_channels=1, input_size=28).train())
    return models


def batch(b: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.rand(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g)


def mat(n: int, mode: str, random_start: bool = False, **params) -> MAT:
    attack = AttackConfig(norm="linf", eps=0.1, steps=3, random_start=random_start)
    method = MAT(MATParams(**params), attack, [False] * n)
    method.set_cohort_batch(mode)
    return method


def step(method: MAT, models: list[nn.Module], x, y, seed: int = 3):
    torch.manual_seed(seed)
    result = method.loss(models, x, y)
    for m in models:
        m.zero_grad(set_to_none=True)
    result.loss.backward()
    return result


def assert_same_state(looped: list[nn.Module], batched: list[nn.Module]) -> None:
    for a, b in zip(looped, batched, strict=True):
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, **TOL, msg=f"grad of {name}")
        for (name, u), (_, v) in zip(a.named_buffers(), b.named_buffers(), strict=True):
            torch.testing.assert_close(v, u, **TOL, msg=f"buffer {name}")


@pytest.mark.parametrize("n", [2, 3])
def test_batched_mat_step_equals_the_loop(n):
    looped = cohort(n)
    batched = copy.deepcopy(looped)
    x, y = batch()
    ref = step(mat(n, "loop"), looped, x, y)
    method = mat(n, "batched")
    out = step(method, batched, x, y)
    assert method.cohort_choice.batched
    assert not mat(n, "loop").set_cohort_batch("loop", looped, x).batched
    torch.testing.assert_close(out.loss, ref.loss, **TOL)
    assert out.metrics.keys() == ref.metrics.keys()
    for key in ref.metrics:
        torch.testing.assert_close(out.metrics[key], ref.metrics[key], **TOL, msg=key)
    assert_same_state(looped, batched)  # gradients and batch-norm running statistics
    # Every member is still in the mode the caller gave it, its statistics moved twice
    # (clean target forward, adversarial forward), as in the loop.
    assert all(m.training for model in batched for m in model.modules())
    bn = [m for m in batched[0].modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(int(m.num_batches_tracked) == 2 for m in bn)


def test_batched_steps_keep_matching_over_an_optimizer_trajectory():
    # Three SGD steps with a random start: the running statistics and weights evolve alike.
    n = 2
    looped = cohort(n)
    batched = copy.deepcopy(looped)
    x, y = batch()
    a, b = mat(n, "loop", random_start=True), mat(n, "batched", random_start=True)
    opts = [torch.optim.SGD([p for m in ms for p in m.parameters()], lr=0.1)
            for ms in (looped, batched)]
    for s in range(3):
        for method, models, opt in ((a, looped, opts[0]), (b, batched, opts[1])):
            step(method, models, x, y, seed=s)
            opt.step()
    for u, v in zip(looped, batched):
        for (name, p), (_, q) in zip(u.state_dict().items(), v.state_dict().items()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


def test_natural_and_frozen_members_stay_in_the_loop():
    # h1 natural (loop), h2 and h3 robust (batched), h4 a frozen teacher (loop, eval mode).
    models = cohort(4)
    models[3].eval().requires_grad_(False)
    twin = copy.deepcopy(models)
    x, y = batch()
    attack = AttackConfig(norm="linf", eps=0.1, steps=2, random_start=False)
    frozen = [False, False, False, True]
    loop = MAT(MATParams(natural=[0]), attack, frozen)
    loop.set_cohort_batch("loop")
    fast = MAT(MATParams(natural=[0]), attack, frozen)
    fast.set_cohort_batch("batched")
    ref, out = step(loop, models, x, y), step(fast, twin, x, y)
    assert fast._batched_members(twin, x) == [1, 2]
    torch.testing.assert_close(out.loss, ref.loss, **TOL)
    assert_same_state(models[:3], twin[:3])


def test_cohort_module_matches_members_in_both_modes():
    models = cohort(3)
    group = BatchedCohort(models)
    twins = copy.deepcopy(models)
    x, _ = batch(8)
    xs = repeat_for(3, x) + 0.01 * torch.arange(3).repeat_interleave(8).view(-1, 1, 1, 1)
    for train in (False, True):
        group.train(train)
        for t in twins:
            t.train(train)
        with torch.no_grad():
            expected = torch.cat([t(xs[i * 8:(i + 1) * 8]) for i, t in enumerate(twins)])
            torch.testing.assert_close(group(xs), expected, **TOL)
    for a, b in zip(twins, models):
        for (name, u), (_, v) in zip(a.named_buffers(), b.named_buffers()):
            torch.testing.assert_close(v, u, **TOL, msg=name)
    with pytest.raises(ValueError, match="divisible"):
        group(xs[:-1])


def test_the_choice_is_automatic_and_explained():
    x, _ = batch(8)
    same, mixed = cohort(2), [cohort(1)[0], cohort(1, "madrycnn")[0]]
    assert incompatibility(same) is None
    assert "architectures" in incompatibility(mixed)
    assert not decide("loop", same, x).batched
    auto = decide("auto", same, x)  # CPU: the loop, the reference
    assert not auto.batched and "cpu" in auto.reason
    assert decide("batched", same, x).batched
    assert not decide("auto", mixed, x).batched
    with pytest.raises(ConfigError, match="cannot be batched"):
        decide("batched", mixed, x)
    with pytest.raises(ConfigError, match="cohort_batch"):
        decide("fast", same, x)
    loop_s, batched_s = time_paths(same, x, repeats=1)
    assert loop_s > 0 and batched_s > 0
    assert all(m.training for model in same for m in model.modules())


def test_config_fields_are_checked():
    assert load_config(None).cohort_batch == "auto" and load_config(None).compile == "none"
    with pytest.raises(ConfigError, match="cohort_batch"):
        load_config(None, ["cohort_batch=maybe"])
    with pytest.raises(ConfigError, match="compile"):
        load_config(None, ["compile=yes"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(None, ["compile=model", "cohort_batch=batched"])


def test_pgd_keeps_its_perturbation_in_float32_under_bf16_autocast(monkeypatch):
    import mutualat.attacks.pgd as pgd

    seen = []
    original = pgd.input_gradient

    def spy(model, objective, x, y, delta, clean):
        grad, logits, losses = original(model, objective, x, y, delta, clean)
        seen.append((delta.dtype, grad.dtype))
        return grad, logits, losses

    monkeypatch.setattr(pgd, "input_gradient", spy)
    model = cohort(1)[0].eval()
    x, y = batch(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd.PGD(eps=0.1, steps=2)(model, x, y)
    assert x_adv.dtype == torch.float32
    assert seen and all(d == g == torch.float32 for d, g in seen)


def test_trainer_runs_the_batched_cohort_and_logs_the_choice(tmp_path):
    common = tiny_overrides(1) + ["method.name=mat", "models.1.name=tinycnn",
                                  "data.train_subset=128", "eval.test=false"]
    runs = {}
    for mode in ("loop", "batched"):
        out = tmp_path / mode
        Trainer(load_config(None, common + [f"cohort_batch={mode}"]), out).fit()
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        speed = [r for r in records if r["event"] == "speed"]
        assert len(speed) == 1 and speed[0]["cohort_batched"] is (mode == "batched")
        runs[mode] = load_checkpoint(out / "checkpoint.pt")["models"]
    for a, b in zip(runs["loop"], runs["batched"], strict=True):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_trial_step_guards_the_batched_path(monkeypatch):
    import mutualat.methods.cohort_batch as cb

    models = cohort(2)
    for m in models:
        m.eval()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    x, _ = batch(8)
    assert cb.trial(models, x) is None
    for m, state in zip(models, before):  # nothing of the members moved
        assert not any(s.training for s in m.modules())
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert all(p.grad is None for p in m.parameters())
    monkeypatch.setattr(cb, "trial", lambda models, x: "RuntimeError: no kernel")
    with pytest.raises(ConfigError, match="no kernel"):
        cb.decide("batched", models, x)

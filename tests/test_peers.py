"""Options beyond the paper for the cohort methods: alpha's warm-up and batch-norm-neutral
peer targets (mutualat.methods.peers)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mutualat.config import AttackConfig, load_config
from mutualat.errors import ConfigError
from mutualat.methods.mat import MAT, MATParams
from mutualat.methods.peers import peer_logits, scheduled_alpha
from mutualat.models import create_model
from mutualat.train import Trainer
from mutualat.train.cohort import Cohort

from conftest import tiny_overrides


def test_scheduled_alpha_values():
    assert [scheduled_alpha(0.6, 0.25, p) for p in (0.0, 0.125, 0.25, 0.5, 1.0)] == \
        pytest.approx([0.0, 0.3, 0.6, 0.6, 0.6])
    assert scheduled_alpha(0.6, 0.0, 0.0) == 0.6  # no warm-up: alpha from the first step
    assert scheduled_alpha(0.3, 1.0, 0.5) == pytest.approx(0.15)


def test_the_trainer_logs_the_warmed_up_alpha_per_step(tmp_path):
    overrides = tiny_overrides(2) + ["method.name=mat", "models.1.name=tinycnn",
                                     "method.params.alpha=0.6", "method.params.alpha_warmup=0.5",
                                     "eval.test=false"]
    out = tmp_path / "run"
    Trainer(load_config(None, overrides), out).fit()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "step"]
    total = len(steps)  # 2 epochs of 8 steps
    for r in steps:
        done = r["global_step"] - 1  # steps completed before this one
        assert r["alpha"] == pytest.approx(0.6 * min(1.0, done / (0.5 * total)), abs=1e-6)
    assert steps[0]["alpha"] == 0.0 and steps[-1]["alpha"] == pytest.approx(0.6)


@pytest.mark.parametrize("bad", ["method.params.alpha_warmup=1.5", "method.params.target_bn=off"])
def test_bad_options_are_refused(bad):
    from mutualat.methods import build_method

    for method in ("mat", "mat-mp"):
        extra = ["models.1.name=tinycnn"] + (["models.2.name=tinycnn"] if method == "mat-mp" else [])
        cfg = load_config(None, tiny_overrides(1) + [f"method.name={method}", bad] + extra)
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            build_method(cfg)


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("target_bn, changes", [("update", True), ("keep", False), ("eval", False)])
def test_peer_targets_and_batch_norm_statistics(target_bn, changes):
    torch.manual_seed(0)
    model = create_model("tinycnn", num_classes=10, in_channels=1, input_size=28).train()
    model.features[1].eval()  # a mixed-mode model: every module's mode must come back as it was
    modes = [m.training for m in model.modules()]
    before = _bn_buffers(model)
    x = torch.rand(32, 1, 28, 28)
    reference = copy.deepcopy(model)
    logits = peer_logits(model, x, target_bn)
    after = _bn_buffers(model)
    moved = any(not torch.equal(before[k], after[k]) for k in before)
    assert moved == changes
    assert [m.training for m in model.modules()] == modes
    assert not logits.requires_grad
    if target_bn == "keep":  # the same train-mode forward as "update"
        torch.testing.assert_close(logits, peer_logits(reference, x, "update"), rtol=0, atol=0)


def _mat_loss(name: str, target_bn: str) -> torch.Tensor:
    torch.manual_seed(0)
    models = [create_model(name, num_classes=10, in_channels=1, input_size=28).train()
              for _ in range(2)]
    method = MAT(MATParams(alpha=0.6, target_bn=target_bn), AttackConfig(eps=0.1, steps=2),
                 [False, False])
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    torch.manual_seed(1)
    return method.loss(Cohort.of(models, method), x, y).loss


def test_without_batch_norm_every_target_mode_gives_the_paper_loss():
    # madrycnn has no batch-norm: the three ways of computing a target are one.
    reference = _mat_loss("madrycnn", "update")
    assert torch.equal(_mat_loss("madrycnn", "keep"), reference)
    assert torch.equal(_mat_loss("madrycnn", "eval"), reference)
    # With batch-norm the losses differ, if only because the members' eval-mode attacks
    # normalize with running statistics that "update" has moved and "keep" has not.
    assert not torch.equal(_mat_loss("tinycnn", "keep"), _mat_loss("tinycnn", "update"))


def test_eval_targets_are_taken_with_dropout_off():
    """SmallCNN has dropout and no batch-norm: target_bn "update" and "keep" take a
    train-mode forward, so each target is one dropout sample; "eval" takes the target with
    dropout off (the MP plan's eval-targets ablation rests on this), and leaves the model in
    train mode."""
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=10, in_channels=1, input_size=28).train()
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        clean = copy.deepcopy(model).eval()(x)
    torch.testing.assert_close(peer_logits(model, x, "eval"), clean, rtol=0, atol=0)
    assert model.training
    for mode in ("update", "keep"):
        assert not torch.equal(peer_logits(model, x, mode), peer_logits(model, x, mode)), mode

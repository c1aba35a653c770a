"""Cohorts under the trainer: alpha = 0 MAT equals independent L_C-AT runs; cohort resume."""

from __future__ import annotations

from pathlib import Path

import torch

import mutualat
from mutualat.config import load_config
from mutualat.train import Trainer
from mutualat.train.checkpoint import load_checkpoint

from conftest import tiny_overrides, train_first_epoch_only


def _run(out: Path, overrides: list[str]) -> list[dict[str, torch.Tensor]]:
    Trainer(load_config(None, tiny_overrides(1) + overrides), out).fit()
    return load_checkpoint(out / "checkpoint.pt")["models"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_mat_with_alpha_zero_trains_like_independent_lc_at_runs(tmp_path):
    # No random start: the attacks of a cohort draw from one RNG stream, separate runs from
    # their own; everything else (init seeds, batches) is shared by construction.
    common = ["attack.random_start=false", "data.train_subset=256"]
    cohort = _run(tmp_path / "mat", common + [
        "method.name=mat", "method.params.alpha=0.0", "models.1.name=tinycnn"])
    for index in range(2):
        alone = _run(tmp_path / f"at{index}", common + [
            "method.name=at", "method.params.loss=lc", f"models.0.seed={index}"])
        _same(cohort[index], alone[0])


def test_mat_with_alpha_positive_differs_from_independent_runs(tmp_path):
    common = ["attack.random_start=false", "data.train_subset=256"]
    cohort = _run(tmp_path / "mat", common + [
        "method.name=mat", "method.params.alpha=0.5", "models.1.name=tinycnn"])
    alone = _run(tmp_path / "at", common + ["method.name=at", "method.params.loss=lc"])
    # The distillation term changes the trajectory: the control for the test above.
    assert not torch.allclose(cohort[0]["fc.weight"], alone[0]["fc.weight"], atol=1e-4)


def test_cohort_resume_matches_uninterrupted(tmp_path):
    overrides = tiny_overrides(2) + ["method.name=mat", "models.1.name=tinycnn",
                                     "data.train_subset=256"]
    reference = tmp_path / "reference"
    Trainer(load_config(None, overrides), reference).fit()

    out = tmp_path / "interrupted"
    train_first_epoch_only(load_config(None, overrides), out)
    Trainer(None, out, resume=True).fit()
    for a, b in zip(load_checkpoint(out / "checkpoint.pt")["models"],
                    load_checkpoint(reference / "checkpoint.pt")["models"], strict=True):
        _same(a, b)
    # Every member is saved on its own and loads as a plain model; the ensemble averages
    # their softmax outputs.
    x = torch.rand(2, 1, 28, 28)
    members = mutualat.load_cohort(out)
    assert sorted(members) == ["h1", "h2"]
    for role in ("h1", "h2"):
        model = mutualat.load_model(out / "models" / f"{role}.safetensors")
        assert model(x).shape == (2, 10)
    mean_prob = sum(m(x).softmax(1) for m in members.values()) / 2
    torch.testing.assert_close(mutualat.load_ensemble(out)(x).softmax(1), mean_prob)


def test_a_cohort_may_mix_architectures(tmp_path):
    """MAT with a tinycnn and a SmallCNN peer: each trained, saved with its own architecture
    and loadable alone; the ensemble averages the two."""
    out = tmp_path / "mixed"
    Trainer(load_config(None, tiny_overrides(1) + [
        "method.name=mat", "models.1.name=smallcnn", "data.train_subset=128"]), out).fit()
    h1 = mutualat.load_model(out / "models" / "h1.safetensors")
    h2 = mutualat.load_model(out / "models" / "h2.safetensors")
    assert sum(p.numel() for p in h1.parameters()) != sum(p.numel() for p in h2.parameters())
    x = torch.rand(4, 1, 28, 28)
    ensemble = mutualat.load_ensemble(out)
    with torch.no_grad():
        expected = (h1(x).softmax(1) + h2(x).softmax(1)) / 2
        got = ensemble(x)
    # Log-probabilities of the mean of the members' softmax.
    assert torch.allclose(got.exp(), expected, atol=1e-5)

"""eval.val_roles: a cohort judged by some of its members (MAT-MP's generalist) validates only
them each epoch; the others train as before and are still tested at the end."""

from __future__ import annotations

import json
import re

import pytest

from mutualat.cli import main
from mutualat.compare import load_plan
from mutualat.compare.study import Study
from mutualat.config import load_config
from mutualat.errors import ConfigError
from mutualat.train import Trainer
from mutualat.train import trainer as trainer_module
from mutualat.train.logger import read_metrics
from mutualat.train.validate import robust_accuracies

from conftest import tiny_overrides
from test_compare import TINY_PLAN, _write_plan

MP = ["method.name=mat-mp", "models.1.name=tinycnn", "models.2.name=tinycnn",
      "method.params.threats=[{norm: linf, eps: 0.1, steps: 2}, {norm: l2, eps: 1.0, steps: 2}]",
      "data.train_subset=128", "data.val_subset=64", "data.test_subset=64"]


def test_only_the_named_members_are_validated_and_every_member_is_tested(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []

    def counted(model, *args, **kwargs):  # one call per member per validation or test
        calls.append(len(args[0]))
        return robust_accuracies(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "robust_accuracies", counted)
    Trainer(load_config(None, tiny_overrides(2) + MP + ["eval.val_roles=[generalist]"]), out).fit()
    assert calls == [64, 64, 64, 64, 64]  # the generalist at each of 2 epochs; 3 members tested
    epochs = [r for r in read_metrics(out) if r["event"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        validated = {k.split("/", 1)[1] for k in record if k.startswith("val_")}
        assert validated == {"generalist"}
        assert "val_pgd/generalist" in record and "val_linf/generalist" in record
    models = {p.name for p in (out / "models").iterdir()}
    assert {"generalist.safetensors", "linf.safetensors", "l2.safetensors",
            "generalist.best.safetensors"} <= models
    assert not {"linf.best.safetensors", "l2.best.safetensors"} & models
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"generalist", "linf", "l2"}  # the final test: all
    # a study's evaluation of the best checkpoint asks only for the files that exist
    assert set(Study.model_files(out, "best")) == {"generalist"}
    assert set(Study.model_files(out, "last")) == {"generalist", "linf", "l2"}


def test_the_default_validates_every_trained_member(tmp_path):
    out = tmp_path / "run"
    Trainer(load_config(None, tiny_overrides(1) + MP), out).fit()
    record = [r for r in read_metrics(out) if r["event"] == "epoch"][-1]
    assert {k.split("/", 1)[1] for k in record if k.startswith("val_pgd/")} == {
        "generalist", "linf", "l2"}


def test_a_role_the_run_does_not_train_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out)]
    for assignment in tiny_overrides(1) + MP + ["eval.val_roles=[generalist, l1]"]:
        argv += ["--set", assignment]
    assert main(argv) == 2
    assert ("eval.val_roles names 'l1', not a trained member of this run (its roles: "
            "generalist, linf, l2)") in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("value, message", [
    ("[]", "eval.val_roles must name at least one member's role"),
    ("generalist", "eval.val_roles: expected a list"),
    ("[1]", "eval.val_roles.0: expected a string")])
def test_val_roles_must_be_a_list_of_roles(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, tiny_overrides(1) + [f"eval.val_roles={value}"])


@pytest.mark.parametrize("variant, message", [
    # validating some members only, without being selected by them
    ("  mat: {method.name: mat, models: [tinycnn, tinycnn], eval.val_roles: [h1]}",
     "mat validates only h1 (eval.val_roles), but is selected by every member"),
    ("  mat: {method.name: mat, models: [tinycnn, tinycnn], eval.val_roles: [h1],\n"
     "        select_on: [h2]}",
     "mat validates only h1 (eval.val_roles), but is selected by h2"),
])
def test_a_plan_must_select_a_variant_by_members_it_validates(tmp_path, variant, message):
    text = TINY_PLAN.replace(
        "  mat: {method.name: mat, models: [tinycnn, tinycnn], method.params.alpha_warmup: 0.5}",
        variant)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_plan(_write_plan(tmp_path, text))
    # selected by what it validates: accepted
    fine = TINY_PLAN.replace(
        "  mat: {method.name: mat, models: [tinycnn, tinycnn], method.params.alpha_warmup: 0.5}",
        "  mat: {method.name: mat, models: [tinycnn, tinycnn], eval.val_roles: [h1],\n"
        "        select_on: [h1]}")
    plan = load_plan(_write_plan(tmp_path / "fine", fine))
    assert plan.config("mat", plan.settings("mat")[0], 0).eval.val_roles == ["h1"]

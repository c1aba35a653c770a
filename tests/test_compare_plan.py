"""A plan's variant and grid point become one run config: the variant's own per-member
settings, then the grid's, which set every member."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutualat.compare import load_plan
from mutualat.compare.provenance import plan_settings
from mutualat.train.optim import lr_and_weight_decay

from test_compare import TINY_PLAN, _write_plan

REPO = Path(__file__).resolve().parents[1]


def _members(plan, variant, setting, seed=0):
    return [lr_and_weight_decay(m) for m in plan.config(variant, setting, seed).models]


def test_a_variant_sets_one_members_weight_decay_and_the_grid_sets_every_members_rate(tmp_path):
    plan = load_plan(_write_plan(tmp_path, TINY_PLAN.replace(
        "  mat: {method.name: mat,",
        "  mat-wd: {method.name: mat, models: [tinycnn, {name: tinycnn, weight_decay: 0.002}]}\n"
        "  mat: {method.name: mat,").replace(
        "seeds: [0, 2]", "grids:\n  mat-wd: {lr: [0.01, 0.03], weight_decay: [0.0007]}\n"
                         "seeds: [0, 2]")))
    default_wd = lr_and_weight_decay(plan.config("at", plan.settings("at")[0], 0).models[0])[1]
    assert default_wd not in (0.002, 0.0007)
    # the variant alone: its second member's decay, the architecture's for the first
    assert _members(plan, "mat", {"lr": 0.02}) == [(0.02, default_wd), (0.02, default_wd)]
    # a grid key sets every member, over what the variant gave one of them
    assert _members(plan, "mat-wd", plan.settings("mat-wd")[1]) == [(0.03, 7e-4), (0.03, 7e-4)]
    only_lr = load_plan(_write_plan(tmp_path / "lr", TINY_PLAN.replace(
        "  mat: {method.name: mat,",
        "  mat-wd: {method.name: mat, models: [tinycnn, {name: tinycnn, weight_decay: 0.002}]}\n"
        "  ard: {method.name: ard, models: [{name: tinycnn, weight_decay: 0.003}, tinycnn],\n"
        "        teacher: at}\n"
        "  mat: {method.name: mat,")))
    assert [s for s in only_lr.settings("mat-wd")] == [{"lr": 0.02}, {"lr": 0.05}]
    assert _members(only_lr, "mat-wd", {"lr": 0.05}) == [(0.05, default_wd), (0.05, 0.002)]
    # the settings table names the member whose decay is not the baseline's, never a frozen
    # teacher (it takes no step); a one-value grid key is a setting like any other
    row = "batch size; weight decay"
    assert plan_settings(only_lr)[row] == f"32; {default_wd:g} (mat-wd's h2: 0.002)"
    assert plan_settings(plan)[row] == f"32; {default_wd:g} (mat-wd's h1, h2: 0.0007)"


@pytest.mark.parametrize("grids, expected", [
    # a variant whose grid searches a decay, by the shorthand or a member's own key: the
    # hyperparameter table shows it, not the settings row
    ("mat: {lr: [0.02], weight_decay: [0.001, 0.003]}", "32; {wd}"),
    ("mat: {lr: [0.02], models.1.weight_decay: [0.001, 0.003]}", "32; {wd}"),
    ("mat: {lr: [0.02], models.1.weight_decay: [0.001]}", "32; {wd} (mat's h2: 0.001)"),
    # the baseline's own search: no single decay to state, and nothing to set apart from it
    ("at: {lr: [0.02], weight_decay: [0.001, 0.003]}", "32; searched (the hyperparameter table)"),
])
def test_the_settings_row_states_one_decay_and_what_is_set_apart(tmp_path, grids, expected):
    plan = load_plan(_write_plan(tmp_path, TINY_PLAN.replace(
        "seeds: [0, 2]", f"grids:\n  {grids}\nseeds: [0, 2]")))
    wd = lr_and_weight_decay(plan.config("at", plan.settings("at")[0], 0).models[0])[1]
    assert plan_settings(plan)["batch size; weight decay"] == expected.format(wd=f"{wd:g}")


def test_the_committed_ard_wd_variant_is_ard_with_the_official_decay_for_its_step():
    # ARD's code: lr 0.1 and weight decay 2e-4 on a KL averaged over K = 10 classes; here the KL
    # sums over them, so lr 0.1 / K, and K x 2e-4 = 2e-3 takes the same decay per step
    plan = load_plan(REPO / "configs/plans/fmnist-smallcnn-paper.yaml")
    assert plan.settings("ard") == plan.settings("ard-wd")
    for setting in plan.settings("ard-wd"):
        ard, ard_wd = (plan.config(v, setting, 0) for v in ("ard", "ard-wd"))
        assert [m.frozen for m in ard_wd.models] == [True, False]
        assert lr_and_weight_decay(ard.models[1]) == (setting["lr"], 5e-4)
        assert lr_and_weight_decay(ard_wd.models[1]) == (setting["lr"], pytest.approx(10 * 2e-4))
        assert ard_wd.models[0].init == ard.models[0].init  # the same AT teacher
    # the section's settings table says so
    row = plan_settings(plan)["batch size; weight decay"]
    assert row == "128; 0.0005 (ard-wd's student: 0.002)"
    assert {"lr": 0.1 / 10} in plan.settings("ard-wd")  # the official rate's counterpart

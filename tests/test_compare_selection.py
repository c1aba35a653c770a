"""The grid's choice: the highest validation score by default, or the one-standard-error rule
a plan declares (``within_one_se``): the preferred point among those within one binomial
standard error of the best score, on the number of validation images the runs recorded."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mutualat.compare import Study, load_plan
from mutualat.compare.progress import longest_first
from mutualat.compare.selection import Selection, choose, validation_images
from mutualat.compare.tasks import PHASE
from mutualat.compare.worker import run_train
from mutualat.data import load_dataset, train_val_split
from mutualat.errors import ConfigError

from conftest import script_module, set_last_validation_score
from test_compare import TINY_PLAN, _write_plan, assert_edit_refused

LRS = [{"lr": 0.05}, {"lr": 0.1}, {"lr": 0.2}]


def test_the_plain_maximum_and_the_one_se_rule_on_hand_made_scores():
    # fmnist-smallcnn-paper's MART grid at seed 0: 0.2 beat 0.1 by 0.6 points on 500 images
    scores = [0.500, 0.540, 0.546]
    se = math.sqrt(0.546 * 0.454 / 500)  # 2.23 points
    assert choose(LRS, scores, {}) == (2, 2, None)
    assert choose(LRS, scores, {"lr": "lowest"}, lambda i: 500) == (1, 2, pytest.approx(se))
    assert choose(LRS, scores, {"lr": "highest"}, lambda i: 500)[0] == 2
    # just outside one standard error is not a candidate, just inside is
    assert choose(LRS, [0.546 - se - 1e-4, 0.546 - se + 1e-4, 0.546], {"lr": "lowest"},
                  lambda i: 500)[0] == 1
    # a diverged point (-inf) never is, nor a point of the lowest rate far below the best
    assert choose(LRS, [float("-inf"), 0.30, 0.546], {"lr": "lowest"}, lambda i: 500)[0] == 2
    # more images, a smaller standard error: the same 0.6 points now separate the two
    assert choose(LRS, scores, {"lr": "lowest"}, lambda i: 100_000)[0] == 2
    # the count is the best point's
    assert choose(LRS, scores, {"lr": "lowest"}, lambda i: 500 if i == 2 else 100_000)[0] == 1
    # a two-key grid: the rule orders by its key, ties in it by the higher score
    grid = [{"lr": 0.1, "alpha": 0.3}, {"lr": 0.1, "alpha": 0.6}, {"lr": 0.2, "alpha": 0.3}]
    assert choose(grid, [0.52, 0.53, 0.54], {"lr": "lowest"}, lambda i: 500)[0] == 1
    # a key the variant's grid does not sweep (absent, or one value) is passed over: the
    # plain maximum, without asking how many images there were
    assert choose([{"alpha": 0.3}, {"alpha": 0.6}], [0.50, 0.51], {"lr": "lowest"}) == (1, 1, None)
    one_rate = [{"lr": 0.1, "alpha": 0.3}, {"lr": 0.1, "alpha": 0.6}]
    assert choose(one_rate, [0.50, 0.51], {"lr": "lowest"}) == (1, 1, None)
    with pytest.raises(ConfigError, match="number of validation images"):
        choose(LRS, scores, {"lr": "lowest"})


def test_the_report_note_says_what_the_rule_did():
    settings = {"lr0.1": {"lr": 0.1}, "lr0.2": {"lr": 0.2}}
    scores = {"lr0.1": 0.54, "lr0.2": 0.546}
    moved = Selection("mart", {"lr": 0.1}, scores, "c", settings, best="lr0.2", se=0.0223)
    assert moved.note == "one-SE rule, SE 2.2 points; highest: lr0.2"
    kept = Selection("mart", {"lr": 0.2}, scores, "c", settings, se=0.0223)
    assert kept.note == "one-SE rule, SE 2.2 points: the highest score"
    assert Selection("mart", {"lr": 0.2}, scores, "c", settings).note == ""
    # the grid's edge is judged at the highest-scoring point: the rule may choose the lowest
    # rate by design, and that alone does not ask for a wider grid
    three = {**settings, "lr0.05": {"lr": 0.05}}
    assert not Selection("at", {"lr": 0.05}, scores, "c", three, best="lr0.1", se=0.02).at_edge
    assert Selection("at", {"lr": 0.05}, scores, "c", three).at_edge
    assert Selection("at", {"lr": 0.1}, scores, "c", three, best="lr0.2", se=0.02).at_edge


@pytest.mark.parametrize("rule, message", [
    ("lowest", "within_one_se maps a grid key to lowest or highest"),
    ("{lr: middle}", "within_one_se.lr must be lowest or highest"),
    ("{weight_decay: lowest}", "within_one_se names 'weight_decay', which no grid sweeps"),
])
def test_a_bad_rule_is_refused_before_anything_runs(tmp_path, capsys, rule, message):
    assert_edit_refused(_write_plan, TINY_PLAN, ("seeds: [0, 2]", f"within_one_se: {rule}\nseeds: [0, 2]"),
                        tmp_path, capsys, message)


#: The tiny plan's AT alone, one epoch, with a held-out split of 50 images under a cap of 64.
AT_GRID = (TINY_PLAN.replace("  mat: {method.name: mat, models: [tinycnn, tinycnn], "
                             "method.params.alpha_warmup: 0.5}\n", "")
           .replace("control: {variant: at, members: 2}\n", "")
           .replace("optim.epochs: 2", "optim.epochs: 1")
           .replace("  data.val_subset: 64\n", "  data.val_subset: 64\n  data.val_fraction: 0.005\n"))


def _trained_grid(tmp_path: Path, text: str = AT_GRID) -> tuple[Path, Study]:
    """The plan ``text`` written under tmp_path/plain and its seed-0 grid trained for real."""
    path = _write_plan(tmp_path / "plain", text)
    study = Study(load_plan(path), tmp_path / "out")
    for task in study.tasks()[0]:
        if task.priority == (0, 0):
            run_train(task.spec)
    return path, study


def test_a_plan_with_the_rule_chooses_on_its_runs_validation_images(tmp_path):
    """The AT grid trained for real, its last scores then set by hand: 0.50 against 0.55 is
    within one standard error of 50 images (7.0 points), so the rule takes the lower rate
    where the plain maximum does not; 0.47 is outside it."""
    _, study = _trained_grid(tmp_path)
    plain = study.plan
    ruled = load_plan(_write_plan(tmp_path / "ruled", AT_GRID.replace(
        "seeds: [0, 2]", "within_one_se: {lr: lowest}\nseeds: [0, 2]")))
    assert ruled.within_one_se == {"lr": "lowest"} and plain.within_one_se == {}
    low, high = (study.run_dir("at", {"lr": lr}, 0) for lr in (0.02, 0.05))
    held_out = len(train_val_split(load_dataset("fashion-mnist-embedded").train, 0.005, seed=0)[1].labels)
    assert held_out == 50 and validation_images(low) == validation_images(high) == 50
    set_last_validation_score(low, 0.50)
    set_last_validation_score(high, 0.55)
    assert study.selection("at").chosen == {"lr": 0.05}
    chosen = Study(ruled, tmp_path / "out").selection("at")
    assert chosen.chosen == {"lr": 0.02} and chosen.best == "lr0.05"
    assert chosen.se == pytest.approx(math.sqrt(0.55 * 0.45 / 50))
    assert "one-standard-error rule" in chosen.criterion and "lowest lr" in chosen.criterion
    set_last_validation_score(low, 0.47)
    chosen = Study(ruled, tmp_path / "out").selection("at")
    assert chosen.chosen == {"lr": 0.05} and chosen.best is None
    # runs trained before n_val was recorded: the rule is refused (their cap, 64, is not the
    # count), the plain maximum still chooses
    set_last_validation_score(low, 0.50, drop_n_val=True)
    set_last_validation_score(high, 0.55, drop_n_val=True)
    with pytest.raises(ConfigError, match="recorded no n_val"):
        Study(ruled, tmp_path / "out").selection("at")
    assert study.selection("at").chosen == {"lr": 0.05}


def test_the_script_shows_what_the_rule_would_have_chosen(tmp_path, capsys):
    """scripts/one_se_choices.py on a study that took the highest score: the rule's choice
    beside it, from validation scores only; a run without n_val needs --n-val."""
    path, study = _trained_grid(tmp_path)
    low, high = (study.run_dir("at", {"lr": lr}, 0) for lr in (0.02, 0.05))
    set_last_validation_score(low, 0.50)
    set_last_validation_score(high, 0.55)
    script = script_module("one_se_choices")
    row = "| at | lr0.05 (55.0) | lr0.02 (50.0) (moved) | 7.0 |"
    assert script.main([str(path), "--out", str(study.out)]) == 0
    printed = capsys.readouterr().out
    assert row in printed and "moves 1 of the 1 choices it applies to" in printed
    set_last_validation_score(high, 0.55, drop_n_val=True)
    assert script.main([str(path), "--out", str(study.out)]) == 2
    assert "recorded no n_val" in capsys.readouterr().err
    assert script.main([str(path), "--out", str(study.out), "--n-val", "50"]) == 0
    assert row in capsys.readouterr().out
    assert script.main([str(path), "--out", str(study.out), "--prefer", "lr=low"]) == 2
    assert "--prefer takes KEY=lowest or KEY=highest" in capsys.readouterr().err
    assert script.main([str(path), "--out", str(study.out), "--prefer", "lrr=lowest"]) == 2
    assert "--prefer: within_one_se names 'lrr', which no grid sweeps" in capsys.readouterr().err
    # a plan that declares the rule: the script still sets the highest score beside it
    ruled = _write_plan(tmp_path / "ruled", AT_GRID.replace(
        "seeds: [0, 2]", "within_one_se: {lr: lowest}\nseeds: [0, 2]"))
    assert script.main([str(ruled), "--out", str(study.out), "--n-val", "50"]) == 0
    assert row in capsys.readouterr().out
    # a grid not yet finished, and one whose every point diverged: their rows say so
    (low / "results.json").unlink()
    assert script.main([str(path), "--out", str(study.out), "--n-val", "50"]) == 0
    printed = capsys.readouterr().out
    assert "| at | its grid has not finished | | |" in printed
    assert "moves 0 of the 0 choices it applies to" in printed
    for run in (low, high):
        (run / "diverged.json").write_text("{}")
        (run / "results.json").unlink(missing_ok=True)
    assert script.main([str(path), "--out", str(study.out)]) == 0
    assert "| at | every grid point of at diverged" in capsys.readouterr().out


def test_a_choice_is_evaluated_before_the_grid_seed_trains_more(tmp_path):
    """Within a seed, a choice's evaluation starts before another variant's grid runs (the
    chosen run at the next seed after both): a study stopped early has its choices evaluated,
    and an archive leaves no chosen run waiting on its evaluation."""
    text = AT_GRID.replace("  at: {method.name: at, method.params.loss: lc}\n",
                           "  at: {method.name: at, method.params.loss: lc}\n"
                           "  late: {method.name: at, method.params.loss: lc}\n")
    study = Study(load_plan(_write_plan(tmp_path / "plan", text)), tmp_path / "out")
    for task in study.tasks()[0]:
        if task.key.startswith("train/at/"):
            run_train(task.spec)
    ready = longest_first(*study.tasks(), {})
    assert [t.key for t in ready][:3] == ["eval/at/seed0", "train/late/lr0.02/seed0",
                                          "train/late/lr0.05/seed0"]
    assert ready[3].key.startswith("train/at/") and ready[3].key.endswith("/seed2")
    assert [t.priority for t in ready] == [(0, PHASE["eval"]), (0, PHASE["grid"]),
                                           (0, PHASE["grid"]), (1, PHASE["chosen"])]

"""A grid that grows: a plan's ``extend_grid`` adds the next value beyond a grid's edge while
the highest validation score sits there, trains it at the grid's seed, and the choice waits on
it, at most the plan's number of added values per key."""

from __future__ import annotations

import pytest

from mutualat.compare import Study, load_plan
from mutualat.compare.progress import grid_lines, status_lines
from mutualat.compare.provenance import planned_runs
from mutualat.compare.selection import Selection, choice_notes, extension, grow, score_line
from mutualat.compare.worker import run_train

from conftest import set_last_validation_score
from test_compare import _write_plan, assert_edit_refused
from test_compare_selection import AT_GRID

LR = {"lr": [0.05, 0.1, 0.2]}


def _points(lrs):
    return [{"lr": lr} for lr in lrs]


def test_the_next_value_beyond_the_edge_on_hand_made_scores():
    grid = {"lr": [0.05, 0.1, 0.2]}
    settings = _points(grid["lr"])
    # mat-mp-max's seed-0 scores before its grid was widened by hand: best at the lowest rate
    assert extension(grid, LR, settings, [0.520, 0.466, 0.516], {"lr": 2}) == ("lr", 0.025, 0)
    assert extension(grid, LR, settings, [0.50, 0.53, 0.55], {"lr": 2}) == ("lr", 0.4, 3)
    assert extension(grid, LR, settings, [0.50, 0.55, 0.53], {"lr": 2}) is None
    # a diverged top rate is never extended past; a tie for the highest score is no evidence
    # that the best lies outside, on either side
    assert extension(grid, LR, settings, [0.50, 0.55, float("-inf")], {"lr": 2}) is None
    assert extension(grid, LR, settings, [0.55, 0.50, 0.55], {"lr": 2}) is None
    assert extension(grid, LR, settings, [0.55, 0.55, 0.50], {"lr": 2}) is None
    assert extension(grid, LR, settings, [0.50, 0.55, 0.55], {"lr": 2}) is None
    # the limit counts the values added so far, on either side
    grown = {"lr": [0.025, 0.05, 0.1, 0.2]}
    scores = [0.40, 0.45, 0.50, 0.55]
    assert extension(grown, LR, _points(grown["lr"]), scores, {"lr": 1}) is None
    assert extension(grown, LR, _points(grown["lr"]), scores, {"lr": 2}) == ("lr", 0.4, 4)
    # the ratio is the outer pair's on that side, to three significant digits
    uneven = {"lr": [0.01, 0.03, 0.1]}
    assert extension(uneven, uneven, _points(uneven["lr"]), [0.4, 0.5, 0.6], {"lr": 1}) == ("lr", 0.333, 3)
    assert extension(uneven, uneven, _points(uneven["lr"]), [0.6, 0.5, 0.4], {"lr": 1}) == ("lr", 0.00333, 0)
    # a value that rounding would put back inside the grid is not added (above: 1.0048 -> 1.0);
    # one that rounding moves further out still is (below: 1.0042 -> 1.0)
    close = {"lr": [1.0044, 1.0046]}
    assert extension(close, close, _points(close["lr"]), [0.5, 0.6], {"lr": 1}) is None
    assert extension(close, close, _points(close["lr"]), [0.6, 0.5], {"lr": 1}) == ("lr", 1.0, 0)
    # a list in falling order keeps it; an unsorted one gains its value last
    falling = {"lr": [0.2, 0.1]}
    assert extension(falling, falling, _points(falling["lr"]), [0.6, 0.5], {"lr": 1}) == ("lr", 0.4, 0)
    assert extension(falling, falling, _points(falling["lr"]), [0.5, 0.6], {"lr": 1}) == ("lr", 0.05, 2)
    mixed = {"lr": [0.1, 0.05, 0.2]}
    assert extension(mixed, mixed, _points(mixed["lr"]), [0.5, 0.6, 0.4], {"lr": 1}) == ("lr", 0.025, 3)
    # a two-key grid: only the named key grows; a key this variant does not sweep is passed over
    two = {"lr": [0.05, 0.1], "weight_decay": [5e-4, 1e-3]}
    points = [{"lr": lr, "weight_decay": wd} for lr in two["lr"] for wd in two["weight_decay"]]
    assert extension(two, two, points, [0.5, 0.4, 0.4, 0.3], {"lr": 1}) == ("lr", 0.025, 0)
    assert extension(two, two, points, [0.3, 0.4, 0.4, 0.5], {"weight_decay": 1}) == (
        "weight_decay", 0.002, 2)
    one_rate = {"lr": [0.1], "weight_decay": [5e-4, 1e-3]}
    assert extension(one_rate, one_rate, [{"lr": 0.1, "weight_decay": 5e-4},
                                          {"lr": 0.1, "weight_decay": 1e-3}],
                     [0.5, 0.4], {"lr": 2}) is None


def test_a_grid_grows_until_its_best_is_inside_or_its_limit():
    def scorer(table):
        return lambda settings: [table[s["lr"]] for s in settings] if all(
            s["lr"] in table for s in settings) else None

    # mat-mp-max at seed 0: the hand-widened grid, 0.025 then inside
    real = {0.025: 0.474, 0.05: 0.520, 0.1: 0.466, 0.2: 0.516}
    assert grow(LR, {"lr": 2}, scorer(real)) == {"lr": [0.025, 0.05, 0.1, 0.2]}
    # rising scores: two values added, then the limit
    rising = {0.05: 0.4, 0.1: 0.45, 0.2: 0.5, 0.4: 0.55, 0.8: 0.6}
    assert grow(LR, {"lr": 2}, scorer(rising)) == {"lr": [0.05, 0.1, 0.2, 0.4, 0.8]}
    # the added point not yet scored: it is in the grid, and nothing beyond it
    assert grow(LR, {"lr": 2}, scorer({0.05: 0.4, 0.1: 0.45, 0.2: 0.5})) == {"lr": [0.05, 0.1, 0.2, 0.4]}
    assert grow(LR, {"lr": 2}, scorer({0.05: 0.4})) == LR  # the plan's own grid still running
    assert grow(LR, {}, scorer(rising)) == LR
    assert choice_notes(False, "", ["lr0.025"]) == "grid extended by lr0.025"
    assert choice_notes(True, "one-SE rule, SE 2.2 points: the highest score", ["lr0.4", "lr0.8"]) == (
        "grid extended by lr0.4, lr0.8; at the edge of the grid; one-SE rule, SE 2.2 points: "
        "the highest score")


def test_a_study_trains_the_added_point_and_its_choice_waits_on_it(tmp_path):
    """The tiny AT grid (0.02, 0.05) trained for real, its scores set by hand: 0.05 best, at
    the top edge, so 0.125 (0.05 x 0.05 / 0.02) is the grid's next task at seed 0."""
    grown = AT_GRID.replace("seeds: [0, 2]", "extend_grid: {lr: 1}\nseeds: [0, 2]")
    path = _write_plan(tmp_path / "grown", grown)
    study = Study(load_plan(path), tmp_path / "out")
    assert study.plan.extend_grid == {"lr": 1}
    assert grid_lines(study) == ["grid     at  0 of 2 grid runs ended; may gain up to 1 more"]
    assert status_lines(study)[-1].endswith("; not counted: up to 1 grid run extend_grid may add")
    for task in study.tasks()[0]:
        run_train(task.spec)
    low, high = (study.run_dir("at", {"lr": lr}, 0) for lr in (0.02, 0.05))
    set_last_validation_score(low, 0.50)
    set_last_validation_score(high, 0.55)
    assert study.settings("at") == _points([0.02, 0.05, 0.125])
    assert study.selection("at") is None
    ready, waiting = study.tasks()
    assert [t.key for t in ready] == ["train/at/lr0.125/seed0"] and ready[0].priority == (0, 0)
    assert "train/at/(chosen)/seed2" in waiting
    assert grid_lines(study) == ["grid     at  2 of 3 grid runs ended (validation: lr0.02 50.0 %, "
                                 "lr0.05 55.0 %); grid extended by lr0.125"]
    assert "extend_grid may add" not in status_lines(study)[-1]  # its one value is added
    run_train(ready[0].spec)
    added = study.run_dir("at", {"lr": 0.125}, 0)
    set_last_validation_score(added, 0.52)
    chosen = study.selection("at")
    assert chosen.chosen == {"lr": 0.05} and chosen.extended == ["lr0.125"] and not chosen.at_edge
    assert added in planned_runs(study, {"at": chosen})  # a grid point, though not chosen
    assert "the grid grows while its highest score, not tied, is at its edge: lr by the ratio of its " \
           "outer values, at most 1 value" in chosen.criterion
    assert grid_lines(study) == ["grid     at  chose lr0.05 (validation 55.0 %; grid extended by lr0.125)"]
    assert sorted(t.key for t in study.tasks()[0]) == ["eval/at/seed0", "train/at/lr0.05/seed2"]
    # the added point best: at the limit, the choice is made and says it is at the edge
    set_last_validation_score(added, 0.60)
    chosen = study.selection("at")
    assert chosen.chosen == {"lr": 0.125} and chosen.at_edge
    assert added in planned_runs(study, {"at": chosen})
    # tied with the inner point for the highest score: no evidence the best lies outside, so
    # the grid stays, and the report says why
    set_last_validation_score(added, 0.55)
    chosen = study.selection("at")
    assert chosen.chosen == {"lr": 0.05} and chosen.tied == ["lr0.125"] and not chosen.at_edge
    assert grid_lines(study) == ["grid     at  chose lr0.05 (validation 55.0 %; grid extended by "
                                 "lr0.125; tied for the highest score with lr0.125)"]
    # the plan without extend_grid no longer asks for the added run, and chooses as before
    plain = Study(load_plan(_write_plan(tmp_path / "plain", AT_GRID)), tmp_path / "out")
    assert plain.selection("at").chosen == {"lr": 0.05} and plain.selection("at").extended == []
    assert added not in planned_runs(plain, {"at": plain.selection("at")})
    assert "grid grows" not in plain.selection("at").criterion


def test_a_choice_tied_for_the_highest_score_at_the_edge_says_so():
    """MAT-MP-MSD's grid at seed 0 (fmnist-smallcnn-mp): lr 0.05 and 0.1 scored 54.8 % each,
    0.2 diverged. The one-SE rule takes 0.05, at the grid's edge, and the grid does not grow
    (a tie): the note says both, so a reader of "at the edge" sees why it stayed."""
    scores = {"lr0.05": 0.548, "lr0.1": 0.548, "lr0.2": float("-inf")}
    settings = {label: {"lr": lr} for label, lr in zip(scores, LR["lr"])}
    chosen = Selection("mat-mp-msd", {"lr": 0.05}, scores, "", settings, se=0.0223)
    assert chosen.at_edge and chosen.tied == ["lr0.1"]
    assert choice_notes(chosen.at_edge, chosen.note, chosen.extended) == (
        "at the edge of the grid; one-SE rule, SE 2.2 points: the highest score, tied with lr0.1")
    assert extension(LR, LR, _points(LR["lr"]), list(scores.values()), {"lr": 2}) is None
    # the rule's choice below a highest score that two points share
    ruled = Selection("v", {"lr": 0.05}, {"lr0.05": 0.53, "lr0.1": 0.55, "lr0.2": 0.55}, "",
                      settings, best="lr0.1", se=0.0222)
    assert ruled.note == "one-SE rule, SE 2.2 points; highest: lr0.1, tied with lr0.2"
    # a rule that chose one of the tied points: it is a highest score, tied with the other
    upper = Selection("v", {"lr": 0.2}, {"lr0.05": 0.53, "lr0.1": 0.55, "lr0.2": 0.55}, "",
                      settings, best="lr0.1", se=0.0222)
    assert upper.tied == ["lr0.1"]
    assert upper.note == "one-SE rule, SE 2.2 points: the highest score, tied with lr0.1"
    assert Selection("v", {"lr": 0.1}, {"lr0.05": 0.5, "lr0.1": 0.6}, "", settings).note == ""


def test_the_score_line_names_once_what_variants_share():
    """The line under the hyperparameter table: fmnist-smallcnn-paper's as committed (each
    variant's own measure, no rule), and fmnist-smallcnn-mp's, whose three MAT-MP variants
    are judged by their generalist under the same rule: named together, the rule said once."""
    plain = "validation PGD-10 accuracy (last epoch, mean over {}), seed 0"
    assert score_line({"at": plain.format("the trained members"), "act": plain.format("robust"),
                       "mat": plain.format("the trained members"),
                       "mat-nat-online": plain.format("h2")}) == (
        f"Score: {plain.format('the trained members')}. For act: {plain.format('robust')}. "
        f"For mat-nat-online: {plain.format('h2')}.")
    rule = "; chosen by the one-standard-error rule: among ..., the lowest lr; the grid grows ..."
    criteria = {"at-max": plain.format("the trained members") + rule,
                "mat-mp-max": plain.format("generalist") + rule,
                "mat-mp-avg": plain.format("generalist") + rule,
                "mat-other": plain.format("generalist") + "; another rule",
                "at-avg": plain.format("the trained members") + rule}
    assert score_line(criteria) == (
        f"Score: {criteria['at-max']}. For mat-mp-max, mat-mp-avg: "
        f"{plain.format('generalist')}, by the same rule. For mat-other: {criteria['mat-other']}.")


@pytest.mark.parametrize("rule, message", [
    ("[lr]", "extend_grid maps a grid key to how many values its grid may gain"),
    ("{lr: 0}", "extend_grid.lr must be an integer >= 1"),
    ("{lr: 1.5}", "extend_grid.lr must be an integer >= 1"),
    ("{weight_decay: 1}", "extend_grid names 'weight_decay', which no grid sweeps"),
    ("{optim.momentum: 1}", "extend_grid grows a rate or a decay"),
])
def test_a_bad_extension_is_refused_before_anything_runs(tmp_path, capsys, rule, message):
    assert_edit_refused(_write_plan, AT_GRID, ("seeds: [0, 2]", f"extend_grid: {rule}\nseeds: [0, 2]"),
                        tmp_path, capsys, message)


def test_a_grid_of_non_positive_values_cannot_grow(tmp_path, capsys):
    text = AT_GRID.replace("lr: [0.02, 5e-2]", "weight_decay: [0.0, 5e-4]")
    assert_edit_refused(_write_plan, text, ("seeds: [0, 2]", "extend_grid: {weight_decay: 1}\nseeds: [0, 2]"),
                        tmp_path, capsys, "whose grid values are not all positive numbers")

"""The grid's choice: the highest validation score by default, or the one-standard-error rule
a plan declares (``within_one_se``): the preferred point among those within one binomial
standard error of the best score, on the number of validation images the runs recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mutualat.compare import Study, load_plan
from mutualat.compare.selection import Selection, choose, validation_images
from mutualat.compare.worker import run_train
from mutualat.errors import ConfigError

from test_compare import TINY_PLAN, _write_plan, assert_edit_refused

LRS = [{"lr": 0.05}, {"lr": 0.1}, {"lr": 0.2}]


def test_the_plain_maximum_and_the_one_se_rule_on_hand_made_scores():
    # fmnist-smallcnn-paper's MART grid at seed 0: 0.2 beat 0.1 by 0.6 points on 500 images
    scores = [0.500, 0.540, 0.546]
    se = math.sqrt(0.546 * 0.454 / 500)  # 2.23 points
    assert choose(LRS, scores, {}) == (2, None)
    assert choose(LRS, scores, {"lr": "lowest"}, 500) == (1, pytest.approx(se))
    assert choose(LRS, scores, {"lr": "highest"}, 500)[0] == 2
    # just outside one standard error is not a candidate, just inside is
    assert choose(LRS, [0.546 - se - 1e-4, 0.546 - se + 1e-4, 0.546], {"lr": "lowest"}, 500)[0] == 1
    # a diverged point (-inf) never is, nor a point of the lowest rate far below the best
    assert choose(LRS, [float("-inf"), 0.30, 0.546], {"lr": "lowest"}, 500)[0] == 2
    # more images, a smaller standard error: the same 0.6 points now separate the two
    assert choose(LRS, scores, {"lr": "lowest"}, 100_000)[0] == 2
    # a two-key grid: the rule orders by its key, ties in it by the higher score
    grid = [{"lr": 0.1, "alpha": 0.3}, {"lr": 0.1, "alpha": 0.6}, {"lr": 0.2, "alpha": 0.3}]
    assert choose(grid, [0.52, 0.53, 0.54], {"lr": "lowest"}, 500)[0] == 1
    # a key the variant's grid does not sweep is passed over: the plain maximum
    assert choose([{"alpha": 0.3}, {"alpha": 0.6}], [0.50, 0.51], {"lr": "lowest"}, 500) == (1, None)
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


@pytest.mark.parametrize("rule, message", [
    ("lowest", "within_one_se maps a grid key to lowest or highest"),
    ("{lr: middle}", "within_one_se.lr must be lowest or highest"),
    ("{weight_decay: lowest}", "within_one_se names 'weight_decay', which no grid sweeps"),
])
def test_a_bad_rule_is_refused_before_anything_runs(tmp_path, capsys, rule, message):
    assert_edit_refused(_write_plan, TINY_PLAN, ("seeds: [0, 2]", f"within_one_se: {rule}\nseeds: [0, 2]"),
                        tmp_path, capsys, message)


def _set_last_score(run_dir: Path, score: float, drop_n_val: bool = False) -> None:
    """Overwrite the last epoch's validation PGD accuracy of ``run_dir`` (a made-up grid
    result on top of a real run); ``drop_n_val``: as a run from before ``n_val`` was kept."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    epochs[-1]["val_pgd/model"] = score
    for r in epochs if drop_n_val else []:
        r.pop("n_val")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_plan_with_the_rule_chooses_on_its_runs_validation_images(tmp_path):
    """The tiny plan's AT grid trained for real (64 validation images, recorded by each epoch),
    its last scores then set by hand: 0.50 against 0.55 is within one standard error of 64
    images (6.2 points), so the rule takes the lower rate where the plain maximum does not."""
    text = (TINY_PLAN.replace("  mat: {method.name: mat, models: [tinycnn, tinycnn], "
                              "method.params.alpha_warmup: 0.5}\n", "")
            .replace("control: {variant: at, members: 2}\n", "")
            .replace("optim.epochs: 2", "optim.epochs: 1"))
    plain = load_plan(_write_plan(tmp_path / "plain", text))
    ruled = load_plan(_write_plan(tmp_path / "ruled", text.replace(
        "seeds: [0, 2]", "within_one_se: {lr: lowest}\nseeds: [0, 2]")))
    assert ruled.within_one_se == {"lr": "lowest"} and plain.within_one_se == {}
    study = Study(plain, tmp_path / "out")
    for task in study.tasks()[0]:
        if task.priority == (0, 0):
            run_train(task.spec)
    low, high = (study.run_dir("at", {"lr": lr}, 0) for lr in (0.02, 0.05))
    assert validation_images(low) == 64
    _set_last_score(low, 0.50)
    _set_last_score(high, 0.55)
    assert study.selection("at").chosen == {"lr": 0.05}
    chosen = Study(ruled, tmp_path / "out").selection("at")
    assert chosen.chosen == {"lr": 0.02} and chosen.best == "lr0.05"
    assert chosen.se == pytest.approx(math.sqrt(0.55 * 0.45 / 64))
    assert "one-standard-error rule" in chosen.criterion and "lowest lr" in chosen.criterion
    # outside one standard error the best stays chosen; a run without n_val in its records
    # (before 2026-12-02) is counted by its config's cap on validation images
    _set_last_score(low, 0.48, drop_n_val=True)
    assert validation_images(low) == 64
    chosen = Study(ruled, tmp_path / "out").selection("at")
    assert chosen.chosen == {"lr": 0.05} and chosen.best is None

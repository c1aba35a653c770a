"""A comparison of multiple-perturbation methods (MAT-MP against AT-MAX, the paper's Table 5)
on a tiny plan: the generalist alone is selected, evaluated and reported, and the report has
a column per threat type with R_avg and R_worst."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from mutualat.compare import Study, load_plan
from mutualat.compare.curves import epoch_curves
from mutualat.compare.per_type import after_pgd_lines, pgd_alone_lines
from mutualat.compare.provenance import plan_settings, suite_record
from mutualat.compare.report import markdown
from mutualat.compare.stats import percent_mean_std
from mutualat.evaluation import load_suite
from mutualat.train.logger import read_metrics

from conftest import REPO, script_module
from test_compare import TINY_SET, _compare, assert_edit_refused
from test_compare_sections import TABLE_SUITE

# l-inf FGSM and l2 PGD-2, cumulative as the Table 5 suites.
MP_SUITE = TABLE_SUITE.replace("per_attack: standalone", "per_attack: cumulative")

THREATS = "[{norm: linf, eps: 0.1, steps: 1}, {norm: l2, eps: 1.0, steps: 1}]"

MP_PLAN = """\
name: tinymp
description: MAT-MP against AT-MAX on a tiny plan.
""" + TINY_SET + f"""\
variants:
  at-max: {{method.name: at-max, method.params.threats: {THREATS}}}
  mat-mp: {{method.name: mat-mp, models: [tinycnn, tinycnn, tinycnn], method.params.generalist: max,
           method.params.threats: {THREATS}, select_on: [generalist]}}
grid:
  lr: [0.05]
seeds: [0, 3]
checkpoints: [last]
baseline: at-max
control: {{variant: at-max, members: 2}}
suite: mp-suite.yaml
eval: {{n: 24, batch_size: 24, checks: false, members: all, ensembles: [last]}}
"""


def _write(folder: Path, text: str = MP_PLAN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mp-suite.yaml").write_text(MP_SUITE)
    (folder / "plan.yaml").write_text(text)
    return folder / "plan.yaml"


@pytest.mark.parametrize("edit, message", [
    # Another method than the base's starts from its defaults: the paper's CIFAR-10 threats.
    ((f"at-max, method.params.threats: {THREATS}}}", "at-max}"),
     r"variant at-max \(lr0.05\) trains against linf eps 0.03, which suite 'tiny-table' does not evaluate"),
    (("{norm: l2, eps: 1.0, steps: 1}]", "{norm: l2, eps: 0.5, steps: 1}]"),
     "trains against l2 eps 0.5, which suite 'tiny-table' does not evaluate .*linf 0.1, l2 1"),
])
def test_a_variant_trained_against_a_threat_the_suite_lacks_is_refused(tmp_path, capsys, edit,
                                                                      message):
    assert_edit_refused(_write, MP_PLAN, edit, tmp_path, capsys, message)


@pytest.fixture(scope="module")
def mp_study(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare-mp")
    plan, out = _write(root / "plan"), root / "out"
    process = _compare(plan, out)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return plan, out


def test_only_the_generalist_is_evaluated_and_reported(mp_study):
    _, out = mp_study
    data = json.loads((out / "comparison.json").read_text())
    rows = {r["row"]: r for r in data["rows"]}
    # No ensemble of a generalist with its specialists; the control is the AT-MAX pair's.
    assert set(rows) == {"at-max", "mat-mp (member generalist)", "at-max ×2 ensemble (control)"}
    generalist, control = rows["mat-mp (member generalist)"], rows["at-max ×2 ensemble (control)"]
    assert generalist["paired_control"]["r_worst"]["differences"] == pytest.approx(
        [generalist["seeds"][s]["r_worst"] - control["seeds"][s]["r_worst"] for s in generalist["seeds"]])
    assert "paired_control" not in rows["at-max"]
    summary = json.loads(next(out.glob("evals/mat-mp/*/seed0/last/summary.json")).read_text())
    assert list(summary["models"]) == ["generalist"]
    assert "generalist" in data["selection"]["mat-mp"]["criterion"]


def test_the_report_has_a_column_per_threat_type_and_r_avg(mp_study):
    plan, out = mp_study
    data = json.loads((out / "comparison.json").read_text())
    row = next(r for r in data["rows"] if r["variant"] == "mat-mp")
    per_seed = [json.loads(p.read_text())["models"]["generalist"]
                for p in sorted(out.glob("evals/mat-mp/*/seed*/last/summary.json"))]
    assert len(per_seed) == 2
    for threat in ("linf", "l2"):
        values = [m["threats"][threat] for m in per_seed]
        assert row["mean_std"][f"threat:{threat}"][0] == pytest.approx(statistics.mean(values))
    for model in per_seed:
        assert model["r_avg"] == pytest.approx((model["threats"]["linf"] + model["threats"]["l2"]) / 2)
    assert row["mean_std"]["r_avg"][0] == pytest.approx(statistics.mean(m["r_avg"] for m in per_seed))
    baseline = next(r for r in data["rows"] if r["variant"] == "at-max")
    assert row["paired"]["r_avg"]["differences"] == pytest.approx(
        [row["seeds"][s]["r_avg"] - baseline["seeds"][s]["r_avg"] for s in row["seeds"]])
    text = (out / "comparison.md").read_text()
    assert ("| model | clean | linf attacks | l2 attacks | R_avg | R_worst | Δ clean | Δ R_avg "
            "| Δ R_worst |") in text
    assert "| model | Δ clean vs control | Δ R_avg vs control | Δ R_worst vs control |" in text
    assert "| mat-mp (member generalist) | " in text.split("vs control")[-1]  # paired with the control
    # One attack per type in the tiny suite (and l-inf's is FGSM): no PGD-alone table.
    assert "its PGD alone" not in text


def test_each_types_pgd_alone_is_set_beside_the_type(mp_study):
    """The tiny study's JSON with a second l2 attack in its suite and a best-epoch copy of
    every row: the last epoch's table sets l2's PGD alone beside the type and their per-seed
    difference, and leaves out l-inf, whose first attack is FGSM."""
    _, out = mp_study
    data = json.loads((out / "comparison.json").read_text())
    suite = data["plan"]["suite"]
    assert [(a["name"], a["threat"]) for a in suite["attacks"]] == [("fgsm", "linf"), ("pgd", "l2")]
    suite["attacks"].append({"id": "ddn", "name": "ddn", "threat": "l2"})
    last = [r for r in data["rows"] if r["checkpoint"] == "last"]
    for seed in (s for r in last for s in r["seeds"].values()):
        seed["attacks"]["ddn"] = seed["threats"]["l2"]  # breaking nothing PGD left
    data["rows"] += [{**r, "row": r["row"] + " (best copy)", "checkpoint": "best"} for r in last]
    lines = pgd_alone_lines(data, "last")
    pgd = suite["attacks"][1]["id"]
    assert lines[2] == f"| model | l2: {pgd} alone | l2: all 2 attacks | l2: missed |"
    rows = {line.split(" | ")[0][2:]: line for line in lines[4:-1]}
    assert set(rows) == {r["row"] for r in last}  # the best-epoch copies are not this table's
    for row in last:
        missed = [s["attacks"][pgd] - s["threats"]["l2"] for s in row["seeds"].values()]
        assert rows[row["row"]] == (
            f"| {row['row']} | {percent_mean_std(row['mean_std'][pgd])} | "
            f"{percent_mean_std(row['mean_std']['threat:l2'])} | "
            f"{100 * statistics.mean(missed):.2f} ± {100 * statistics.stdev(missed):.2f} |")
    text = markdown(data)  # and in the report made from the JSON, with what DDN added
    assert "| model | l2: " in text and "Broke no example of any model on any seed: ddn." in text


AFTER_PGD_SUITE = [("pgd-linf", "pgd", "linf"), ("pgd-l2", "pgd", "l2"),
                   ("apgd-t-linf", "autoattack", "linf"), ("fgsm", "fgsm", "linf"), ("ddn", "ddn", "l2")]


def _seed(*accuracies):
    """One seed's cumulative accuracies, in AFTER_PGD_SUITE's order."""
    return {"clean": 0.8, "attacks": dict(zip([i for i, _, _ in AFTER_PGD_SUITE], accuracies))}


def test_what_each_attack_after_pgd_broke_is_read_from_the_cumulative_columns():
    """Hand-made numbers, the types' attacks interleaved in the suite: each attack's fall is
    from the accuracy its own type's attack before it left (apgd-t-linf from pgd-linf, not
    from pgd-l2, which sits between them), per seed, then mean ± std; an attack that broke
    nothing anywhere is named, not given a column; another checkpoint's rows are not read; a
    standalone suite gets no table (its columns do not say what an attack added)."""
    suite = {"threats": {"linf": {}, "l2": {}}, "per_attack": "cumulative",
             "attacks": [{"id": i, "name": n, "threat": t} for i, n, t in AFTER_PGD_SUITE]}
    a = {"0": _seed(0.50, 0.70, 0.46, 0.46, 0.70), "1": _seed(0.52, 0.71, 0.50, 0.50, 0.71)}
    b = {"0": _seed(0.40, 0.60, 0.40, 0.40, 0.58), "1": _seed(0.40, 0.60, 0.40, 0.40, 0.60)}
    broken_elsewhere = {"0": _seed(0.50, 0.70, 0.46, 0.0, 0.70)}  # FGSM breaks all, at "best"
    data = {"plan": {"suite": suite},
            "rows": [{"row": "a", "checkpoint": "last", "seeds": a},
                     {"row": "b", "checkpoint": "last", "seeds": b},
                     {"row": "a", "checkpoint": "best", "seeds": broken_elsewhere}]}
    lines = after_pgd_lines(data, "last")
    assert lines[2:] == [
        "| model | apgd-t-linf | ddn |", "|---|---|---|",
        "| a | 3.00 ± 1.41 | 0.00 ± 0.00 |",
        "| b | 0.00 ± 0.00 | 1.00 ± 1.41 |", "",
        "Broke no example of any model on any seed: fgsm.", ""]
    assert after_pgd_lines(data, "best")[2:5] == [
        "| model | apgd-t-linf | fgsm |", "|---|---|---|", "| a | 4.00 ± 0.00 | 46.00 ± 0.00 |"]
    suite["per_attack"] = "standalone"
    assert after_pgd_lines(data, "last") == []


def test_the_curves_follow_the_generalist(mp_study):
    plan, out = mp_study
    study = Study(load_plan(plan), out)
    run = study.run_dir("mat-mp", study.selection("mat-mp").chosen, 0)
    epochs = [r for r in read_metrics(run) if r["event"] == "epoch"]
    curves = epoch_curves(run, ["generalist"])
    assert curves["val_pgd"] == [r["val_pgd/generalist"] for r in epochs]
    assert epoch_curves(run)["val_pgd"] != curves["val_pgd"]  # the specialists differ


def test_the_settings_say_which_members_are_evaluated_alone(tmp_path):
    """The settings table's row names the variants judged by some members alone, whose
    other members are never evaluated (a review found "all" there for MAT-MP)."""
    plan = load_plan(_write(tmp_path))
    assert plan_settings(plan)["cohort members evaluated alone"] == "all; mat-mp: generalist"
    first = load_plan(_write(tmp_path / "first", MP_PLAN.replace("members: all", "members: first")))
    assert plan_settings(first)["cohort members evaluated alone"] == "h1 only; mat-mp: generalist"
    # A variant a figure shows whole is evaluated whole, its select_on notwithstanding:
    # mat-nat-online (select_on h2, Fig. 2's scenario) is not named, ACT is.
    paper = load_plan(REPO / "configs" / "plans" / "fmnist-smallcnn-paper.yaml")
    assert paper.select_on.get("mat-nat-online") and "mat-nat-online" in paper.figures.scenarios.values()
    assert plan_settings(paper)["cohort members evaluated alone"] == "all; act: robust"


def test_the_settings_and_suite_say_what_the_runs_had_not_a_default_to_look_up():
    """An audit of the Table 5 section found "the dataset's default" on both sides of the
    augmentation row (none on Fashion-MNIST, crop and flip on CIFAR-10) and a suite line
    whose prose, corrected after the evaluations ran, the report still took from them."""
    plan = load_plan(REPO / "configs" / "plans" / "fmnist-smallcnn-mp.yaml")
    assert plan_settings(plan)["augmentation"] == "none (the dataset's default)"
    assert plan_settings(plan.twin)["augmentation"] == "crop_flip (the dataset's default)"
    current = load_suite(plan.suite).to_dict()
    recorded = {**current, "description": "the prose as it was when the evaluations ran"}
    assert suite_record(plan, recorded) == current
    other = {**recorded, "attacks": recorded["attacks"][:-1]}  # another suite: as recorded
    assert suite_record(plan, other) == other


def test_the_apgd_targets_gap_attacks_every_threat_type_of_a_table5_suite(mp_study, tmp_path, capsys):
    """scripts/apgd_targets_gap.py on a multiple-perturbation study: APGD-T at each l-inf /
    l2 threat, each on every example the whole suite left; the R_worst drop counts an example
    broken by either type once."""
    _, out = mp_study
    gap = script_module("apgd_targets_gap")
    assert gap.main([str(out), "--targets", "2", "--out", str(tmp_path / "gap"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["variant"], r["model"]) for r in rows} >= {("mat-mp", "generalist"), ("at-max", "model")}
    assert any(r["attacked"] for r in rows)
    for r in rows:
        by_type = r["broken_by_type"]
        assert set(by_type) == {"linf", "l2"}
        assert max(by_type.values()) <= r["broken"] <= min(sum(by_type.values()), r["attacked"])
        assert r["r_worst_stronger"] == pytest.approx(r["r_worst"] - r["broken"] / r["n"])
        if r["attacked"]:
            folder = tmp_path / "gap" / r["variant"] / r["setting"] / f"seed{r['seed']}" / "last" / r["model"]
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["per_attack"] == "standalone" and summary["n_examples"] == r["attacked"]
            assert [a["id"] for a in summary["suite"]["attacks"]] == ["apgd-t2-linf", "apgd-t2-l2"]
            assert {a: m["broken"] for a, m in summary["models"][r["model"]]["attacks"].items()} == {
                f"apgd-t2-{t}": k for t, k in by_type.items()}
            correct = np.load(folder / summary["models"][r["model"]]["correct_file"])
            survived = correct["clean"] & (correct["outcome"] == 1).all(axis=1)
            assert r["broken"] == int((~survived).sum())  # an example broken at both types: once
    assert gap.main([str(out), "--targets", "2", "--out", str(tmp_path / "gap")]) == 0
    assert "| of them, by type |" in capsys.readouterr().out


def test_square_attacks_what_the_suite_left_at_l_inf_and_l2(mp_study, tmp_path, capsys):
    """--attack square: AutoAttack's gradient-free Square at the suite's l-inf and l2 threats
    on the examples the whole suite left (no CPU suite runs a gradient-free l-inf attack)."""
    _, out = mp_study
    gap = script_module("apgd_targets_gap")
    assert gap.main([str(out), "--attack", "square", "--variants", "mat-mp", "--seeds", "0",
                     "--limit", "2", "--out", str(tmp_path / "square"), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["variant"], row["model"]) == ("mat-mp", "generalist")
    assert set(row["broken_by_type"]) == {"linf", "l2"}
    assert row["attacked"] == min(2, row["surviving"]) > 0  # the tiny study leaves it some
    if row["attacked"]:
        folder = tmp_path / "square" / "mat-mp" / row["setting"] / "seed0" / "last" / "generalist"
        summary = json.loads((folder / "summary.json").read_text())
        assert [(a["id"], a["params"]["attacks"]) for a in summary["suite"]["attacks"]] == [
            ("square-linf", ["square"]), ("square-l2", ["square"])]
    assert gap.main([str(out), "--attack", "square", "--targets", "3"]) == 2
    assert "Square has no target classes" in capsys.readouterr().err


def test_paired_differences_pair_each_threat_type_with_any_row(mp_study, capsys):
    """scripts/paired_differences.py on a Table 5 study: the per-type columns (linf, l2) and
    R_avg / R_worst of each row against the MAT-MP generalist (the write-up pairs each
    MAT-MP variant with its own AT counterpart this way), seed by seed from the report."""
    _, out = mp_study
    pairs = script_module("paired_differences")
    against = "mat-mp (member generalist)"
    assert pairs.main([str(out), "--against", against, "--checkpoints", "last",
                       "--columns", "linf", "l2", "r_avg", "r_worst", "--json"]) == 0
    entries = {e["row"]: e for e in json.loads(capsys.readouterr().out)}
    rows = {r["row"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]
            if r["checkpoint"] == "last"}
    assert set(entries) == set(rows) - {against}
    base = rows[against]["seeds"]
    for name, entry in entries.items():
        seeds = rows[name]["seeds"]
        assert entry["seeds"] == [0, 3]
        for column in ("linf", "l2"):
            assert entry[column]["differences"] == pytest.approx(
                [seeds[s]["threats"][column] - base[s]["threats"][column] for s in ("0", "3")])
        for column in ("r_avg", "r_worst"):
            assert entry[column]["differences"] == pytest.approx(
                [seeds[s][column] - base[s][column] for s in ("0", "3")])

"""A plan's tables, transfer matrix and figures beyond the main comparison, and variants that
learn from another variant's trained model (a teacher): checked at load, waiting on the
teacher, end to end on a tiny plan whose rerun reuses everything and writes the same section."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer
import torch

from mutualat.compare import Study, load_plan, progress, provenance, report, sections
from mutualat.compare.plan import setting_label
from mutualat.compare.records import read_summary
from mutualat.compare.report import markdown
from mutualat.compare.selection import Selection, validation_score
from mutualat.compare.worker import run_train
from mutualat.config import load_config
from mutualat.errors import ConfigError
from mutualat.evaluation import load_suite
from mutualat.models import count_flops, load_model
from mutualat.report import paper_plots
from mutualat.train.logger import read_metrics

from test_compare import TINY_SET, TINY_SUITE, _compare, assert_edit_refused

TABLE_SUITE = """\
name: tiny-table
description: |
  FGSM at l-inf 0.1 and a 2-step
  l2 PGD.
per_attack: standalone
threats:
  linf: {eps: 0.1}
  l2: {eps: 1.0}
attacks:
  - {id: fgsm, name: fgsm, threat: linf}
  - {id: pgd-l2, name: pgd, threat: l2, params: {steps: 2}}
"""

PLAN = """\
name: tinypaper
description: The paper's other tables on a tiny plan.
""" + TINY_SET + """\
  amp: "off"
  channels_last: "on"
variants:
  at: {method.name: at, method.params.loss: lc}
  mat: {method.name: mat, models: [tinycnn, tinycnn]}
  mat-offline: {method.name: mat, models: [tinycnn, tinycnn], teacher: at}
grid:
  lr: [0.05]
grids:
  mat: {lr: [0.05], method.params.alpha: [0.3, 0.6]}
seeds: [0, 2]
checkpoints: [last]
baseline: at
suite: tiny-suite.yaml
eval: {n: 24, batch_size: 24, checks: false, members: all, ensembles: [last]}
tables:
  - {name: t2, title: "Table 2 (tiny)", suite: table-suite.yaml, variants: [at, mat], n: 16}
transfer: {sources: [at, mat], targets: [mat], n: 16, steps: 2, step_size: 0.05}
figures:
  scenarios: {rob-rob-online: mat, rob-rob-offline: mat-offline}
  scenarios_attack: pgd-5
  alpha: [mat]
paper_scale:
  plan: twin/plan.yaml
  smaller:
    - >-
      tinycnn on 128 images for 2 epochs
      instead of the paper's setting: seconds per run.
"""

#: The tiny plan's full-scale twin, in a folder beside the plan's (found from a folder above).
TWIN = """name: tinytwin
""" + TINY_SET.replace("optim.epochs: 2", "optim.epochs: 3") + """variants:
  at: {method.name: at, method.params.loss: lc}
grid:
  lr: [0.05]
seeds: [0, 10, 20]
baseline: at
suite: ../plan/tiny-suite.yaml
"""


def _write(folder: Path, text: str = PLAN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-suite.yaml").write_text(TINY_SUITE + "description: Two tiny attacks.\n")
    (folder / "table-suite.yaml").write_text(TABLE_SUITE)
    (folder / "plan.yaml").write_text(text)
    (folder.parent / "twin").mkdir(exist_ok=True)
    (folder.parent / "twin" / "plan.yaml").write_text(TWIN.replace("../plan/", f"../{folder.name}/"))
    return folder / "plan.yaml"


@pytest.mark.parametrize("edit, message", [
    (("teacher: at}", "teacher: atx}"), "teacher names 'atx'"),
    (("teacher: at}", "teacher: mat}"), "teacher 'mat' must train one model"),
    (("variants: [at, mat], n: 16", "variants: [at, nope], n: 16"), "names 'nope', which is not a variant"),
    (("n: 16}", "n: 16, checkpoint: best}"), "checkpoint must be one of the plan's checkpoints"),
    (("steps: 2, step_size", "stepz: 2, step_size"), "transfer: unknown key"),
    (("scenarios_attack: pgd-5", "scenarios_attack: cw"), "scenarios_attack must be r_worst or"),
    (("table-suite.yaml, variants", "no-such-suite, variants"), "no-such-suite"),
    (("teacher: at}", "teacher: at, select_on: h2}"), "select_on must be a non-empty list"),
    (("teacher: at}", "teacher: at, select_on: [h1]}"), "select_on names 'h1', not one of its trained"),
    (("teacher: at}", "teacher: [at]}"), "teacher names \\['at'\\]"),
    (("  mat: {method.name: mat, models: [tinycnn, tinycnn]}",
      "  mat: {method.name: mat, models: [tinycnn, tinycnn]}\n  at2: {method.name: at, teacher: at}"),
     "at2 has a teacher, which takes its first model"),
    (("variants: [at, mat], n: 16", "variants: [at, [mat]], n: 16"), "non-empty list of variant names"),
    (("rob-rob-offline: mat-offline}", "rob-rob-offline: [mat-offline]}"), "names \\['mat-offline'\\]"),
    (("  alpha: [mat]", "  alpha: [at]"), "figures.alpha names at, whose grid does not sweep"),
    (("members: all", "members: first"), "figures.scenarios shows every member"),
    (("plan: twin/plan.yaml", "plan: nowhere/plan.yaml"), "nowhere/plan.yaml is neither beside the plan"),
    (("plan: twin/plan.yaml", "plan: /twin/plan.yaml"), "paper_scale.plan must be a path down from"),
    (("plan: twin/plan.yaml", "plan: ../twin/plan.yaml"), "no '..'"),
    (("plan: twin/plan.yaml", "plan: table-suite.yaml"), "table-suite.yaml does not load: .*unknown key"),
    (("plan: twin/plan.yaml", "plan: plan.yaml"), "has a paper_scale of its own"),  # itself
    (("  smaller:\n", "  smallr:\n"), "paper_scale: unknown key\\(s\\) smallr"),
    (("seconds per run.\n", "seconds per run.\n    - 3\n"), "smaller must list what the plan makes smaller"),
])
def test_a_bad_section_or_teacher_is_refused_at_load(tmp_path, capsys, edit, message):
    assert_edit_refused(_write, PLAN, edit, tmp_path, capsys, message)


def test_scenarios_need_the_last_checkpoint(tmp_path):
    text = PLAN.replace("checkpoints: [last]", "checkpoints: [best]").replace(
        "ensembles: [last]", "ensembles: [best]").replace("n: 16}", "n: 16, checkpoint: best}", 1)
    with pytest.raises(ConfigError, match="scenarios plots the last epoch"):
        load_plan(_write(tmp_path / "plan", text))


def test_a_teacher_chain_is_refused(tmp_path):
    text = PLAN.replace("  mat-offline:", "  ard: {method.name: ard, models: [tinycnn, tinycnn], "
                        "teacher: mat-offline}\n  mat-offline:")
    with pytest.raises(Exception, match="has a teacher itself"):
        load_plan(_write(tmp_path / "plan", text))


def test_a_student_waits_for_its_teacher_and_loads_it_frozen(tmp_path):
    """ARD and the offline scenario start from the teacher variant's chosen model of the same
    seed; until it exists their runs are not ready (and the plan still loads: ARD's rule that
    models.0 is a frozen, trained model holds in every config the plan builds)."""
    text = PLAN.replace("  mat-offline:", "  ard: {method.name: ard, models: [tinycnn, tinycnn], "
                        "teacher: at}\n  mat-offline:")
    plan = load_plan(_write(tmp_path / "plan", text))
    study = Study(plan, tmp_path / "out")
    ready, waiting = sections.tasks(study)
    assert {t.key for t in ready} == {"train/at/lr0.05/seed0", "train/mat/lr0.05-alpha0.3/seed0",
                                      "train/mat/lr0.05-alpha0.6/seed0"}
    # Everything else waits: the students' grids on their teacher, each variant's second seed
    # on its grid's choice, the evaluations, tables and transfer matrices on their runs.
    assert sorted(waiting) == [
        "eval/ard/seed0", "eval/ard/seed2", "eval/at/seed0", "eval/at/seed2",
        "eval/mat-offline/seed0", "eval/mat-offline/seed2", "eval/mat/seed0", "eval/mat/seed2",
        "table/t2/at/seed0", "table/t2/at/seed2", "table/t2/mat/seed0", "table/t2/mat/seed2",
        "train/ard/lr0.05/seed0", "train/ard/lr0.05/seed2", "train/at/lr0.05/seed2",
        "train/mat-offline/lr0.05/seed0", "train/mat-offline/lr0.05/seed2",
        "train/mat/(chosen)/seed2", "transfer/seed0", "transfer/seed2"]  # a one-point grid's run is known
    assert study.config("ard", {"lr": 0.05}, 0) is None  # the teacher has not run
    cfg = plan.config("ard", {"lr": 0.05}, 2, teacher_file="/runs/at/seed2/models/model.safetensors")
    assert cfg.models[0].frozen and cfg.models[0].init.endswith("seed2/models/model.safetensors")
    assert not cfg.models[1].frozen and cfg.models[1].init is None


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("sections")
    plan = _write(root / "plan")
    out = root / "out"
    document = root / "docs" / "RESULTS.md"
    document.parent.mkdir()
    document.write_text("# Results\n")
    run = _compare(plan, out, "--write", str(document))
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output
    return plan, out, document


def test_the_sections_equal_the_evaluations_they_read(paper_study):
    plan_path, out, _ = paper_study
    plan = load_plan(plan_path)
    study = Study(plan, out)
    data = json.loads((out / "comparison.json").read_text())
    extras = data["extras"]
    # The table: one row per member of a cohort, mean ± std of the per-seed summaries.
    (table,) = extras["tables"]
    assert [r["row"] for r in table["rows"]] == ["at", "mat h1", "mat h2"]
    assert table["columns"] == ["clean", "fgsm", "pgd-l2", "r_worst"]
    chosen = study.selection("mat").chosen
    h2 = [json.loads((sections.table_dir(study, plan.tables[0], "mat", chosen, s) / "summary.json").read_text())
          ["models"]["h2"] for s in plan.seeds]
    row = table["rows"][2]
    assert row["mean_std"]["pgd-l2"][0] == pytest.approx(np.mean([m["attacks"]["pgd-l2"]["accuracy"] for m in h2]))
    assert row["mean_std"]["clean"][1] == pytest.approx(np.std([m["clean"] for m in h2], ddof=1))
    assert all(m["n_examples"] == 16 for m in [json.loads(p.read_text()) for p in
                                               out.glob("tables/t2/*/*/seed*/last/summary.json")])
    text = (out / "comparison.md").read_text()
    assert f"| mat h2 | {100 * row['mean_std']['clean'][0]:.2f} ± {100 * row['mean_std']['clean'][1]:.2f} |" in text
    # Which attacks the table ran, in the words of the suite it ran (e.g. which C&W).
    assert "Suite `tiny-table`: FGSM at l-inf 0.1 and a 2-step l2 PGD. On 16 test images, " in text
    # The transfer matrix: sources at and the MAT members, targets the MAT members; where a
    # member is its own source the entry is white-box, and the masking check compares the
    # black-box entries of its column with it.
    transfer = extras["transfer"]
    assert transfer["sources"] == ["at", "mat-h1", "mat-h2"] and transfer["targets"] == ["mat-h1", "mat-h2"]
    files = sorted(out.glob("transfer/seed*/transfer.json"))
    assert len(files) == 2
    matrices = [json.loads(f.read_text()) for f in files]
    per_seed = [m["accuracy"]["at"]["mat-h1"] for m in matrices]
    assert transfer["accuracy"]["at"]["mat-h1"][0] == pytest.approx(np.mean(per_seed))
    for member in ("mat-h1", "mat-h2"):
        white = [m["white_box"][member] for m in matrices]
        assert white == [m["accuracy"][member][member] for m in matrices]
        cell = f"{100 * np.mean(white):.2f} ± {100 * np.std(white, ddof=1):.2f} (white-box)"
        assert cell in text
    assert text.count("(white-box)") == 2  # the diagonal only: h1 -> h2 is black-box
    warnings = sorted({w for m in matrices for w in m["warnings"]})
    masked = [(s, t) for m in matrices for t in m["targets"] for s in m["sources"]
              if s != t and m["accuracy"][s][t] < m["white_box"][t] - 0.01]
    assert bool(warnings) == bool(masked)
    verdict = "; ".join(warnings) if warnings else "no black-box attack beat the white-box one"
    assert f"Masking check: {verdict}" in text
    # The paper-scale twin and what the plan cut, as the plan states them, then both plans'
    # settings side by side, read from the plans.
    assert ("### Against the paper's setting\n\nThis comparison runs below the paper's scale. "
            "`twin/plan.yaml` is its full-scale twin, a plan for a GPU. What differs, and why:\n\n"
            "- tinycnn on 128 images for 2 epochs instead of the paper's setting: seconds per "
            "run.\n\n| setting | this plan | paper-scale twin `twin/plan.yaml` |") in text
    assert ("| epochs | 2, lr × 0.1 at 62.5, 75, 83.3 % of training | "
            "3, lr × 0.1 at 62.5, 75, 83.3 % of training |") in text
    assert "| seeds | 2 (0, 2) | 3 (0, 10, 20) |" in text
    assert ("| training arithmetic | fp32, channels_last; evaluation in fp32 | on CUDA bf16 "
            "autocast, channels_last, on a CPU fp32, contiguous (no trial); evaluation in fp32 |"
            ) in text  # the twin leaves both to the device; its runs are deterministic
    assert "| variants | at, mat, mat-offline | at |" in text
    assert "| tables; transfer | t2 (16 images, tiny-table); 16 images, PGD-2 | none; none |" in text
    assert "Suite `tiny`: Two tiny attacks." in text
    # What each variant trains, from its model files and metrics; the machines, from the
    # tasks' records and the evaluations, not from the machine that renders.
    models = data["models"]
    at_file = study.run_dir("at", {"lr": 0.05}, 0) / "models" / "model.safetensors"
    tiny = load_model(at_file)
    assert models["at"]["members"] == [{"role": "model", "architecture": "tinycnn",
                                        "parameters": sum(p.numel() for p in tiny.parameters()),
                                        "flops": count_flops(tiny, (1, 28, 28))}]
    assert [m["role"] for m in models["mat"]["members"]] == ["h1", "h2"]
    assert [m["role"] for m in models["mat-offline"]["members"]] == ["h2"]  # the frozen h1 is not trained
    assert models["mat-offline"]["frozen"] == "at" and models["mat"]["frozen"] is None
    flops = f"{models['at']['members'][0]['flops'] / 1e6:.1f}"
    assert (f"| mat | 2 × tinycnn | {models['at']['members'][0]['parameters']:,} | {flops} | "
            f"{models['mat']['img_per_s']:.0f} | {models['mat']['cpu_s_per_run'] / 60:.1f} |") in text
    assert "| mat-offline | tinycnn (and the frozen at model) | " in text
    rates = [e["img_per_s"] for s in plan.seeds for e in read_metrics(study.run_dir("at", {"lr": 0.05}, s))
             if e["event"] == "epoch"]
    assert models["at"]["img_per_s"] == pytest.approx(np.median(rates))
    records = {p.name: json.loads(p.read_text()) for p in (out / "tasks").glob("*.record.json")}
    assert models["at"]["cpu_s_per_run"] == pytest.approx(np.mean(
        [records[f"train__at__lr0.05__seed{s}.record.json"]["cpu_s"] for s in plan.seeds]))
    assert all(r["machines"][0]["threads"] == 1 for r in records.values())  # --jobs 2: one each
    summary = read_summary(study.eval_dir("at", {"lr": 0.05}, 0, "last"))
    assert data["machines"] == [{"cpu": summary["hardware"]["cpu"], "isa": summary["hardware"].get("isa"),
                                 "cpu_count": summary["hardware"]["cpu_count"], "gpus": []}]
    assert data["threads"] == [1] and data["torch"] == [summary["versions"]["torch"]]
    assert data["training_machines_recorded"]
    isa = f"{summary['hardware']['isa']}, " if "isa" in summary["hardware"] else ""
    assert (f"Ran on: {summary['hardware']['cpu']} ({isa}{summary['hardware']['cpu_count']} cores), "
            f"1 torch thread per task, torch {summary['versions']['torch']}.") in text
    # The offline scenario's student learned from the AT model of its own seed, frozen.
    for seed in plan.seeds:
        offline = study.run_dir("mat-offline", {"lr": 0.05}, seed)
        cfg = load_config(offline / "config.yaml")
        assert cfg.models[0].frozen
        assert cfg.models[0].init == str(study.run_dir("at", {"lr": 0.05}, seed) / "models" / "model.safetensors")
        assert list(json.loads((offline / "results.json").read_text())["models"]) == ["h2"]
    # The figures: the scenarios' points are the main table's rows, the alpha curve the grid.
    scenarios = extras["scenarios"]
    main = next(r for r in data["rows"] if r["variant"] == "mat-offline")
    # The offline scenario: its h1 is the frozen AT model (the at row), its h2 the student.
    offline = scenarios["rob-rob-offline"]["models"]
    assert list(offline) == ["h1 (frozen at)", "h2"]
    assert offline["h2"]["robust"] == pytest.approx(main["mean_std"]["pgd-5"])
    at_row = next(r for r in data["rows"] if r["variant"] == "at")
    assert offline["h1 (frozen at)"]["clean"] == pytest.approx(at_row["mean_std"]["clean"])
    assert list(scenarios["rob-rob-online"]["models"]) == ["h1", "h2"]
    # Fig. 3: one curve per value of the grid's other keys (here lr 0.05), the selection's
    # scores and beside them the validation clean accuracy of the same (last) epoch, mean
    # over the members; the chosen point marked in the section's table.
    alpha = extras["alpha"]["mat"]
    assert list(alpha["curves"]) == ["lr = 0.05"] and alpha["attack"] == "PGD-2"
    curve = alpha["curves"]["lr = 0.05"]
    assert curve["scores"] == {"0.3": data["selection"]["mat"]["scores"]["lr0.05-alpha0.3"],
                               "0.6": data["selection"]["mat"]["scores"]["lr0.05-alpha0.6"]}
    for a in ("0.3", "0.6"):
        last = [r for r in read_metrics(study.run_dir("mat", {"lr": 0.05, "method.params.alpha": float(a)}, 0))
                if r["event"] == "epoch"][-1]
        assert curve["clean"][a] == pytest.approx((last["val_clean/h1"] + last["val_clean/h2"]) / 2)
    chosen = str(data["selection"]["mat"]["chosen"]["method.params.alpha"])
    assert alpha["chosen"] == {"alpha": chosen, "curve": "lr = 0.05"}
    assert ("| validation PGD-2, lr = 0.05 | " + " | ".join(
        f"{100 * curve['scores'][a]:.1f}" + (" (chosen)" if a == chosen else "") for a in ("0.3", "0.6"))
        + " |") in text
    assert ("| validation clean, lr = 0.05 | "
            + " | ".join(f"{100 * curve['clean'][a]:.1f}" for a in ("0.3", "0.6")) + " |") in text
    for figure in ("tinypaper-scenarios.png", "tinypaper-alpha-mat.png", "curves.png"):
        assert (out / figure).stat().st_size > 1000, figure


def test_a_rerun_reuses_every_task_and_writes_the_same_section(paper_study, tmp_path):
    plan, out, document = paper_study
    first = document.read_text()
    for name in ("tinypaper-scenarios.png", "tinypaper-alpha-mat.png", "tinypaper-curves.png"):
        assert (document.parent / "figures" / name).is_file()
    again = _compare(plan, out, "--write", str(document))
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert "start " not in output
    assert document.read_text() == first
    data = json.loads((out / "comparison.json").read_text())
    assert markdown(data, "figures/").split("\n", 1)[1] in first
    assert "![alpha](figures/tinypaper-alpha-mat.png)" in first


@pytest.mark.parametrize("description", [None, "", "   "])
def test_a_table_whose_suite_has_no_description_names_the_suite_alone(description):
    table = {"name": "t", "title": "T", "checkpoint": "last", "suite": "s", "per_attack": "standalone",
             "n": 8, "columns": ["clean", "r_worst"],
             "rows": [{"row": "at", "mean_std": {"clean": (0.5, 0.0), "r_worst": (0.25, 0.0)}}]}
    if description is not None:
        table["suite_description"] = " ".join(description.split())
    lines = sections.markdown({"tables": [table], "transfer": None, "scenarios": {}, "alpha": {}}, "p")
    assert any(line.startswith("Suite `s` on 8 test images, last-epoch models") for line in lines)


def test_the_masking_verdict_follows_the_transfer_warnings(paper_study):
    _, out, _ = paper_study
    extras = json.loads((out / "comparison.json").read_text())["extras"]
    warning = "mat-h1: the black-box attack transferred from at (50.0%) is stronger than the white-box"
    extras["transfer"]["warnings"] = [warning]
    assert f"Masking check: {warning}." in sections.markdown(extras, "tinypaper")
    extras["transfer"]["sources"] = ["at"]  # no source is a target: nothing to compare with
    assert "Masking check: none: no source is also a target" in "\n".join(
        sections.markdown(extras, "tinypaper"))


def test_the_alpha_figure_draws_one_curve_per_learning_rate(paper_study, tmp_path, monkeypatch):
    """A grid over alpha and the learning rate: one curve per rate (robust and clean rows, a
    line each in both panels), a diverged point named and left as a gap, and the chosen one
    marked on its own rate only."""
    plan_path, out, _ = paper_study
    study = Study(load_plan(plan_path), out)
    settings = {f"lr{lr}-alpha{a}": {"lr": lr, "method.params.alpha": a}
                for lr in (0.05, 0.1) for a in (0.3, 0.6)}
    scores = {"lr0.05-alpha0.3": 0.40, "lr0.05-alpha0.6": 0.45,
              "lr0.1-alpha0.3": float("-inf"), "lr0.1-alpha0.6": 0.50}
    sel = Selection("mat", settings["lr0.1-alpha0.6"], scores, "the criterion", settings)
    clean = {}  # run folder -> the clean accuracy its (patched) validation record gives

    def fake_clean(run_dir, criterion, select_on=None, metric="pgd"):
        assert metric == "clean" and criterion == study.plan.select
        return clean.setdefault(run_dir, 0.6 + 0.01 * len(clean))

    monkeypatch.setattr(sections, "validation_score", fake_clean)
    alpha = sections._alpha_curves(study, sel)
    assert list(alpha["curves"]) == ["lr = 0.05", "lr = 0.1"]
    assert alpha["curves"]["lr = 0.05"]["scores"] == {"0.3": 0.40, "0.6": 0.45}
    assert alpha["curves"]["lr = 0.1"]["scores"] == {"0.6": 0.50}
    assert alpha["curves"]["lr = 0.1"]["diverged"] == ["0.3"]
    assert alpha["curves"]["lr = 0.1"]["clean"] == {
        "0.6": clean[study.run_dir("mat", settings["lr0.1-alpha0.6"], study.plan.grid_seed)]}
    assert alpha["chosen"] == {"alpha": "0.6", "curve": "lr = 0.1"}
    text = "\n".join(sections._alpha_markdown("mat", alpha))
    assert "| | α 0.3 | α 0.6 |" in text
    assert "| validation PGD-2, lr = 0.05 | 40.0 | 45.0 |" in text
    assert "| validation PGD-2, lr = 0.1 | diverged | 50.0 (chosen) |" in text
    assert "| validation clean, lr = 0.1 | diverged | " in text
    # The PNG: two panels (robust, clean) with a line per rate, the chosen point ringed, the
    # diverged point a gap marked with an x.
    figures = []
    monkeypatch.setattr(paper_plots, "_save", lambda fig, path: figures.append(fig) or path)
    sections.plot({"scenarios": {}, "alpha": {"mat": alpha}}, tmp_path, "tiny")
    (fig,) = figures
    robust, clean_axis = fig.axes
    assert robust.get_ylabel() == "validation PGD-2 (%)" and clean_axis.get_ylabel() == "validation clean (%)"
    labels = [line.get_label() for line in robust.get_lines()]
    assert {"lr = 0.05", "lr = 0.1", "chosen", "diverged"} <= set(labels)
    ring = next(line for line in robust.get_lines() if line.get_label() == "chosen")
    assert list(ring.get_xdata()) == [0.6] and list(ring.get_ydata()) == [50.0]
    gap = next(line for line in robust.get_lines() if line.get_label() == "diverged")
    assert list(gap.get_xdata()) == [0.3]
    rate = next(line for line in robust.get_lines() if line.get_label() == "lr = 0.1")
    assert np.isnan(rate.get_ydata()[0]) and rate.get_ydata()[1] == 50.0
    assert {line.get_label() for line in clean_axis.get_lines()} >= {"lr = 0.05", "lr = 0.1"}


def test_the_scenarios_figure_shows_each_models_mean_and_spread(paper_study, tmp_path, monkeypatch):
    """Fig. 2: a clean and a robust bar per scenario model, at the mean over seeds, with an
    error bar of one std over seeds, as the section's table gives them."""
    _, out, _ = paper_study
    data = json.loads((out / "comparison.json").read_text())["extras"]
    figures = []
    monkeypatch.setattr(paper_plots, "_save", lambda fig, path: figures.append(fig) or path)
    sections.plot({"scenarios": data["scenarios"], "alpha": {}}, tmp_path, "tiny")
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_ylabel() == "test accuracy (%), mean ± std over seeds"
    models = [(label, model, acc) for label, p in data["scenarios"].items()
              for model, acc in sorted(p["models"].items())]
    clean_bars, robust_bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    for bars, kind in ((clean_bars, "clean"), (robust_bars, "robust")):
        assert [b.get_height() for b in bars.patches] == pytest.approx(
            [100 * acc[kind][0] for _, _, acc in models])
        _, _, (vertical,) = bars.errorbar.lines  # the data line, the caps, the bars' segments
        assert [top - bottom for (_, bottom), (_, top) in vertical.get_segments()] == pytest.approx(
            [2 * 100 * acc[kind][1] for _, _, acc in models])
    assert any(acc["robust"][1] > 0 for _, _, acc in models)  # two seeds: a spread to draw
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{label}\n{model}" for label, model, _ in models]


def test_the_report_names_every_machine_its_tasks_recorded(paper_study, tmp_path):
    """A task resumed on another machine adds it to its record, and the report names both
    (with each thread count), whatever machine renders the report."""
    plan, out, _ = paper_study
    moved = tmp_path / "study"
    shutil.copytree(out, moved)
    record = moved / "tasks" / "train__at__lr0.05__seed2.record.json"
    data = json.loads(record.read_text())
    elsewhere = {"device": "cuda", "cpu": "Elsewhere 9000", "cpu_count": 64, "gpu": "Some GPU",
                 "threads": 8, "torch": "9.9"}
    data["machines"] += [elsewhere, {**elsewhere, "device": "cpu", "gpu": None}]  # its CPU: one machine
    record.write_text(json.dumps(data))
    collected = report.collect(Study(load_plan(plan), moved))
    assert {"cpu": "Elsewhere 9000", "isa": None, "cpu_count": 64, "gpus": ["Some GPU"]} \
        in collected["machines"]
    assert len(collected["machines"]) == 2 and collected["threads"] == [1, 8]
    text = markdown(collected)
    assert "Elsewhere 9000 (64 cores, Some GPU)" in text and "1/8 torch threads per task" in text
    assert sorted(collected["torch"]) == sorted(["9.9", torch.__version__])
    # Records from before machines were recorded: the evaluation files still name theirs, and
    # the report says that the training's machine is not known.
    for path in (moved / "tasks").glob("*.record.json"):
        data = json.loads(path.read_text())
        data.pop("machines", None)
        path.write_text(json.dumps(data))
    text = markdown(report.collect(Study(load_plan(plan), moved)))
    assert "(as its evaluation files state; its training tasks' records name no machine)" in text
    # An evaluation names the machines that computed its attacks (a summary rewritten
    # elsewhere keeps them), not the one that wrote the summary last.
    path = next((moved / "evals").glob("**/summary.json"))
    summary = json.loads(path.read_text())
    summary["computed_on"] = [{**summary["computed_on"][0], "cpu": "Evaluator 7", "torch": "8.8"}]
    path.write_text(json.dumps(summary))
    collected = report.collect(Study(load_plan(plan), moved))
    assert "Evaluator 7" in [m["cpu"] for m in collected["machines"]] and "8.8" in collected["torch"]


def test_the_status_lists_nothing_left(paper_study):
    plan, out, _ = paper_study
    status = subprocess.run([sys.executable, "-m", "mutualat", "compare", str(plan), "--out", str(out), "--status"],
                            capture_output=True, text=True)
    assert status.returncode == 0 and "0 ready, 0 waiting" in status.stdout
    study = Study(load_plan(plan), out)
    # at's grid has one point; mat's best is one of its grid's two alphas, so at its edge
    at, mat = study.selection("at"), study.selection("mat")
    assert not at.at_edge and mat.at_edge
    score = 100 * at.scores[at.label]
    assert f"grid     at           chose {at.label} (validation {score:.1f} %)\n" in status.stdout
    score = 100 * mat.scores[mat.label]
    assert (f"grid     mat          chose {mat.label} (validation {score:.1f} %; at the edge of "
            "the grid)\n") in status.stdout


def test_the_status_says_where_each_grid_stands(paper_study, tmp_path):
    """A copy of the finished study with its grids undone by hand: a grid with a run still to
    end and a diverged one, then one that ended (its score shown, or that it has none), and a
    student whose teacher's grid has not chosen yet."""
    plan_path, finished, _ = paper_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    plan = load_plan(plan_path)
    study = Study(plan, out)
    diverged, unfinished = (study.run_dir("mat", s, 0) for s in plan.settings("mat"))
    results = (diverged / "results.json").read_text()
    (diverged / "results.json").unlink()
    (diverged / "diverged.json").write_text("{}")
    (unfinished / "results.json").unlink()
    (study.run_dir("at", {"lr": 0.05}, 0) / "results.json").unlink()
    lines = [line for line in progress.status_lines(study) if line.startswith("grid")]
    label = setting_label(plan.settings("mat")[0])
    assert [line.split(None, 2)[1:] for line in lines] == [
        ["at", "0 of 1 grid runs ended"],
        ["mat", f"1 of 2 grid runs ended (validation: {label} diverged)"],
        ["mat-offline", "waits on at's grid (its teacher)"]]

    def mat_line() -> str:
        line = [line for line in progress.status_lines(study) if line.startswith("grid     mat ")]
        return line[0].split(None, 2)[2]

    # had the first mat run ended well: its score, the mean of its members' last validation
    # PGD accuracies (the plan's select: last), while the other runs on
    (diverged / "diverged.json").unlink()
    (diverged / "results.json").write_text(results)
    metrics = diverged / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    last = [r for r in records if r["event"] == "epoch"][-1]
    last["val_pgd/h1"], last["val_pgd/h2"] = 0.40, 0.47
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert mat_line() == f"1 of 2 grid runs ended (validation: {label} 43.5 %)"
    # a run that validated nothing (no epoch records) does not stop --status
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records if r["event"] != "epoch"))
    assert mat_line() == f"1 of 2 grid runs ended (validation: {label} no validation score)"


def test_an_evaluation_of_another_suite_or_subset_is_never_reused(paper_study, tmp_path):
    """The plan's suite edited after its evaluations ran: the study stops, naming what differs."""
    _, out, _ = paper_study
    edited = _write(tmp_path / "plan")
    (tmp_path / "plan" / "tiny-suite.yaml").write_text(TINY_SUITE.replace("steps: 5", "steps: 6"))
    with pytest.raises(ConfigError, match="other attacks than the plan asks for"):
        sections.tasks(Study(load_plan(edited), out))
    smaller = _write(tmp_path / "plan2", PLAN.replace("variants: [at, mat], n: 16", "variants: [at, mat], n: 12"))
    with pytest.raises(ConfigError, match="other images than the plan asks for"):
        sections.tasks(Study(load_plan(smaller), out))


def test_select_on_scores_only_the_named_members(paper_study):
    """A cohort with a natural member (ACT, nat-rob MAT) is selected on its robust member."""
    plan_path, out, _ = paper_study
    study = Study(load_plan(plan_path), out)
    run = study.run_dir("mat", {"lr": 0.05, "method.params.alpha": 0.6}, 0)
    last = [r for r in read_metrics(run) if r["event"] == "epoch"][-1]
    assert validation_score(run, "last", ["h2"]) == last["val_pgd/h2"]
    assert validation_score(run, "last") == pytest.approx((last["val_pgd/h1"] + last["val_pgd/h2"]) / 2)
    # The clean accuracy at the epochs the robust criterion picks: for "best", each member's
    # best robust epoch, not the best clean one.
    epochs = [r for r in read_metrics(run) if r["event"] == "epoch"]
    best = max(epochs, key=lambda r: r["val_pgd/h2"])
    assert validation_score(run, "best", ["h2"], metric="clean") == best["val_clean/h2"]
    assert validation_score(run, "last", ["h2"], metric="clean") == last["val_clean/h2"]
    both = [max(epochs, key=lambda r: r[f"val_pgd/{role}"])[f"val_clean/{role}"] for role in ("h1", "h2")]
    assert validation_score(run, "best", metric="clean") == pytest.approx(sum(both) / 2)
    with pytest.raises(ConfigError, match="metric must be pgd or clean"):
        validation_score(run, "last", metric="val")
    with pytest.raises(ConfigError, match="select_on names 'robust'"):
        validation_score(run, "last", ["robust"])


def test_a_table_and_the_report_show_only_the_selecting_members(paper_study, tmp_path, monkeypatch):
    """select_on also names the members a table and the main evaluation evaluate and the
    report shows (ACT's robust model, not its natural one), with no cohort ensemble; a
    scenario of Fig. 2 still evaluates every member. It leaves the run configs as they were,
    so every run is reused, and the report reads evaluations made before it was set."""
    plan_path, out, _ = paper_study
    text = PLAN.replace("  mat: {method.name: mat, models: [tinycnn, tinycnn]}",
                        "  mat: {method.name: mat, models: [tinycnn, tinycnn], select_on: [h2]}")
    study = Study(load_plan(_write(tmp_path / "plan", text)), out)
    chosen = study.selection("mat")
    assert chosen is not None  # the grid was reused: select_on is not part of a run's config
    table = study.plan.tables[0]
    files = sections.table_files(study, table, "mat", chosen.chosen, 0)
    task = sections._table_task(study, table, "mat", chosen.chosen, 0, files, 0)
    (job,) = task.spec["evaluations"]
    assert job["evaluated"] == ["h2"] and list(job["models"]) == ["h2"]
    run = study.run_dir("mat", chosen.chosen, 0)

    def main_job(study: Study) -> dict:
        job = study.eval_job("mat", chosen.chosen, 0, [run], "last", True)
        assert not job["ensemble"] and set(job["models"]) == {"h1", "h2"}  # its product is h2
        return job

    assert main_job(study)["evaluated"] == ["h1", "h2"]  # mat is the rob-rob-online scenario
    unshown = Study(load_plan(_write(tmp_path / "plan2", text.replace("rob-rob-online: mat, ", ""))), out)
    assert main_job(unshown)["evaluated"] == ["h2"]
    # This study evaluated both members and their ensemble, at the setting the mean of h1
    # and h2 chose (h2 alone may choose another): the report shows h2 alone.
    chosen = Study(load_plan(plan_path), out).selection("mat")
    monkeypatch.setattr(study, "selection", lambda variant: chosen)
    rows = report._variant_rows(study, "mat", "last")
    assert [r["row"] for r in rows] == ["mat (member h2)"]
    for seed in study.plan.seeds:
        h2 = read_summary(study.eval_dir("mat", chosen.chosen, seed, "last"))["models"]["h2"]
        assert rows[0]["seeds"][seed]["r_worst"] == h2["r_worst"]


def test_a_moved_study_is_reused_and_a_changed_teacher_or_attack_is_not(paper_study, tmp_path):
    """A student is tied to its teacher model by content, not by path: the study folder moved
    elsewhere is reused whole, and a student run cut short resumes there against the moved
    teacher; a teacher file that changed stops the study. The transfer matrix is keyed by
    its models' contents and its attack's settings."""
    plan_path, out, _ = paper_study
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    study = Study(load_plan(plan_path), moved)
    assert sections.tasks(study) == ([], [])
    student = study.run_dir("mat-offline", study.selection("mat-offline").chosen, 0)
    (student / "results.json").unlink()  # as if killed after its last checkpoint
    (task,) = sections.tasks(study)[0]
    assert task.spec["run_dir"] == str(student) and str(moved) in task.spec["config"]["models"][0]["init"]
    run_train(task.spec)  # resumed, not refused for the teacher's new path
    assert (student / "results.json").is_file() and sections.tasks(study) == ([], [])
    edited = load_plan(_write(tmp_path / "plan", PLAN.replace("steps: 2, step_size", "steps: 3, step_size")))
    ready, _ = sections.tasks(Study(edited, moved))
    assert sorted(t.key for t in ready) == ["transfer/seed0", "transfer/seed2"]
    teacher = study.run_dir("at", {"lr": 0.05}, 0) / "models" / "model.safetensors"
    other = study.run_dir("at", {"lr": 0.05}, 2) / "models" / "model.safetensors"
    shutil.copyfile(other, teacher)  # as if the teacher had been trained again
    with pytest.raises(ConfigError, match="trained against another teacher model"):
        sections.tasks(Study(load_plan(plan_path), moved))


def test_a_calibrated_strength_is_compared_by_its_value(tmp_path):
    """table2-fmnist's Fog, Gabor and Elastic run at "calibrated:28x28": an evaluation is
    reused only if it used the values that name stands for now."""
    study = Study(load_plan(_write(tmp_path / "plan")), tmp_path / "out")
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "table2-fmnist" / "summary.json"
    summary = json.loads(example.read_text())
    summary["suite"] = load_suite("table2-fmnist").to_dict()  # the suite as it is now
    summary["data"].update(subset=100, subset_seed=0)
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    assert study.evaluated(folder, "table2-fmnist", 100)
    for model in summary["models"].values():
        model["attacks"]["fog"]["eps"] += 0.01  # run before a recalibration
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="other calibrated strengths"):
        Study(study.plan, tmp_path / "out").evaluated(folder, "table2-fmnist", 100)


def test_a_retrained_run_is_evaluated_again_not_reported_with_old_numbers(paper_study, tmp_path):
    """A run trained again after its evaluation (moved away, as the study's message says,
    then retrained) has other model files: the evaluation and the table of the old ones
    are refused, naming the folder, instead of being reported."""
    plan_path, out, _ = paper_study
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    plan = load_plan(plan_path)
    study = Study(plan, moved)
    run = study.run_dir("mat", study.selection("mat").chosen, 2)
    other = study.run_dir("mat", study.selection("mat").chosen, 0)
    shutil.copyfile(other / "models" / "h1.safetensors", run / "models" / "h1.safetensors")
    with pytest.raises(ConfigError, match=r"evals/mat/.*seed2/last holds an evaluation with other models"):
        sections.tasks(Study(plan, moved))


def test_a_new_student_run_replaces_a_stale_teacher_record(paper_study, tmp_path):
    """The teacher record outlives a student run moved away: the new run is not refused."""
    plan_path, out, _ = paper_study
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    study = Study(load_plan(plan_path), moved)
    run = study.run_dir("mat-offline", {"lr": 0.05}, 2)
    shutil.move(run, tmp_path / "away")
    (task,) = [t for t in sections.tasks(study)[0] if t.kind == "train"]
    record = run.parent / "teacher-of-seed2.json"
    record.write_text(json.dumps({"file": "old", "sha256": "0" * 64}))  # a stale record
    run_train(task.spec)
    assert (run / "results.json").is_file()
    assert json.loads(record.read_text())["sha256"] == task.spec["teacher"]["sha256"]


@pytest.mark.parametrize("amp, layout, deterministic, text", [
    ("bf16", "on", False, "bf16 autocast, channels_last; evaluation in fp32"),
    ("off", "off", True, "fp32, contiguous; evaluation in fp32"),
    ("bf16", "auto", False, "on CUDA bf16 autocast, channels_last, on a CPU bf16 autocast, the "
                            "layout by a timed trial; evaluation in fp32"),
    ("auto", "auto", False, "on CUDA bf16 autocast, channels_last, on a CPU the precision and "
                            "layout by a timed trial (bf16 only where the processor has bf16 "
                            "instructions); evaluation in fp32"),
])
def test_the_training_arithmetic_row_says_what_a_step_computes(amp, layout, deterministic, text):
    # Pinned, both are what every run computes; "auto" is CUDA's rule or the CPU's trial,
    # which a deterministic run skips (mutualat.train.precision.choose_precision).
    assert provenance._arithmetic(amp, layout, deterministic) == text

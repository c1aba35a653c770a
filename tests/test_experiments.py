"""Multi-run experiments: the alpha search and the two-stage KD scenarios, end to end."""

from __future__ import annotations

import json

import pytest

import mutualat
from mutualat.config import load_config
from mutualat.errors import ConfigError
from mutualat.experiments import alpha_search, run_or_reuse, run_scenario
from mutualat.report.documents import write_section
from mutualat.train.logger import read_metrics

from conftest import script_module, tiny_overrides

# The results scripts' helpers (scripts/common.py): variant names and table cells.
_scripts = script_module("common")
mean_std_percent, split_alpha, with_alpha = (_scripts.mean_std_percent, _scripts.split_alpha,
                                             _scripts.with_alpha)


def _mat(extra: list[str] = ()) -> list[str]:
    return tiny_overrides(1) + ["method.name=mat", "models.1.name=tinycnn",
                                "data.train_subset=256", *extra]


def test_alpha_search_picks_by_validation_and_retrains_on_everything(tmp_path):
    summary = alpha_search(load_config(None, _mat()), [0.0, 0.5], tmp_path)
    curve = summary["alpha_curve"]
    assert set(curve) == {"0", "0.5"}
    assert summary["chosen_alpha"] == float(max(curve, key=curve.get))
    saved = json.loads((tmp_path / "alpha_curve.json").read_text())
    assert saved["chosen_alpha"] == summary["chosen_alpha"]
    assert (tmp_path / "alpha_curve.png").stat().st_size > 0
    final = load_config(tmp_path / "final" / "config.yaml")
    assert final.data.val_fraction == 0.0
    assert final.method.params["alpha"] == summary["chosen_alpha"]
    # A second call reuses every finished run instead of training again.
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("checkpoint.pt")}
    alpha_search(load_config(None, _mat()), [0.0, 0.5], tmp_path)
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("checkpoint.pt")}
    # `mutualat report` takes the search folder as it is: the alpha curve (Fig. 3) and every
    # run in it, with training curves read from the runs' real metrics logs.
    from PIL import Image

    from mutualat.cli import main

    report = tmp_path.parent / (tmp_path.name + "-report")
    assert main(["report", str(tmp_path), "--out", str(report)]) == 0
    text = (report / "report.md").read_text()
    for label in ("alpha-0-h1", "alpha-0.5-h2", "final-h1"):
        assert f"| {label} |" in text, label
    for png in ("alpha_curve.png", "training_curves.png"):
        with Image.open(report / png) as image:
            image.verify()


def test_alpha_search_of_mat_mp_selects_on_the_generalist(tmp_path):
    # A generalist and one l2 specialist, two 2-step threats: the criterion is the
    # generalist's validation accuracy (worst over the types), not the cohort's mean.
    cfg = load_config(None, tiny_overrides(1) + [
        "method.name=mat-mp", "models.1.name=tinycnn", "data.train_subset=128",
        "method.params.threats=[{norm: linf, eps: 0.1, steps: 2}, {norm: l2, eps: 1.0, steps: 2}]",
        "models.2.name=tinycnn"])
    summary = alpha_search(cfg, [0.2, 0.8], tmp_path, final=False)
    for alpha, value in summary["alpha_curve"].items():
        last = [r for r in read_metrics(tmp_path / f"alpha-{alpha}") if r["event"] == "epoch"][-1]
        assert value == last["val_pgd/generalist"]
        assert last["val_pgd/generalist"] <= min(last["val_linf/generalist"], last["val_l2/generalist"])
    assert "generalist" in summary["criterion"]


def test_alpha_search_rejects_what_it_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="tunes MAT's alpha"):
        alpha_search(load_config(None, tiny_overrides(1)), [0.5], tmp_path / "a")
    with pytest.raises(ConfigError, match="needs a validation split"):
        alpha_search(load_config(None, _mat(["data.val_fraction=0"])), [0.5], tmp_path / "b")


def test_offline_scenario_trains_the_teacher_first_then_freezes_it(tmp_path):
    run_scenario("nat-rob-offline", load_config(None, _mat()), tmp_path)
    teacher = tmp_path / "stage1" / "models" / "model.safetensors"
    stage2 = load_config(tmp_path / "stage2" / "config.yaml")
    assert stage2.models[0].frozen and stage2.models[0].init == str(teacher)
    assert stage2.method.params["natural"] == [0]
    # Only the student is trained and saved in stage 2; the teacher file is unchanged.
    assert (tmp_path / "stage2" / "models" / "h2.safetensors").is_file()
    assert not (tmp_path / "stage2" / "models" / "h1.safetensors").exists()
    results = json.loads((tmp_path / "stage2" / "results.json").read_text())
    assert list(results["models"]) == ["h2"]
    assert mutualat.load_model(teacher).training is False
    # The folder records its scenario, so the report's Fig. 2 finds it under any name.
    from mutualat.report.paper_tables import _kd_points, load_inputs

    assert json.loads((tmp_path / "scenario.json").read_text()) == {"scenario": "nat-rob-offline"}
    points = _kd_points(load_inputs([tmp_path]).runs)
    assert set(points) == {"nat-rob-offline"} and "h2" in points["nat-rob-offline"]


def test_mean_std_percent_is_the_sample_std_in_percent():
    # mean 0.5, sample variance ((0.1)^2 + 0 + (0.1)^2) / 2 = 0.01 -> std 0.1
    assert mean_std_percent([0.4, 0.5, 0.6]) == "50.00 ± 10.00"
    assert mean_std_percent([0.123]) == "12.30 ± 0.00"


def test_write_section_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nkept above\n<!-- a:begin -->\nold\n<!-- a:end -->\nkept below\n")
    write_section(doc, "<!-- a:begin -->", "<!-- a:end -->", "<!-- a:begin -->\nnew\n<!-- a:end -->")
    assert doc.read_text() == ("# Results\n\nkept above\n<!-- a:begin -->\nnew\n<!-- a:end -->"
                               "\nkept below\n")
    # A second section without markers yet goes at the end, the first one untouched.
    write_section(doc, "<!-- b:begin -->", "<!-- b:end -->", "<!-- b:begin -->\nB\n<!-- b:end -->")
    assert doc.read_text().endswith("kept below\n\n<!-- b:begin -->\nB\n<!-- b:end -->\n")
    assert "<!-- a:begin -->\nnew\n<!-- a:end -->" in doc.read_text()


def test_write_section_refuses_a_broken_document_and_leaves_it_alone(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("<!-- a:begin -->\nhand-edited, end marker lost\n")
    with pytest.raises(ValueError, match="without"):
        write_section(doc, "<!-- a:begin -->", "<!-- a:end -->", "<!-- a:begin -->\nx\n<!-- a:end -->")
    assert doc.read_text() == "<!-- a:begin -->\nhand-edited, end marker lost\n"


def test_a_finished_run_is_reused_only_for_the_same_config(tmp_path):
    run = tmp_path / "run"
    first = run_or_reuse(load_config(None, tiny_overrides(1) + ["data.train_subset=128"]), run)
    before = (run / "results.json").read_bytes()
    # Environment keys (device, progress, data_dir, ...) may differ: the same run is reused.
    again = run_or_reuse(load_config(None, tiny_overrides(1) + ["data.train_subset=128",
                                                               "progress=true"]), run)
    assert again == first
    # Another method setting is another experiment: refused, nothing touched.
    with pytest.raises(ConfigError, match="another config.*optim.epochs"):
        run_or_reuse(load_config(None, tiny_overrides(2) + ["data.train_subset=128"]), run)
    assert (run / "results.json").read_bytes() == before


def test_variant_names_round_trip_the_alpha_as_written():
    assert with_alpha("mat-mp-max", 0.6) == "mat-mp-max-alpha0.6"
    assert split_alpha(with_alpha("mat", 0.30)) == ("mat", "0.3")
    assert split_alpha("at-max") == ("at-max", None)

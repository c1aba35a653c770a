"""A study archived without its weights (mutualat compare --archive): what the copy holds,
that it renders the same report and reruns nothing, and that a run whose evaluation is still
to come trains again, to the same weights, its archived folder set aside."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mutualat.compare.archive import archive_study
from mutualat.compare.records import PRUNED

from test_compare import _compare
from test_compare_mp import _write
from test_compare_sections import _write as write_paper_plan


def _run(plan: Path, out: Path, *extra: str) -> str:
    process = _compare(plan, out, *extra)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def archived(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """The tiny MP study (AT-MAX, MAT-MP, the control; 2 seeds), its section written into a
    document, and its archive."""
    root = tmp_path_factory.mktemp("archive")
    plan, out, document = _write(root / "plan"), root / "out", root / "docs" / "RESULTS.md"
    document.parent.mkdir()
    document.write_text("# Results\n")
    _run(plan, out, "--write", str(document))
    output = _run(plan, out, "--archive", str(root / "archive"))
    assert f"in {root / 'archive'}" in output and "archived 6 runs, 6 evaluations and" in output
    return plan, out, root / "archive", document


def test_the_archive_keeps_every_record_and_no_weights(archived):
    _, out, archive, _ = archived
    held = _files(archive)
    assert not [f for f in held if f.endswith((".safetensors", "checkpoint.pt", ".lock"))]
    models = sorted(out.glob("runs/*/*/*/models/*.safetensors"))
    assert len(models) == 2 * 2 * (1 + 3 + 1)  # seeds, last and best: AT-MAX, MAT-MP, control's extra
    for model in models:  # each a stand-in naming its file by content
        stub = json.loads(held[f"{model.relative_to(out)}{PRUNED}"])
        assert stub["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert stub["meta"]["model"]["name"] == "tinycnn"
    for kept in [*out.glob("runs/*/*/*/metrics.jsonl"), *out.glob("evals/**/summary.json"),
                 *out.glob("evals/**/*.npz"), *out.glob("tasks/*"), *out.glob("logs/*")]:
        assert held[str(kept.relative_to(out))] == kept.read_bytes(), kept
    assert sum(map(len, held.values())) < sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 5
    assert "*.safetensors" in held[".gitignore"].decode()
    assert json.loads(held["archive.json"])["plan"] == "tinymp"


def test_archiving_again_adds_and_changes_nothing_and_leaves_unfinished_work_out(archived, tmp_path):
    plan, out, archive, _ = archived
    study, copy = tmp_path / "out", tmp_path / "archive"
    shutil.copytree(out, study)
    shutil.copytree(archive, copy)
    # A run still training (its config and checkpoint only) and a task running.
    started = study / "runs" / "at-max" / "lr0.05" / "seed7"
    started.mkdir()
    (started / "config.yaml").write_text("seed: 7\n")
    (started / "checkpoint.pt").write_bytes(b"\0" * 64)
    record = json.loads((study / "tasks" / "train__at-max__lr0.05__seed0.record.json").read_text())
    (study / "tasks" / "train__at-max__lr0.05__seed7.record.json").write_text(
        json.dumps({**record, "status": "running"}))
    before = _files(copy)
    stale = copy / "runs" / "at-max" / "lr0.05" / "seed0" / "diverged.json"
    stale.write_text("{}")  # archived while the run had diverged, say: the run has it no more
    torn = copy / "tasks" / ".train__at-max__lr0.05__seed0.json.4242.0a1b2c3d.tmp"
    torn.write_text('{"key": "tr')  # an archive killed while it wrote this file
    output = _run(plan, study, "--archive", str(copy))
    assert "(1 files written)" in output
    assert _files(copy) == before
    assert "(0 files written)" in _run(plan, study, "--archive", str(copy))


def test_an_archive_renders_the_same_section_and_trains_nothing(archived, tmp_path):
    plan, out, archive, document = archived
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    again = tmp_path / "RESULTS.md"
    again.write_text("# Results\n")
    output = _run(plan, copy, "--write", str(again))
    assert "start " not in output
    def echoed(text: str, out: Path, doc: Path) -> str:  # the command line differs there only
        return text.replace(str(out), "OUT").replace(str(doc), "DOC")

    assert echoed(again.read_text(), copy, again) == echoed(document.read_text(), out, document)
    assert not list(copy.rglob("*.safetensors"))


def test_an_evaluation_still_to_run_trains_its_run_again_to_the_same_weights(archived, tmp_path):
    plan, out, archive, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    evaluation = next(copy.glob("evals/mat-mp/*/seed3"))
    shutil.rmtree(evaluation)  # as if the machine was lost before it ran
    output = _run(plan, copy)
    started = [line.split()[1] for line in output.splitlines() if line.startswith("start ")]
    assert started == ["train/mat-mp/lr0.05/seed3", "eval/mat-mp/seed3"]
    aside = copy / "pruned-runs" / "mat-mp" / "lr0.05" / "seed3"
    assert (aside / "models" / f"generalist.safetensors{PRUNED}").is_file()  # nothing lost
    assert (aside / "metrics.jsonl").read_bytes() == (out / "runs/mat-mp/lr0.05/seed3/metrics.jsonl").read_bytes()
    for model in sorted((out / "runs/mat-mp/lr0.05/seed3/models").glob("*.safetensors")):
        again = copy / "runs/mat-mp/lr0.05/seed3/models" / model.name
        assert again.read_bytes() == model.read_bytes(), model.name
    fresh, original = (json.loads((d / "last" / "summary.json").read_text())
                       for d in (evaluation, next(out.glob("evals/mat-mp/*/seed3"))))
    for attack, result in original["models"]["generalist"]["attacks"].items():
        again = fresh["models"]["generalist"]["attacks"][attack]
        assert [again[k] for k in ("accuracy", "attacked", "broken")] == \
            [result[k] for k in ("accuracy", "attacked", "broken")], attack
    assert json.loads((copy / "runs/mat-mp/lr0.05/retrained-seed3.json").read_text()) == \
        {"set_aside": "pruned-runs/mat-mp/lr0.05/seed3", "differs": []}
    # Archived again, the run trained again is archived too, and what was set aside.
    _run(plan, copy, "--archive", str(tmp_path / "second"))
    assert (tmp_path / "second" / "pruned-runs" / "mat-mp" / "lr0.05" / "seed3" / "results.json").is_file()
    assert (tmp_path / "second" / "runs/mat-mp/lr0.05/retrained-seed3.json").is_file()


def test_a_run_trained_again_to_other_weights_says_so(archived, tmp_path):
    """As on another machine: the archived generalist's sha256 is not what training gives."""
    plan, _, archive, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    stub = copy / "runs/mat-mp/lr0.05/seed3/models" / f"generalist.safetensors{PRUNED}"
    stub.write_text(json.dumps({**json.loads(stub.read_text()), "sha256": "0" * 64}))
    shutil.rmtree(next(copy.glob("evals/mat-mp/*/seed3")))
    output = _run(plan, copy)
    assert json.loads((copy / "runs/mat-mp/lr0.05/retrained-seed3.json").read_text())["differs"] == \
        ["generalist"]
    log = (copy / "logs" / "train__mat-mp__lr0.05__seed3.log").read_text()
    assert "differs from its archived weights (generalist): a new run" in log
    assert "start  eval/mat-mp/seed3" in output


def test_an_archive_inside_its_study_is_refused(archived):
    plan, out, _, _ = archived
    process = _compare(plan, out, "--archive", str(out / "keep"))
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and "lies inside the study" in output
    assert not (out / "keep").exists()


@pytest.mark.parametrize("held", ["notes.txt", "archive.json"])
def test_a_folder_holding_something_else_is_refused_and_left_as_it_was(archived, tmp_path, held):
    plan, out, _, _ = archived
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / held).write_text(json.dumps({"plan": "another"}))
    process = _compare(plan, out, "--archive", str(dest))
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert f"{dest} is not empty and holds no archive of plan 'tinymp'" in output
    assert [p.name for p in dest.iterdir()] == [held]


def test_a_table_transfer_or_student_still_to_run_trains_what_it_reads_again(tmp_path):
    """The paper plan's extras on an archive: a table's and a transfer matrix's models, and a
    student (MAT-offline) whose teacher the archive left without weights too."""
    plan = write_paper_plan(tmp_path / "plan")
    out, copy = tmp_path / "out", tmp_path / "archive"
    _run(plan, out)
    _run(plan, out, "--archive", str(copy))
    assert (copy / "runs/mat-offline/lr0.05/teacher-of-seed2.json").read_bytes() == \
        (out / "runs/mat-offline/lr0.05/teacher-of-seed2.json").read_bytes()
    removed = [next(copy.glob("tables/t2/mat/*/seed2")), next(copy.glob("transfer/seed2-*")),
               next(copy.glob("evals/mat-offline/*/seed2"))]
    for folder in removed:
        shutil.rmtree(folder)
    output = _run(plan, copy)
    started = sorted(line.split()[1] for line in output.splitlines() if line.startswith("start "))
    chosen = next(out.glob("runs/mat/*/seed2")).parent.name
    assert started == ["eval/mat-offline/seed2", "table/t2/mat/seed2", "train/at/lr0.05/seed2",
                       "train/mat-offline/lr0.05/seed2", f"train/mat/{chosen}/seed2",
                       "transfer/seed2"]
    for run in ("at/lr0.05/seed2", f"mat/{chosen}/seed2", "mat-offline/lr0.05/seed2"):
        for model in sorted((out / "runs" / run / "models").glob("*.safetensors")):
            assert (copy / "runs" / run / "models" / model.name).read_bytes() == model.read_bytes()
        assert (copy / "pruned-runs" / run / "results.json").is_file()
    for folder in removed:  # the same numbers again
        results = [*folder.rglob("summary.json"), *folder.rglob("transfer.json")]
        assert results, folder
        for again in results:
            original = json.loads((out / again.relative_to(copy)).read_text())
            assert _outcome(json.loads(again.read_text())) == _outcome(original), again


def _outcome(result: dict) -> dict:
    """What an evaluation summary (each model's accuracy under each attack) or a transfer
    matrix (clean and transferred accuracy) found."""
    if "suite" in result:
        return {m: {a: r["accuracy"] for a, r in v["attacks"].items()} for m, v in result["models"].items()}
    return {"accuracy": result["accuracy"], "clean": result["clean"]}


def test_a_diverged_run_is_archived_as_settled_and_an_unfinished_one_is_not(tmp_path):
    out = tmp_path / "out"
    diverged, started = out / "runs/at/lr0.4/seed0", out / "runs/at/lr0.1/seed0"
    for run in (diverged, started):
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("seed: 0\n")
        (run / "metrics.jsonl").write_text('{"event": "start"}\n')
    (diverged / "diverged.json").write_text('{"error": "loss is nan"}')
    (started / "checkpoint.pt").write_bytes(b"\0" * 64)
    counts = archive_study(out, tmp_path / "archive", "tiny")
    assert counts["runs"] == 1
    held = _files(tmp_path / "archive")
    assert held["runs/at/lr0.4/seed0/diverged.json"] == b'{"error": "loss is nan"}'
    assert not [f for f in held if f.startswith("runs/at/lr0.1/")]


def test_a_scripts_check_run_in_the_study_is_archived_and_read_again_without_weights(
        archived, tmp_path, capsys):
    """scripts/apgd_targets_gap.py run inside a study records the model files it attacked;
    the archive keeps its folders, and on the archive, with the weights gone, the same rows
    come back from them, while a check not yet run says it needs the weights."""
    from conftest import script_module

    plan, out, _, _ = archived
    gap = script_module("apgd_targets_gap")
    study, archive = tmp_path / "study", tmp_path / "archive"
    shutil.copytree(out, study)
    assert gap.main([str(study), "--targets", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    checked = [r for r in rows if r["attacked"]]
    assert checked, "the tiny models left the check nothing to attack"
    output = _run(plan, study, "--archive", str(archive))
    assert f"6 evaluations, {len(checked)} scripts' checks and" in output  # counted apart
    for r in checked:
        folder = Path("apgd-targets-gap", r["variant"], r["setting"], f"seed{r['seed']}", "last", r["model"])
        for name in ("summary.json", "evaluated-models.json", "manifest.json"):
            assert (archive / folder / name).read_bytes() == (study / folder / name).read_bytes()
    # A model file changed since its evaluation: the check refuses to attack it.
    first = checked[0]
    run = study / "runs" / first["variant"] / first["setting"] / f"seed{first['seed']}" / "models"
    target = sorted(p for p in run.glob("*.safetensors") if ".best." not in p.name)[0]
    other = next(p for p in sorted(study.glob("runs/*/*/*/models/*.safetensors"))
                 if p.read_bytes() != target.read_bytes())
    kept = target.read_bytes()
    target.write_bytes(other.read_bytes())
    assert gap.main([str(study), "--targets", "2", "--out", str(tmp_path / "again"), "--json"]) == 2
    assert "is not the file this evaluation read" in capsys.readouterr().err
    target.write_bytes(kept)
    shutil.rmtree(study)  # the weights the summaries name are gone
    assert gap.main([str(archive), "--targets", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert gap.main([str(archive), "--targets", "3", "--json"]) == 2
    assert "weights are not here" in capsys.readouterr().err
    # An evaluation the study does not count finished (no record of its files) is skipped.
    (archive / "evals" / first["variant"] / first["setting"] / f"seed{first['seed']}" / "last"
     / "evaluated-models.json").unlink()
    assert gap.main([str(archive), "--targets", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        r for r in rows if (r["variant"], r["seed"]) != (first["variant"], first["seed"])]

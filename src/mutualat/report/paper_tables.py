"""Tables shaped like the MAT paper's Tables 2-5 (methods as rows), as Markdown and CSV, and
``build_report``, which turns run folders and evaluation results into a report folder.

Inputs (any mix, see :func:`load_inputs`):

- a training run folder (``results.json``, ``metrics.jsonl``, ``config.yaml``);
- an evaluation folder or its ``summary.json`` (``mutualat eval``);
- a transfer folder or its ``transfer.json`` (``mutualat transfer``);
- a JSON file ``{alpha: val_pgd}`` (or ``{alpha: {role: val_pgd}}``) for the alpha curve;
- a folder holding any of these one level down (e.g. ``runs/``).

Every number in a table is an accuracy in percent, computed by the evaluator or the trainer
and only formatted here, so a report is regenerated from the files alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mutualat.errors import ConfigError
from mutualat.experiments import recorded_scenario
from mutualat.files import atomic_write_bytes
from mutualat.methods.scenarios import SCENARIOS
from mutualat.report import paper_plots
from mutualat.report.plots import plot_training_curves
from mutualat.report.tables import markdown_table


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Any]]
    note: str = ""

    def markdown(self) -> str:
        text = f"### {self.title}\n\n{markdown_table(self.header, self.rows)}"
        return text + (f"\n\n{self.note}" if self.note else "")

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        for row in self.rows:
            writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])
        return buffer.getvalue()

    def row_labels(self) -> list[str]:
        return [str(r[0]) for r in self.rows]


def _pct(v: Any) -> Any:
    return 100.0 * v if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def model_label(run_or_eval: str, role: str) -> str:
    """``at`` for the single model of run ``at``, ``mat-h1`` for member h1 of run ``mat``
    (the names ``mutualat eval`` gives model files of run folders)."""
    return run_or_eval if role == "model" else f"{run_or_eval}-{role}"


def _eval_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(row label, model entry) of every model of every summary; a model name that several
    summaries share is prefixed with its summary's label."""
    counts: dict[str, int] = {}
    for s in summaries.values():
        for name in s["models"]:
            counts[name] = counts.get(name, 0) + 1
    rows = []
    for label, s in summaries.items():
        for name, entry in s["models"].items():
            rows.append((name if counts[name] == 1 else f"{label}/{name}", entry))
    return rows


def _suite_title(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    names = sorted({s["suite"]["name"] for s in summaries.values()})
    return ", ".join(names)


def _threat_text(summary: Mapping[str, Any]) -> str:
    """``linf eps=0.03137; fog eps=0.5`` with the strength each attack really used."""
    used: dict[str, Any] = {}
    for entry in summary["models"].values():
        for a in entry["attacks"].values():
            used.setdefault(a["threat"], a.get("eps"))
    parts = []
    for name, t in summary["suite"]["threats"].items():
        eps = used.get(name, t.get("eps"))
        if isinstance(eps, (int, float)):
            parts.append(f"{t.get('norm') or name} eps={eps:.4g}")
    return "; ".join(parts)


def attack_table(summaries: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Table:
    """Tables 2 and 3: clean and per-attack accuracy per model, plus R_worst (worst case over
    every attack, per example). Columns are the attacks of the suites, in suite order."""
    columns: list[str] = []
    modes = set()
    for s in summaries.values():
        modes.add(s.get("per_attack", s["suite"].get("per_attack", "cumulative")))
        for a in s["suite"]["attacks"]:
            if a["id"] not in columns:
                columns.append(a["id"])
    rows = []
    for label, m in _eval_rows(summaries):
        rows.append([label, _pct(m["clean"])]
                    + [_pct(m["attacks"].get(c, {}).get("accuracy")) for c in columns]
                    + [_pct(m["r_worst"])])
    first = next(iter(summaries.values()))
    mode_note = {
        "standalone": "each attack column is the accuracy under that attack alone",
        "cumulative": ("each attack column is the accuracy against the attacks of its threat "
                       "type up to it (attacks ran only on examples still robust)"),
    }
    note = (f"Accuracy (%) on {first.get('n_examples')} examples; {_threat_text(first)}; "
            + "; ".join(mode_note[m] for m in sorted(modes) if m in mode_note)
            + ". R_worst: per example, robust only if every attack failed.")
    return Table(title or f"Robust accuracy ({_suite_title(summaries)})",
                 ["model", "clean"] + columns + ["R_worst"], rows, note)


def threat_table(summaries: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Table:
    """Table 5: clean, accuracy per threat type (worst case over its attacks), R_avg, R_worst."""
    types: list[str] = []
    for s in summaries.values():
        for t in s["suite"]["threats"]:
            if t not in types:
                types.append(t)
    rows = [[label, _pct(m["clean"])] + [_pct(m["threats"].get(t)) for t in types]
            + [_pct(m["r_avg"]), _pct(m["r_worst"])] for label, m in _eval_rows(summaries)]
    first = next(iter(summaries.values()))
    note = (f"Accuracy (%) on {first.get('n_examples')} examples; {_threat_text(first)}. A type's "
            "column is the per-example worst case over its attacks; R_avg the mean of the type "
            "columns; R_worst the per-example worst case over all attacks.")
    return Table(title or f"Accuracy per threat type ({_suite_title(summaries)})",
                 ["model", "clean"] + types + ["R_avg", "R_worst"], rows, note)


def transfer_table(result: Mapping[str, Any], title: str = "Transfer attacks") -> Table:
    """Table 4: rows are source models, columns target models; ``*`` marks white-box cells."""
    targets = list(result["targets"])
    rows: list[list[Any]] = [["clean"] + [_pct(result["clean"][t]) for t in targets]]
    for source in result["sources"]:
        row: list[Any] = [source]
        for t in targets:
            v = _pct(result["accuracy"][source][t])
            row.append(f"{v:.2f}*" if source == t and isinstance(v, float) else v)
        rows.append(row)
    attack = next(iter(result["attacks"].values()), {})
    desc = ", ".join(f"{k}={v}" for k, v in attack.items() if k in ("class", "norm", "eps", "steps", "step_size"))
    note = (f"Accuracy (%) of each target (column) on adversarial examples crafted on each source "
            f"(row), {result['n_examples']} examples; attack: {desc}. * white-box (source = "
            "target); a black-box entry below it would signal gradient masking.")
    return Table(title, ["source \\ target"] + targets, rows, note)


def runs_table(runs: Mapping[str, Mapping[str, Any]], title: str = "Training runs (test split)") -> Table:
    """One row per trained model: method, clean and PGD accuracy from ``results.json``."""
    rows = []
    for run, results in runs.items():
        for role, acc in results.get("models", {}).items():
            rows.append([model_label(run, role), results.get("method", "?"),
                         _pct(acc.get("clean")), _pct(acc.get("pgd")), results.get("attack", "")])
    return Table(title, ["model", "method", "clean", "robust", "attack"], rows,
                 "Accuracy (%) of the last models on the test split, from each run's results.json.")


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------


@dataclass
class ReportInputs:
    runs: dict[str, Path] = field(default_factory=dict)  # label -> run folder
    evals: dict[str, dict] = field(default_factory=dict)  # label -> summary.json
    transfers: dict[str, dict] = field(default_factory=dict)  # label -> transfer.json
    alphas: dict[str, dict] = field(default_factory=dict)  # label -> {alpha: value}


def _unique(store: Mapping[str, Any], label: str) -> str:
    if label not in store:
        return label
    k = 2
    while f"{label}-{k}" in store:
        k += 1
    return f"{label}-{k}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _is_alpha_map(data: Any) -> bool:
    if not isinstance(data, dict) or not data:
        return False
    try:
        [float(k) for k in data]
    except ValueError:
        return False
    return True


def _add(inputs: ReportInputs, path: Path, depth: int) -> bool:
    if path.is_dir():
        label = path.resolve().name
        if (path / "alpha_curve.json").is_file():  # an `alpha-search` output folder
            _add(inputs, path / "alpha_curve.json", depth + 1)
            if depth == 0:  # its runs (one per alpha, and the final one) are reported too
                for child in sorted(path.iterdir()):
                    if child.is_dir():
                        _add(inputs, child, 1)
            return True
        if (path / "summary.json").is_file():
            inputs.evals[_unique(inputs.evals, label)] = _read_json(path / "summary.json")
            return True
        if (path / "transfer.json").is_file():
            inputs.transfers[_unique(inputs.transfers, label)] = _read_json(path / "transfer.json")
            return True
        if any((path / f).is_file() for f in ("results.json", "metrics.jsonl")):
            inputs.runs[_unique(inputs.runs, label)] = path
            return True
        if depth == 0:
            found = [_add(inputs, child, 1) for child in sorted(path.iterdir()) if child.is_dir()]
            return any(found)
        return False
    if path.is_file() and path.suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and "suite" in data and "models" in data:
            inputs.evals[_unique(inputs.evals, path.resolve().parent.name)] = data
        elif isinstance(data, dict) and "sources" in data and "targets" in data:
            inputs.transfers[_unique(inputs.transfers, path.resolve().parent.name)] = data
        elif isinstance(data, dict) and "models" in data and "method" in data:
            inputs.runs[_unique(inputs.runs, path.resolve().parent.name)] = path.parent
        elif _is_alpha_map(data):
            inputs.alphas[_unique(inputs.alphas, path.stem)] = data
        elif isinstance(data, dict) and _is_alpha_map(data.get("alpha_curve")):
            # what `mutualat alpha-search` writes: {"alpha_curve": {...}, "chosen_alpha": ...}
            label = path.resolve().parent.name if path.stem == "alpha_curve" else path.stem
            inputs.alphas[_unique(inputs.alphas, label)] = data["alpha_curve"]
        else:
            return False
        return True
    return False


def load_inputs(paths: Sequence[str | os.PathLike]) -> ReportInputs:
    """Classify every path (see the module docstring); an unusable path is a ConfigError."""
    inputs = ReportInputs()
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ConfigError(f"report input {path} does not exist")
        if not _add(inputs, path, 0):
            raise ConfigError(
                f"{path} is none of: a run folder (results.json / metrics.jsonl), an evaluation "
                "folder or summary.json, a transfer folder or transfer.json, an {alpha: value} "
                "JSON file, or a folder holding such folders"
            )
    return inputs


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _kd_points(runs: Mapping[str, Path]) -> dict[str, dict[str, tuple[float, float]]]:
    """Scenario -> role -> (clean, robust) of the runs of a KD scenario: those that
    ``mutualat scenario`` marked (``scenario.json``), else those whose path names one."""
    points: dict[str, dict[str, tuple[float, float]]] = {}
    for label, folder in runs.items():
        results_file = folder / "results.json"
        if not results_file.is_file():
            continue
        parts = [p.lower() for p in folder.resolve().parts]
        scenario = recorded_scenario(folder) or next(
            (s for s in SCENARIOS if any(s in p for p in parts)), None)
        if scenario is None:
            continue
        results = _read_json(results_file)
        for role, acc in results.get("models", {}).items():
            if "clean" in acc and "pgd" in acc:
                points.setdefault(scenario, {})[role] = (acc["clean"], acc["pgd"])
    return points


def _eps_curves(evals: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """norm -> model -> [(eps, accuracy of that type)] over summaries with different eps."""
    curves: dict[str, dict[str, dict[float, float]]] = {}
    for summary in evals.values():
        for tname, threat in summary["suite"]["threats"].items():
            if threat.get("norm") is None or threat.get("eps") is None:
                continue
            for model, entry in summary["models"].items():
                acc = entry["threats"].get(tname)
                if acc is not None:
                    curves.setdefault(threat["norm"], {}).setdefault(model, {})[float(threat["eps"])] = acc
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for norm, models in curves.items():
        for model, points in models.items():
            if len(points) >= 2:
                out.setdefault(norm, {})[model] = sorted(points.items())
    return out


def build_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write tables (``.md`` and ``.csv``), plots (``.png``) and ``report.md`` into ``out_dir``.

    Tables: ``runs`` (training runs), per suite ``<suite>-attacks`` (Tables 2/3 shape) and,
    for suites with several threat types, ``<suite>-threats`` (Table 5 shape), and one
    ``transfer`` table per transfer result (Table 4). Plots, when the inputs carry the data:
    ``training_curves.png``, ``accuracy_vs_eps_<norm>.png`` (the same models evaluated at
    two or more radii), ``alpha_curve.png`` (Fig. 3; ``alpha_curve-<label>.png`` for several)
    and ``kd_scenarios.png`` (Fig. 2; runs whose folder path names a KD scenario).
    Returns the path of ``report.md``.
    """
    inputs = load_inputs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: list[tuple[str, Table]] = []
    plots: list[Path] = []

    results = {label: _read_json(folder / "results.json") for label, folder in inputs.runs.items()
               if (folder / "results.json").is_file()}
    if results:
        tables.append(("runs", runs_table(results)))

    by_suite: dict[str, dict[str, dict]] = {}
    for label, summary in inputs.evals.items():
        by_suite.setdefault(summary["suite"]["name"], {})[label] = summary
    for suite_name, group in by_suite.items():
        tables.append((f"{suite_name}-attacks", attack_table(group)))
        if any(len(s["suite"]["threats"]) > 1 for s in group.values()):
            tables.append((f"{suite_name}-threats", threat_table(group)))

    for label, result in inputs.transfers.items():
        name = "transfer" if len(inputs.transfers) == 1 else f"transfer-{label}"
        tables.append((name, transfer_table(result, f"Transfer attacks ({label})")))

    for name, table in tables:
        atomic_write_bytes(out / f"{name}.md", (table.markdown() + "\n").encode())
        atomic_write_bytes(out / f"{name}.csv", table.csv().encode())

    with_metrics = {k: v for k, v in inputs.runs.items() if (v / "metrics.jsonl").is_file()}
    if with_metrics:
        plots.append(plot_training_curves(with_metrics, out / "training_curves.png"))
    for norm, curves in _eps_curves(inputs.evals).items():
        plots.append(paper_plots.plot_accuracy_vs_eps(curves, out / f"accuracy_vs_eps_{norm}.png", norm))
    for label, values in inputs.alphas.items():
        name = "alpha_curve" if len(inputs.alphas) == 1 else f"alpha_curve-{label}"
        plots.append(paper_plots.plot_alpha_curve(values, out / f"{name}.png"))
    kd = _kd_points(inputs.runs)
    if kd:
        plots.append(paper_plots.plot_kd_scenarios(kd, out / "kd_scenarios.png"))

    warnings = [w for s in inputs.evals.values() for w in s.get("warnings", [])]
    warnings += [w for t in inputs.transfers.values() for w in t.get("warnings", [])]
    lines = ["# Report", "", "Generated by `mutualat report` from: "
             + ", ".join(f"`{p}`" for p in paths), ""]
    for _, table in tables:
        lines += [table.markdown(), ""]
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    if warnings:
        lines += ["### Warnings (gradient-masking checks)", ""] + [f"- {w}" for w in warnings] + [""]
    report = out / "report.md"
    atomic_write_bytes(report, "\n".join(lines).encode())
    return report

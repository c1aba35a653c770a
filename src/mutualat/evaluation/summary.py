"""The summary of an evaluation (``summary.json``) and its Markdown table.

:func:`build_summary` turns the outcome matrices the attack loop kept into every number of
the record (accuracies per attack, per threat type, R_avg and the per-example R_worst,
from :mod:`mutualat.evaluation.worst_case`), with the warnings a reader must see;
:func:`summary_table` prints it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from mutualat.evaluation.checks import suite_warnings
from mutualat.device import hardware_info
from mutualat.evaluation.records import FORMAT_VERSION, utc_now, versions
from mutualat.evaluation.suite import Suite
from mutualat.evaluation.worst_case import BROKEN, accuracy_report
from mutualat.report.tables import markdown_table


def build_summary(
    suite: Suite,
    results: Mapping[str, tuple[np.ndarray, np.ndarray, dict]],
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    data_info: Mapping[str, Any] | None,
    model_info: Mapping[str, Mapping[str, Any]] | None,
    checks: Mapping[str, Any] | None,
    started: str | None,
    amp: str = "off",
) -> dict[str, Any]:
    """The ``summary.json`` record. Accuracies are fractions in [0,1]::

        {"format_version": 1, "date", "started", "seed", "batch_size", "n_examples",
         "per_attack": "cumulative" | "standalone",
         "suite": {name, description, per_attack, threats: {t: {norm, eps}}, attacks: [...]},
         "data": {dataset, split, n, subset_seed, ...} (what the caller passed),
         "versions": {mutualat, torch, numpy, python, autoattack?}, "hardware": {device, cpu, gpu?, ...}
         (both of the process that wrote this summary, which may have reused every attack),
         "computed_on": [{device, cpu, cpu_count, gpu?, threads, torch, ...}, ...] (each
         machine that computed an attack, once; {} for attacks recorded before machines were),
         "models": {name: {"info": {...model file metadata...},
                           "clean", "r_avg", "r_worst", "threats": {t: acc},
                           "attacks": {id: {name, threat, restarts, params, eps, accuracy,
                                            attacked, broken, invalid, seconds,
                                            layout: "channels_last" | "contiguous" | "mixed"
                                                    | null (recorded before layouts were)}},
                           "correct_file": "<name>/correct.npz"}},
         "checks": {...} or null, "precision": "fp32" | "bf16 autocast", "warnings": [...]}
    """
    specs = suite.attacks
    ids, threats = [s.id for s in specs], [s.threat for s in specs]
    # The radius (or strength) each attack really used: a threat without eps leaves the
    # attack's own default (e.g. the calibrated strength of Fog), recorded here.
    effective_eps = {s.id: _json_number(getattr(suite.build(s), "eps", None)) for s in specs}
    models: dict[str, Any] = {}
    warnings: list[str] = []
    computed_on: list[dict[str, Any]] = []
    n = 0
    for name, (clean, outcome, facts) in results.items():
        for fact in facts.values():
            if (fact.get("machine") or {}) not in computed_on:
                computed_on.append(fact.get("machine") or {})
        n = len(clean)
        report = accuracy_report(clean, outcome, ids, threats, suite.per_attack)
        attacks = {}
        for j, spec in enumerate(specs):
            fact = facts.get(spec.id, {})
            attacks[spec.id] = {
                "name": spec.name, "threat": spec.threat, "restarts": spec.restarts,
                "params": spec.params, "eps": effective_eps[spec.id],
                "accuracy": report["attacks"][spec.id],
                "attacked": fact.get("attacked"), "broken": int((outcome[:, j] == BROKEN).sum()),
                "invalid": fact.get("invalid", 0), "seconds": fact.get("seconds"),
                "layout": fact.get("layout"),
            }
            if fact.get("invalid"):
                warnings.append(
                    f"{name}: {spec.id} returned {fact['invalid']} points outside its threat model "
                    "or [0,1] (or not finite); they were counted as failed attacks"
                )
        models[name] = {
            "info": dict((model_info or {}).get(name, {})),
            "clean": report["clean"], "r_avg": report["r_avg"], "r_worst": report["r_worst"],
            "threats": report["threats"], "attacks": attacks,
            "correct_file": f"{name}/correct.npz",
        }
        warnings += suite_warnings(name, [s.to_dict() for s in specs], outcome, clean, suite.per_attack)
    if checks:
        warnings += list(checks.get("warnings", []))
    if amp == "bf16":
        warnings.append("the models ran under bf16 autocast (eval --amp bf16): lower-precision "
                        "gradients can weaken gradient attacks; confirm a claim in fp32")
    return {
        "format_version": FORMAT_VERSION,
        "date": utc_now(),
        "started": started,
        "seed": seed,
        "batch_size": batch_size,
        "n_examples": n,
        "per_attack": suite.per_attack,
        "suite": suite.to_dict(),
        "data": dict(data_info or {}),
        "versions": versions(),
        "hardware": hardware_info(device),
        "computed_on": computed_on,
        "models": models,
        "checks": dict(checks) if checks else None,
        "precision": "bf16 autocast" if amp == "bf16" else "fp32",
        "warnings": warnings,
    }


def _json_number(v: Any) -> Any:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summary_table(summary: Mapping[str, Any]) -> str:
    """A Markdown table of a summary: one row per model, accuracies in percent."""
    suite = summary["suite"]
    ids = [a["id"] for a in suite["attacks"]]
    types = list(suite["threats"])
    multi = len(types) > 1
    header = ["model", "clean"] + ids + ([f"{t} (worst)" for t in types] + ["R_avg"] if multi else []) \
        + ["R_worst"]
    rows = []
    for name, m in summary["models"].items():
        row = [name, 100 * m["clean"]] + [100 * m["attacks"][i]["accuracy"] for i in ids]
        if multi:
            row += [100 * m["threats"][t] for t in types] + [100 * m["r_avg"]]
        rows.append(row + [100 * m["r_worst"]])
    return markdown_table(header, rows)

"""Evaluation: attack suites, the per-example worst-case evaluator, transfer attacks, checks.

    from mutualat.evaluation import load_suite, evaluate

    suite = load_suite("table5")                 # a packaged suite, or a YAML file
    summary = evaluate({"mat-h1": model}, suite, images, labels, "evals/mat-h1",
                       batch_size=256, device="cuda", seed=0)
    summary["models"]["mat-h1"]["r_worst"]       # per-example worst case over all attacks

Robust accuracy is always per example (an example is robust only if every attack failed on
it; see :mod:`.worst_case`); the evaluator resumes an interrupted run from its folder.
"""

from mutualat.evaluation import autoattack  # noqa: F401  (registers the optional "autoattack")
from mutualat.evaluation.attack_loop import run_attack
from mutualat.evaluation.checks import CheckConfig, run_checks, suite_warnings
from mutualat.evaluation.evaluator import ENSEMBLE, evaluate
from mutualat.evaluation.records import EvaluationError, fingerprint_model
from mutualat.evaluation.suite import (
    AttackSpec,
    Strength,
    Suite,
    Threat,
    load_suite,
    packaged_suites,
    suite_from_dict,
)
from mutualat.evaluation.summary import build_summary, summary_table
from mutualat.evaluation.sweep import eps_sweep, parse_eps, sweep_table
from mutualat.evaluation.transfer import default_attack, transfer_matrix, write_transfer
from mutualat.evaluation.worst_case import (
    BROKEN,
    NOT_ATTACKED,
    ROBUST,
    accuracy_report,
    candidates,
    cumulative_accuracy,
    per_threat,
    pgd_alone_columns,
    standalone_accuracy,
    worst_case,
)
from mutualat.models.ensemble import Ensemble

__all__ = [
    "AttackSpec", "BROKEN", "CheckConfig", "ENSEMBLE", "Ensemble", "EvaluationError",
    "NOT_ATTACKED", "ROBUST", "Strength", "Suite", "Threat", "accuracy_report", "build_summary", "candidates",
    "cumulative_accuracy", "default_attack", "eps_sweep", "evaluate", "fingerprint_model", "load_suite",
    "packaged_suites", "parse_eps", "per_threat", "pgd_alone_columns", "run_attack", "run_checks", "standalone_accuracy",
    "suite_from_dict", "suite_warnings", "summary_table", "sweep_table", "transfer_matrix", "worst_case",
    "write_transfer",
]

"""Plain-text and Markdown tables of results."""

from __future__ import annotations

from typing import Any


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(runs: dict[str, dict[str, Any]]) -> str:
    """One row per (run, model): clean and PGD test accuracy in percent, from ``results.json``."""
    rows = []
    attack = "PGD"
    for run, results in runs.items():
        attack = results.get("attack", attack)
        for role, acc in results["models"].items():
            rows.append([run, role, 100 * acc["clean"], 100 * acc["pgd"]])
    return markdown_table(["run", "model", "clean %", f"{attack} %"], rows)

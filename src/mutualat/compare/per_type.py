"""For a suite of several threat types (Table 5): each type's first attack alone beside all of
that type's attacks, per model.

The first attack of a type runs on every clean-correct example in both of a suite's modes (in
``cumulative`` mode later attacks of the type see only what it left), so its column is that
attack alone. In the Table 5 suites it is the type's PGD, so the gap to the type's column is
what an evaluation with PGD alone would have missed, model by model. The short-schedule
MAT-MP study in docs/RESULTS.md found that gap several times larger for MAT-MP's generalists
than for AT (DeepFool breaking what PGD-l2 left), which is why a reader of a
multiple-perturbation comparison wants it beside the main table.
"""

from __future__ import annotations

from typing import Any

from mutualat.compare.stats import percent_mean_std


def first_attack_lines(data: dict[str, Any], checkpoint: str) -> list[str]:
    """The table for the rows of ``checkpoint`` of a report's JSON (:func:`~mutualat.compare.
    report.collect`); no lines for a suite of one threat type, or where no type has more
    than one attack."""
    suite = data["plan"]["suite"]
    threats = list(suite["threats"])
    if len(threats) < 2:
        return []
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for attack in suite["attacks"]:
        first.setdefault(attack["threat"], attack["id"])
        count[attack["threat"]] = count.get(attack["threat"], 0) + 1
    shown = [t for t in threats if count.get(t, 0) > 1]
    if not shown:
        return []
    header = ["model"] + [title for t in shown
                          for title in (f"{t}: {first[t]} alone", f"{t}: all {count[t]} attacks")]
    lines = ["Each threat type's first attack alone (it runs on every clean-correct example) "
             "beside all of that type's attacks, the same models and images: the gap is what "
             "an evaluation with the first attack alone would have missed.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in data["rows"]:
        if row["checkpoint"] != checkpoint:
            continue
        ms = row["mean_std"]
        cells = [percent_mean_std(ms[key]) for t in shown for key in (first[t], f"threat:{t}")]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return lines + [""]

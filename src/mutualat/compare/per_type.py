"""For a suite of several threat types (Table 5): each type's PGD alone beside all of that
type's attacks, per model, and what the type's other attacks found that PGD missed.

Which column is a type's PGD alone is :func:`mutualat.evaluation.pgd_alone_columns`'s to
say (in a cumulative suite, the type's first attack where it is a PGD, as in the Table 5
suites). The short-schedule MAT-MP study in docs/RESULTS.md found the gap two to three times
larger for MAT-MP's generalists than for AT in l2 (DeepFool breaking what PGD-l2 left), which
is why a reader of a multiple-perturbation comparison wants it beside the main table.
:func:`after_pgd_lines` then says which of a cumulative suite's other attacks found what
PGD missed, and names those that found nothing.
"""

from __future__ import annotations

from typing import Any

from mutualat.compare.stats import mean_std, percent_mean_std
from mutualat.evaluation import pgd_alone_columns


def _pgd_columns(suite: dict[str, Any]) -> dict[str, str]:
    """Per threat type, its PGD-alone column (:func:`mutualat.evaluation.pgd_alone_columns`);
    none for a suite of one threat type, whose report has a column per attack already."""
    if len(suite["threats"]) < 2:
        return {}
    return pgd_alone_columns(((a["id"], a["name"], a["threat"]) for a in suite["attacks"]),
                             suite["per_attack"])


def pgd_alone_lines(data: dict[str, Any], checkpoint: str) -> list[str]:
    """The table for the rows of ``checkpoint`` of a report's JSON
    (:func:`mutualat.compare.report.collect`): per threat type with a PGD-alone column and
    more than one attack, that column, the type's, and their per-seed difference (mean ± std
    over seeds). No lines for a suite of one threat type, or where no type qualifies."""
    suite = data["plan"]["suite"]
    threats = list(suite["threats"])
    pgd = _pgd_columns(suite)
    count = {t: sum(a["threat"] == t for a in suite["attacks"]) for t in threats}
    shown = [t for t in threats if t in pgd and count[t] > 1]
    if not shown:
        return []
    header = ["model"] + [title for t in shown for title in
                          (f"{t}: {pgd[t]} alone", f"{t}: all {count[t]} attacks", f"{t}: missed")]
    lines = ["For each threat type with more than one attack: its PGD alone (run, with its "
             "restarts, on every clean-correct example) beside the worst case over all of the "
             "type's attacks, and their difference per seed, which is what PGD alone would "
             "have missed.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in data["rows"]:
        if row["checkpoint"] != checkpoint:
            continue
        cells = []
        for t in shown:
            missed = [s["attacks"][pgd[t]] - s["threats"][t] for s in row["seeds"].values()]
            cells += [percent_mean_std(row["mean_std"][pgd[t]]),
                      percent_mean_std(row["mean_std"][f"threat:{t}"]),
                      percent_mean_std(mean_std(missed))]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return lines + [""]


def after_pgd_lines(data: dict[str, Any], checkpoint: str) -> list[str]:
    """For a cumulative suite of several threat types: per model, what each attack after its
    type's PGD broke of the examples every earlier attack of that type had left (the fall in
    the type's cumulative accuracy at that attack; mean ± std over seeds), a column for each
    attack that broke any example of any row at ``checkpoint``. The attacks that broke
    nothing anywhere are named below the table. No lines where :func:`pgd_alone_lines` has
    none, or in a standalone suite (there an attack's column does not say what it added)."""
    suite = data["plan"]["suite"]
    pgd = _pgd_columns(suite) if suite["per_attack"] == "cumulative" else {}
    after, previous = [], {}  # (attack, its type's attack before it); the type's PGD is first
    for attack in suite["attacks"]:
        i, t = attack["id"], attack["threat"]
        if t in pgd and i != pgd[t]:
            after.append((i, previous[t]))
        previous[t] = i
    rows = [r for r in data["rows"] if r["checkpoint"] == checkpoint]
    if not after or not rows:
        return []
    falls = {(r["row"], i): [s["attacks"][before] - s["attacks"][i] for s in r["seeds"].values()]
             for r in rows for i, before in after}
    found = [i for i, _ in after if any(f > 0 for r in rows for f in falls[r["row"], i])]
    nothing = [i for i, _ in after if i not in found]
    lines = ["What each attack after its type's PGD broke of the examples the type's earlier "
             "attacks had left (points of that type's accuracy; mean ± std over seeds): "
             "the attacks that found what PGD missed.", ""]
    if found:
        lines += ["| model | " + " | ".join(found) + " |", "|---|" + "---|" * len(found)]
        lines += [f"| {r['row']} | " + " | ".join(percent_mean_std(mean_std(falls[r["row"], i]))
                                                 for i in found) + " |" for r in rows]
        lines.append("")
    if nothing:
        lines += [f"Broke no example of any model on any seed: {', '.join(nothing)}.", ""]
    return lines

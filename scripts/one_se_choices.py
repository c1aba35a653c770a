"""What the one-standard-error rule would have chosen in a study that took the highest score.

    python scripts/one_se_choices.py PLAN --out STUDY [--prefer lr=lowest] [--n-val N]

PLAN and STUDY are a `mutualat compare` plan and its output folder. For every variant whose
grid has finished, this prints the highest-scoring point (what a plan without the rule
chooses), the point the rule (docs/METHOD.md §7, mutualat.compare.selection) picks from the
same validation scores, and the standard error it used, whatever the plan itself declares: a plan's choices seen under the rule without training anything again, the
way a reading weighs what the rule would cost before a plan declares it. Only validation
scores are read, never a test number.

The standard error is taken on the number of validation images the best run recorded
(``n_val`` in its epoch records). Runs trained before 2026-12-02 recorded none, so every
study of that time needs ``--n-val N``: the count, which the caller must know (the plan's
``data.val_subset`` where the held-out split is larger than it, as in every packaged plan).

docs/RESULTS.md quotes it for fmnist-smallcnn-paper (``--n-val 500``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mutualat.compare import Plan, Study, load_plan
from mutualat.compare.extras import parse_within_one_se
from mutualat.compare.selection import choose, validation_images
from mutualat.errors import ConfigError, MutualatError


def parse_prefer(values: list[str], plan: Plan) -> dict[str, str]:
    """``["lr=lowest"]`` -> ``{"lr": "lowest"}``, checked as a plan's ``within_one_se`` is
    (a key some grid sweeps, lowest or highest)."""
    rule = {}
    for value in values:
        key, _, preference = value.partition("=")
        if preference not in ("lowest", "highest") or not key:
            raise ConfigError(f"--prefer takes KEY=lowest or KEY=highest, got {value!r}")
        rule[key] = preference
    return parse_within_one_se(rule, plan.grids, "--prefer")


def choices(study: Study, rule: dict[str, str], n_val: int | None) -> list[dict]:
    """Per variant: the highest-scoring point, the rule's, their validation scores and the
    standard error (None where the rule does not apply); or why there is no choice yet."""
    plan, rows = study.plan, []
    for variant in plan.variants:
        try:
            selection = study.selection(variant)
        except ConfigError as error:  # every grid point diverged: that variant's row says so
            rows.append({"variant": variant, "chosen": None, "why": str(error)})
            continue
        if selection is None:
            rows.append({"variant": variant, "chosen": None, "why": "its grid has not finished"})
            continue
        labels = list(selection.settings)
        settings = [selection.settings[k] for k in labels]
        runs = [study.run_dir(variant, s, plan.grid_seed) for s in settings]

        def count(i: int) -> int:
            try:
                return validation_images(runs[i])
            except ConfigError:
                if n_val is None:
                    raise ConfigError(f"{runs[i]} recorded no n_val (it was trained before "
                                      "2026-12-02): give its number of validation images "
                                      "with --n-val") from None
                return n_val

        ruled, _, se = choose(settings, [selection.scores[k] for k in labels], rule, count)
        rows.append({"variant": variant, "chosen": selection.label,
                     "chosen_score": selection.scores[selection.label], "rule": labels[ruled],
                     "rule_score": selection.scores[labels[ruled]], "se": se})
    return rows


def markdown(rows: list[dict], rule: dict[str, str]) -> str:
    """The rows of :func:`choices` as a table, and how many choices the rule moves."""
    prefer = ", then ".join(f"the {v} {k}" for k, v in rule.items())
    lines = [f"Within one standard error of the best validation score, {prefer}:", "",
             "| variant | highest (validation %) | one-SE rule (validation %) | SE (points) |",
             "|---|---|---|---|"]
    for row in rows:
        if row["chosen"] is None:
            lines.append(f"| {row['variant']} | {row['why']} | | |")
            continue
        moved = " (moved)" if row["rule"] != row["chosen"] else ""  # chosen: the highest
        se = "—" if row["se"] is None else f"{100 * row['se']:.1f}"
        lines.append(f"| {row['variant']} | {row['chosen']} ({100 * row['chosen_score']:.1f}) | "
                     f"{row['rule']} ({100 * row['rule_score']:.1f}){moved} | {se} |")
    applies = [r for r in rows if r["chosen"] is not None and r["se"] is not None]
    moved = sum(r["rule"] != r["chosen"] for r in applies)
    lines += ["", f"The rule moves {moved} of the {len(applies)} choices it applies to (a grid "
              "that sweeps its key and has finished)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path, help="the study's plan YAML")
    parser.add_argument("--out", type=Path, required=True, help="the study's output folder")
    parser.add_argument("--prefer", nargs="+", default=["lr=lowest"],
                        help="KEY=lowest|highest, the rule's order (default lr=lowest)")
    parser.add_argument("--n-val", type=int, help="validation images, for runs that recorded none")
    args = parser.parse_args(argv)
    try:
        if not args.out.is_dir():
            raise ConfigError(f"{args.out} is not a study folder")
        if args.n_val is not None and args.n_val < 1:
            raise ConfigError(f"--n-val must be at least 1, got {args.n_val}")
        plan = load_plan(args.plan)
        rule = parse_prefer(args.prefer, plan)
        # the plain maximum, whatever the plan declares: the rule is this script's to apply
        rows = choices(Study(dataclasses.replace(plan, within_one_se={}), args.out), rule,
                       args.n_val)
    except MutualatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(rows, rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())

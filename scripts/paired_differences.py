"""Paired differences between any two rows of a finished comparison, not only to its baseline.

    python scripts/paired_differences.py STUDY --against ROW [--checkpoints last best]
                                         [--columns r_worst clean pgd-100 ...] [--json]
                                         [--table NAME]

STUDY is a `mutualat compare` output folder (or its comparison.json). A comparison reports
every row against the plan's baseline and each cohort's ensemble against the control; a
reading often needs another pairing as well ("MAT against AT trained with cross-entropy",
"the α = 0.3 ensemble against the α = 0.6 one"). For every row at each checkpoint this
prints the mean of its per-seed differences to ROW (the same row name at the same
checkpoint; a row evaluated only at the last epoch is compared there only, and a
checkpoint ROW lacks is skipped with a note) and the same two-sided 95 % Student-t interval
the report uses (mutualat.compare.stats), from the per-seed numbers the report wrote, so
nothing is evaluated again. Columns: clean, r_worst, r_avg, an attack of the suite (its
cumulative accuracy, as in the report's table), or a threat type of a suite with several
(linf, l2, l1: per example the worst case over that type's attacks).

With ``--table NAME`` the rows are those of one of the plan's tables instead (the paper's
Table 2 or 3: "mat-a0.6 h1" against "at-lc", say), at the table's checkpoint, and the columns
its own: clean, each of its attacks (accuracy against it alone where the table's suite is
standalone) and r_worst.

docs/RESULTS.md quotes it for the Fashion-MNIST comparison, against AT (CE).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mutualat.compare.stats import paired_interval

SUMMARY_COLUMNS = ("clean", "r_worst", "r_avg")


class PairingError(Exception):
    """The comparison cannot be paired as asked; the message says why."""


def load(study: Path) -> dict[str, Any]:
    path = study / "comparison.json" if study.is_dir() else study
    if not path.is_file():
        raise PairingError(f"{study} holds no comparison.json: is it a finished `mutualat "
                           "compare` output folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PairingError(f"{path} is not valid JSON ({error})") from None


def table_rows(comparison: dict[str, Any], name: str) -> dict[str, Any]:
    """The plan's table ``name`` in the shape of the main table's rows (each seed's numbers
    under ``attacks``, clean and r_worst beside them), for :func:`pairings`."""
    tables = (comparison.get("extras") or {}).get("tables") or []
    table = next((t for t in tables if t["name"] == name), None)
    if table is None:
        raise PairingError(f"no table named {name!r}; the comparison's tables are: "
                           f"{', '.join(t['name'] for t in tables) or 'none'}")
    attacks = [c for c in table["columns"] if c not in SUMMARY_COLUMNS]
    rows = [{"row": row["row"], "checkpoint": table["checkpoint"],
             "seeds": {seed: {**{c: numbers[c] for c in SUMMARY_COLUMNS if c in numbers},
                              "attacks": {a: numbers[a] for a in attacks if a in numbers}}
                       for seed, numbers in row["seeds"].items()}}
            for row in table["rows"]]
    return {"rows": rows, "attacks": attacks,
            "summary_columns": [c for c in SUMMARY_COLUMNS if c in table["columns"]]}


def value(seed_record: dict[str, Any], column: str) -> float | None:
    if column in SUMMARY_COLUMNS:
        return seed_record.get(column)
    found = seed_record.get("attacks", {}).get(column)
    return found if found is not None else seed_record.get("threats", {}).get(column)


def known_columns(comparison: dict[str, Any]) -> list[str]:
    attacks = [a["id"] if isinstance(a, dict) else a for a in comparison.get("attacks", [])]
    threats = sorted({t for row in comparison.get("rows", []) for record in row["seeds"].values()
                      for t in record.get("threats", {})})
    summary = comparison.get("summary_columns", SUMMARY_COLUMNS)
    return [*summary, *attacks, *(t for t in threats if t not in attacks)]


def pairings(comparison: dict[str, Any], against: str, checkpoints: list[str],
             columns: list[str]) -> list[dict[str, Any]]:
    rows = comparison.get("rows") or []
    names = sorted({r["row"] for r in rows})
    if against not in names:
        raise PairingError(f"no row named {against!r}; the rows are: {', '.join(names)}")
    known = known_columns(comparison)
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise PairingError(f"unknown column {unknown[0]!r}; choose from {', '.join(known)}")
    out = []
    for checkpoint in checkpoints:
        base = next((r for r in rows if r["row"] == against and r["checkpoint"] == checkpoint), None)
        if base is None:
            print(f"note: {against!r} has no {checkpoint!r} row, so nothing is paired at that "
                  "checkpoint", file=sys.stderr)
            continue
        for row in rows:
            if row["checkpoint"] != checkpoint or row is base:
                continue
            seeds = [s for s in row["seeds"] if s in base["seeds"]]
            entry: dict[str, Any] = {"row": row["row"], "checkpoint": checkpoint,
                                     "against": against, "seeds": [int(s) for s in seeds]}
            for column in columns:
                pairs = [(value(row["seeds"][s], column), value(base["seeds"][s], column))
                         for s in seeds]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                if not pairs:
                    entry[column] = None
                    continue
                d = paired_interval([a - b for a, b in pairs])
                entry[column] = {"differences": [a - b for a, b in pairs], "mean": d.mean,
                                 "low": d.low, "high": d.high, "excludes_zero": d.excludes_zero,
                                 "n": d.n}
            out.append(entry)
    if not out:
        raise PairingError(f"row {against!r} was not evaluated at checkpoint(s) "
                           f"{', '.join(checkpoints)}")
    return out


def cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "—"
    text = f"{100 * d['mean']:+.2f}"
    if d["low"] is not None:
        text += f" [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
    return text + (" *" if d["excludes_zero"] else "")


def markdown(entries: list[dict[str, Any]], columns: list[str], table: str | None = None) -> str:
    against = entries[0]["against"]
    where = f" in {table}" if table is not None else ""
    lines = [(f"Paired differences to `{against}`{where} (points; mean over seeds, two-sided 95% "
              "Student-t interval; * = the interval excludes 0):"), "",
             "| model | checkpoint | seeds | " + " | ".join(f"Δ {c}" for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for e in entries:
        # the pairs each column used: a seed lacking a column's number is left out of it
        used = sorted({e[c]["n"] for c in columns if e[c] is not None}) or [0]
        lines.append(f"| {e['row']} | {e['checkpoint']} | {'/'.join(map(str, used))} | "
                     + " | ".join(cell(e[c]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path,
                        help="a `mutualat compare` output folder, or its comparison.json")
    parser.add_argument("--against", required=True, help="the row to pair with, as the report names it")
    parser.add_argument("--checkpoints", nargs="+", choices=["last", "best"],
                        help="default: last and best; with --table, the table's checkpoint")
    parser.add_argument("--columns", nargs="+", default=["clean", "r_worst"])
    parser.add_argument("--table", help="pair the rows of this table of the plan (table2, ...)")
    parser.add_argument("--json", action="store_true", help="print the pairings as JSON")
    args = parser.parse_args(argv)
    try:
        comparison = load(args.study)
        if args.table is not None:
            comparison = table_rows(comparison, args.table)
        checkpoints = args.checkpoints or ["last", "best"]
        if args.table is not None:
            evaluated = sorted({r["checkpoint"] for r in comparison["rows"]})  # the table's one
            checkpoints = args.checkpoints or evaluated
            if not set(checkpoints) & set(evaluated):
                raise PairingError(f"{args.table} evaluates the {', '.join(evaluated)} "
                                   "checkpoint only")
        entries = pairings(comparison, args.against, checkpoints, args.columns)
    except PairingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(entries, indent=2) if args.json else markdown(entries, args.columns, args.table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

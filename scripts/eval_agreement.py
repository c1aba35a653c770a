"""Do two evaluations of the same models agree, example by example?

    python scripts/eval_agreement.py A B [--json]

A and B are evaluation folders (`mutualat eval --out`, or a comparison's evals/.../last)
that ran the same experiment somewhere else: on a GPU and on the CPU, in another memory
layout, under another torch release. Their manifests must name the same experiment (suite,
seed, batch size, examples, data and model digests, and precision: a bf16 evaluation is
another experiment); the script refuses otherwise, since a difference would then say
nothing about the hardware. For every model in
both it prints the clean accuracy, each attack's accuracy after it (the suite's cumulative
column) and R_worst on each side, and on how many examples the two disagree, with what ran
each side (device, precision, torch, layouts).

docs/PERFORMANCE.md quotes it for the H200 against this project's CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


class AgreementError(Exception):
    """The two folders cannot be compared; the message says why."""


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not folder.is_dir():
        raise AgreementError(f"{folder} is not a finished evaluation: not a folder")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
    except FileNotFoundError as missing:
        name = Path(missing.filename).name
        raise AgreementError(f"{folder} is not a finished evaluation: no {name}") from None
    except json.JSONDecodeError as bad:
        raise AgreementError(f"{folder}: a record is not valid JSON ({bad})") from None
    if not (isinstance(manifest.get("identity"), dict)
            and isinstance(summary.get("models"), dict)):
        raise AgreementError(f"{folder}: its manifest or summary is not an evaluation's")
    return manifest, summary


def _outcomes(folder: Path, name: str) -> dict[str, np.ndarray]:
    path = folder / name / "correct.npz"
    try:
        with np.load(path) as saved:
            return {k: saved[k] for k in ("attacks", "clean", "robust", "labels")}
    except FileNotFoundError:
        raise AgreementError(f"{folder}: no per-example outcomes for {name} ({path})") from None
    except (KeyError, ValueError, OSError) as bad:
        raise AgreementError(f"{path} is not an evaluation's outcome file ({bad})") from None


def _setting(summary: dict[str, Any]) -> str:
    hardware, versions = summary.get("hardware", {}), summary.get("versions", {})
    layouts = sorted({a.get("layout") or "unrecorded" for m in summary["models"].values()
                      for a in m.get("attacks", {}).values()})
    device = hardware.get("gpu") or hardware.get("cpu") or hardware.get("device", "?")
    return (f"{hardware.get('device', '?')} ({device}), {summary.get('precision', '?')}, "
            f"torch {versions.get('torch', '?')}, layout {'/'.join(layouts)}")


def agreement(a: Path, b: Path) -> dict[str, Any]:
    """The rows and the two settings; AgreementError if A and B are different experiments."""
    (manifest_a, summary_a), (manifest_b, summary_b) = _read(a), _read(b)
    identity_a, identity_b = manifest_a["identity"], manifest_b["identity"]
    differ = sorted(k for k in identity_a.keys() | identity_b.keys()
                    if identity_a.get(k) != identity_b.get(k))
    if differ:
        raise AgreementError(f"{a} and {b} are different experiments: "
                             f"they differ in {', '.join(differ)}")
    rows = []
    for name in sorted(summary_a["models"].keys() & summary_b["models"].keys()):
        fa, fb = _outcomes(a, name), _outcomes(b, name)
        if not np.array_equal(fa["labels"], fb["labels"]):
            raise AgreementError(f"{name}: the two evaluations' labels differ")
        columns = [("clean", fa["clean"], fb["clean"])]
        columns += [(str(attack), fa["robust"][:, i], fb["robust"][:, i])
                    for i, attack in enumerate(fa["attacks"])]
        # R_worst as the summary counts it: right on the clean image and after every attack.
        columns.append(("R_worst", fa["clean"] & fa["robust"].all(axis=1),
                        fb["clean"] & fb["robust"].all(axis=1)))
        for what, ra, rb in columns:
            rows.append({"model": name, "what": what, "a": float(ra.mean()), "b": float(rb.mean()),
                         "differ": int((ra != rb).sum()), "n": int(len(ra))})
    return {"a": {"folder": str(a), "setting": _setting(summary_a)},
            "b": {"folder": str(b), "setting": _setting(summary_b)}, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"A: {result['a']['folder']}: {result['a']['setting']}",
             f"B: {result['b']['folder']}: {result['b']['setting']}", "",
             "| model | accuracy after | A % | B % | examples that differ |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['what']} | {100 * r['a']:.2f} | {100 * r['b']:.2f} | "
                     f"{r['differ']} of {r['n']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="an evaluation folder")
    parser.add_argument("b", type=Path, help="another evaluation of the same experiment")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    try:
        result = agreement(args.a, args.b)
    except AgreementError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not result["rows"]:
        print(f"error: {args.a} and {args.b} share no evaluated model", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

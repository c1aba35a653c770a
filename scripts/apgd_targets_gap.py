"""What a comparison's CPU suite leaves on the table: APGD-T with all 9 target classes, run on
the examples that survived the suite (PGD-100, APGD-CE, APGD-T with 3 targets); or, with
``--attack square``, AutoAttack's gradient-free Square, which no CPU suite runs at l-inf.

    python scripts/apgd_targets_gap.py STUDY [--checkpoints last] [--variants ...] [--seeds 0]
                                       [--targets 9 | --attack square] [--limit N]
                                       [--data-dir DIR] [--json]

STUDY is a `mutualat compare` output folder. For every finished evaluation in it (the
variants, seeds and checkpoints asked for; each member evaluated alone and each ensemble),
the examples still robust after the whole suite (from the evaluation's ``correct.npz``) are
attacked once more with AutoAttack's APGD-T at ``--targets`` target classes (9: standard
AutoAttack's setting, which also repeats the first 3 targets with other randomness), on the
same test images, in fp32. An example it breaks was counted robust by the suite, so

    R_worst with the stronger APGD-T = R_worst of the suite - broken / n.

With ``--limit N`` only the first N surviving examples (by index in the class-balanced test
subset, in the dataset's own order, which is not sorted by class) are attacked and the drop
is estimated as (broken / attacked) x (surviving / n); the table says so. The extra
evaluations are ordinary evaluator folders under ``--out`` (default STUDY/apgd-targets-gap),
resumable and reused on a rerun.

docs/RESULTS.md quotes this table for the Fashion-MNIST comparison
(configs/plans/fmnist-smallcnn.yaml) and the CIFAR-10 one (configs/plans/cifar10-cnn32.yaml),
whose suites (comparison-fmnist-cpu, comparison-cifar10-cpu) run 3 targets to stay within
the CPU budget. A suite of several threat types (Table 5's table5-aa-fmnist-cpu) gets APGD-T
at each of its l-inf, l2 and l1 threats, each on every surviving example, and the table says
what each type's broke.

Each finished check records which model files it attacked, by content, as the study's own
evaluations do (``evaluated-models.json``: the digests its evaluation recorded). With the
check inside the study (the default ``--out``), ``mutualat compare --archive`` keeps it, and
a rerun reads a finished check without the weights (an archived study has only their
digests) while the evaluation, its digests, its survivors and the attack are the same; a
check not yet run needs the weights, so run it where the study trained, before archiving.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from mutualat.compare.records import EVALUATED, file_digest
from mutualat.console import setup_logging
from mutualat.data import load_dataset, subset
from mutualat.errors import MutualatError
from mutualat.evaluation import evaluate
from mutualat.evaluation.attack_loop import as_tensors
from mutualat.evaluation.records import evaluation_identity
from mutualat.evaluation.suite import suite_from_dict
from mutualat.models import load_model
from mutualat.models.ensemble import Ensemble
from mutualat.files import atomic_write_bytes

logger = logging.getLogger("mutualat.scripts.apgd_targets_gap")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a `mutualat compare` output folder")
    parser.add_argument("--variants", nargs="+", help="default: every variant and the control")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: every seed evaluated")
    parser.add_argument("--checkpoints", nargs="+", default=["last"], choices=["last", "best"])
    parser.add_argument("--targets", type=int, help="APGD-T's target classes (default 9)")
    parser.add_argument("--attack", choices=["apgd-t", "square"], default="apgd-t",
                        help="square: AutoAttack's gradient-free Square (5,000 queries) at the "
                             "suite's l-inf and l2 threats instead of APGD-T")
    parser.add_argument("--limit", type=int, help="attack at most this many surviving examples per model")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data-dir", help="where the dataset is, if not where the study read it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="default: STUDY/apgd-targets-gap (square: STUDY/square-gap)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser.parse_args(argv)


def evaluations(study: Path) -> list[Path]:
    """Every finished evaluation folder: evals/<variant>/<setting>/seed<S>/<checkpoint>; as
    the study counts them, one that has not recorded the model files it read is not (its
    task stopped before the end: the study runs it again)."""
    found = sorted(p.parent for p in (study / "evals").glob("*/*/seed*/*/summary.json"))
    if not found:
        raise MutualatError(f"{study} has no finished evaluation (is it a `mutualat compare` folder?)")
    unfinished = [f for f in found if not (f / EVALUATED).is_file()]
    for folder in unfinished:
        print(f"{folder}: skipped, not finished (no {EVALUATED}; the study runs it again)",
              file=sys.stderr)  # (not stdout: --json prints the rows there)
    return [f for f in found if f not in unfinished]


def data_source(study: Path) -> dict:
    """Where the study read its data: the ``data`` of any of its evaluation tasks."""
    for path in sorted((study / "tasks").glob("eval__*.json")):
        if not path.name.endswith(".record.json"):
            return json.loads(path.read_text())["spec"]["data"]
    raise MutualatError(f"{study}/tasks has no evaluation task")


def in_study(study: Path, recorded: str) -> Path:
    """Where a model file its evaluation recorded is in ``study`` now: the same path below
    runs/ (the study may have moved, or be an archive of it, since)."""
    parts = Path(recorded).parts
    if "runs" not in parts:
        return Path(recorded)
    return study.joinpath(*parts[len(parts) - 1 - parts[::-1].index("runs"):])


def load_model_of(study: Path, folder: Path, summary: dict, name: str, device: str,
                  evaluated: dict | None) -> torch.nn.Module:
    """The evaluated model ``name``, from the file its summary records (an ensemble: its
    members'), found in ``study``; a clear error where the weights are not there (an archived
    study) or are not those the evaluation read (``evaluated``: its digests by file name)."""
    info = summary["models"][name]["info"]
    recorded = info["members"] if "members" in info else {name: info}
    paths = {member: in_study(study, entry["path"]) for member, entry in recorded.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise MutualatError(
            f"{folder}: {name}'s weights are not here ({', '.join(missing)}; an archived study "
            "keeps only their digests): run this check where the study trained, before archiving")
    changed = [str(p) for member, p in paths.items()
               if evaluated is not None and file_digest(p) != evaluated.get(member)]
    if changed:
        raise MutualatError(
            f"{folder}: {', '.join(changed)} is not the file this evaluation read (trained "
            "again since?): its survivors are another model's; evaluate it again first")
    models = [load_model(p, device=device) for p in paths.values()]
    return Ensemble(models) if "members" in info else models[0]


def finished_check(folder: Path, name: str, suite_dict: dict, images: torch.Tensor,
                   labels: torch.Tensor, seed: int, batch_size: int,
                   evaluated: dict | None) -> dict | None:
    """The summary of a check already run in ``folder`` on model ``name`` of the evaluation
    whose model digests are ``evaluated``, with the same attack (``suite_dict``) on the same
    examples, seed and batch size (each batch is seeded); None where there is none to reuse
    without the weights."""
    summary, manifest = folder / "summary.json", folder / "manifest.json"
    record = folder / EVALUATED
    if evaluated is None or not (summary.is_file() and manifest.is_file() and record.is_file()):
        return None
    if json.loads(record.read_text()) != evaluated:
        raise MutualatError(f"{folder}: this check attacked other model files than its evaluation "
                            "holds now (a run trained again?): move it away to check again")
    identity = json.loads(manifest.read_text())["identity"]
    identity.pop("models", None)  # (their digests are the record's, checked above)
    if identity != evaluation_identity(suite_dict, seed, batch_size, *as_tensors(images, labels)):
        return None  # another attack or other survivors: evaluate() decides, with the weights
    result = json.loads(summary.read_text())
    return result if name in result["models"] else None


def stronger_suite(summary: dict, targets: int, attack: str = "apgd-t") -> dict:
    """APGD-T at ``targets`` target classes at each l-inf, l2 and l1 threat of the study's
    suite, each run on every example given (standalone), so that each type's count is known:
    one attack for a suite of l-inf alone (the single-perturbation comparisons), one per type
    for a multiple-perturbation one (Table 5's). ``attack="square"``: AutoAttack's Square,
    gradient-free, at the l-inf and l2 threats (it has no l1)."""
    threats = summary["suite"]["threats"]
    norms = ("linf", "l2", "l1") if attack == "apgd-t" else ("linf", "l2")
    lp = {k: t for k, t in threats.items() if t.get("norm") in norms}
    if not lp:
        raise MutualatError(f"the suite's threats {list(threats)} include no {', '.join(norms)} "
                            f"ball for {attack}")
    single = list(lp) == ["linf"]
    if attack == "apgd-t":
        name, description = f"apgd-t{targets}", f"APGD-T, {targets} target classes"
        params = {"version": "custom", "attacks": ["apgd-t"], "n_target_classes": targets}
    else:
        name, description = "square", "Square, 5,000 queries"
        params = {"version": "custom", "attacks": ["square"]}
    return {"name": name, "description": description,
            "per_attack": "cumulative" if single else "standalone",
            "threats": {k: {"norm": t["norm"], "eps": t["eps"]} for k, t in lp.items()},
            "attacks": [{"id": name + ("" if single else f"-{k}"), "name": "autoattack", "threat": k,
                         "params": params} for k in lp]}


def label(attack: str, targets: int) -> str:
    return f"APGD-T-{targets}" if attack == "apgd-t" else "Square"


def gap_rows(args: argparse.Namespace) -> list[dict]:
    out = args.out or args.study / ("apgd-targets-gap" if args.attack == "apgd-t" else "square-gap")
    folders = evaluations(args.study)
    source, splits, rows = data_source(args.study), {}, []
    for folder in folders:
        variant, setting = folder.parents[2].name, folder.parents[1].name
        seed, checkpoint = int(folder.parent.name[4:]), folder.name
        if (args.variants and variant not in args.variants) or (args.seeds and seed not in args.seeds) \
                or checkpoint not in args.checkpoints:
            continue
        summary = json.loads((folder / "summary.json").read_text())
        data = summary["data"]
        key = (data["dataset"], data["subset"], data["subset_seed"])
        if key not in splits:
            dataset = load_dataset(source["name"], data_dir=args.data_dir or source["data_dir"],
                                   path=source["path"])
            splits[key] = subset(dataset.test, data["subset"], seed=data["subset_seed"])
        split = splits[key]
        suite_dict = stronger_suite(summary, args.targets, args.attack)
        suite = suite_from_dict(suite_dict, source=suite_dict["name"])
        record = folder / EVALUATED
        evaluated = json.loads(record.read_text()) if record.is_file() else None
        for name in summary["models"]:
            correct = np.load(folder / summary["models"][name]["correct_file"])
            if not np.array_equal(correct["labels"], split.labels):
                raise MutualatError(f"{folder}: its labels are not those of the test subset read "
                                    "now (another dataset or data directory?)")
            surviving = np.flatnonzero(correct["clean"] & (correct["outcome"] == 1).all(axis=1))
            attacked = surviving[: args.limit] if args.limit else surviving
            n = len(correct["labels"])
            row = {"variant": variant, "setting": setting, "seed": seed, "checkpoint": checkpoint,
                   "model": name, "n": n,
                   "r_worst": summary["models"][name]["r_worst"], "surviving": len(surviving),
                   "attacked": len(attacked), "broken": 0,
                   "broken_by_type": {a["threat"]: 0 for a in suite_dict["attacks"]}}
            if len(attacked):
                images = torch.from_numpy(split.images[attacked])
                labels = torch.from_numpy(split.labels[attacked])
                there = out / variant / setting / f"seed{seed}" / checkpoint / name
                result = finished_check(there, name, suite.to_dict(), images, labels,
                                        summary["seed"], args.batch_size, evaluated)
                if result is None:
                    model = load_model_of(args.study, folder, summary, name, args.device, evaluated)
                    result = evaluate({name: model}, suite, images, labels, there,
                                      batch_size=args.batch_size, device=args.device,
                                      seed=summary["seed"], checks=False, progress=False)
                    if evaluated is not None:  # which files, by content: as the study's own
                        atomic_write_bytes(there / EVALUATED, json.dumps(evaluated, indent=2).encode())
                row["broken"] = round(len(attacked) * (1 - result["models"][name]["r_worst"]))
                attacks = result["models"][name]["attacks"].values()
                row["broken_by_type"] = {a["threat"]: a["broken"] for a in attacks}
            fraction = row["broken"] / row["attacked"] if row["attacked"] else 0.0
            row["drop"] = fraction * row["surviving"] / n
            row["r_worst_stronger"] = row["r_worst"] - row["drop"]
            row["estimated"] = row["attacked"] < row["surviving"]
            rows.append(row)
            logger.info(f"{variant} {setting} seed{seed} {checkpoint} {name}: {label(args.attack, args.targets)} broke "
                        f"{row['broken']} of {row['attacked']} surviving examples")
    return rows


def table(rows: list[dict], attack: str) -> str:
    """One row per model. With several threat types, the examples each type's attack broke
    (of the same survivors; one may break an example another also broke), which for that
    type's own column is a lower bound: the suite left that column more examples to break.
    ``attack``: what broke them, as the header names it."""
    types = len({t for r in rows for t in r["broken_by_type"]}) > 1
    header = (f"| variant | setting | seed | checkpoint | model | R_worst, suite % | broken by "
              f"{attack} |" + (" of them, by type |" if types else "")
              + " R_worst with it % | drop (points) |")
    lines = [header, "|" + "---|" * (9 + types)]
    for r in rows:
        approx = "≈ " if r["estimated"] else ""
        by_type = (" " + ", ".join(f"{t} {k}" for t, k in r["broken_by_type"].items()) + " |"
                   if types else "")
        lines.append(f"| {r['variant']} | {r['setting']} | {r['seed']} | {r['checkpoint']} | {r['model']} | "
                     f"{100 * r['r_worst']:.2f} | {r['broken']} of {r['attacked']} |{by_type} "
                     f"{approx}{100 * r['r_worst_stronger']:.2f} | {approx}{100 * r['drop']:.2f} |")
    if rows:
        drops = [100 * r["drop"] for r in rows]
        lines.append("")
        lines.append(f"Drop over {len(rows)} models: mean {np.mean(drops):.2f}, "
                     f"largest {max(drops):.2f} points.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    if args.attack == "square" and args.targets is not None:
        print("error: --targets is APGD-T's; Square has no target classes", file=sys.stderr)
        return 2
    args.targets = 9 if args.targets is None else args.targets
    if args.targets < 1:
        print(f"error: --targets must be at least 1, got {args.targets}", file=sys.stderr)
        return 2
    setup_logging(logging.WARNING if args.json else logging.INFO)  # --json: stdout is the JSON
    try:
        rows = gap_rows(args)
    except MutualatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else table(rows, label(args.attack, args.targets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

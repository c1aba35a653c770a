"""Regenerate docs/RESULTS.md's single-perturbation table (issue: MAT vs AT, TRADES, MART).

    .venv/bin/python scripts/results_single.py --data-dir ../shared/data --out runs/results-single

Trains AT (L_C), TRADES, MART and a MAT pair with the CPU-scale Fashion-MNIST configs
(configs/cpu/fmnist-*.yaml: l-inf eps 0.1, PGD-10 training attack) with the small ``tinycnn``
swapped in for SmallCNN, 10,000 training images and 8 epochs, so that 4 methods x 3 seeds
fit in about an hour and a half of 2 CPU cores; then reports the last epoch's models (never a best
epoch) on the full 10,000-image test split: clean accuracy and PGD-100 (cross-entropy, step
2.5 eps / 100, no random start, early stop on misclassification), mean +- std over seeds.
Runs go to --out and are reused or resumed, so the script can be stopped and restarted.
``--jobs 2`` trains two runs at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from common import command_line, machines_text, mean_std_percent, run_seconds, split_alpha, with_alpha
from mutualat.config import load_config
from mutualat.console import setup_logging
from mutualat.experiments import run_or_reuse
from mutualat.report.documents import write_section
from mutualat.train.logger import run_machines

REPO = Path(__file__).resolve().parents[1]
MARKER_BEGIN = "<!-- results-single:begin -->"
MARKER_END = "<!-- results-single:end -->"


def variants(args: argparse.Namespace) -> list[str]:
    """The runs of one seed: each baseline once, MAT once per alpha ("mat-alpha0.6")."""
    return ["at", "trades", "mart"] + [with_alpha("mat", a) for a in args.alphas]


def overrides(variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    method, alpha = split_alpha(variant)
    n_models = 2 if method == "mat" else 1
    return [
        f"seed={seed}",
        f"data.data_dir={args.data_dir}",
        f"optim.epochs={args.epochs}",
        f"data.train_subset={args.train_subset}",
        "eval.test_pgd_steps=100",
        "progress=false",
        "device=cpu",
        *[f"models.{i}.name={args.arch}" for i in range(n_models)],
        *([f"method.params.alpha={alpha}"] if alpha else []),
    ]


def train_one(variant: str, seed: int, args: argparse.Namespace) -> tuple[str, int, dict, float, list]:
    setup_logging()  # a spawned worker: its runs' messages reach the script's output too
    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "configs" / "cpu" / f"fmnist-{split_alpha(variant)[0]}.yaml",
                      overrides(variant, seed, args))
    run = Path(args.out) / f"{variant}-seed{seed}"
    results = run_or_reuse(cfg, run)
    # Training and its final test: how long, and on which machines (as the run recorded them).
    return variant, seed, results, run_seconds(run), run_machines(run)


def table(results: dict[tuple[str, int], dict]) -> str:
    rows = []
    # Baselines first, then MAT per alpha.
    for variant in sorted(dict.fromkeys(v for v, _ in results), key=lambda v: split_alpha(v)[1] is not None):
        seeds = sorted(s for v, s in results if v == variant)
        for role in results[(variant, seeds[0])]["models"]:
            clean = [results[(variant, s)]["models"][role]["clean"] for s in seeds]
            pgd = [results[(variant, s)]["models"][role]["pgd"] for s in seeds]
            alpha = split_alpha(variant)[1]
            if alpha:
                name = f"MAT-{role} (α = {alpha})"
            else:
                name = {"at": "AT (L_C)", "trades": "TRADES", "mart": "MART"}[variant]
            rows.append(f"| {name} | {mean_std_percent(clean)} | {mean_std_percent(pgd)} | {len(seeds)} |")
    head = "| method | clean % | PGD-100 % | seeds |\n|---|---|---|---|"
    return head + "\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default="runs/results-single")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--arch", default="tinycnn")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.6, 0.3],
                        help="MAT's alpha, one MAT row pair each: 0.6 is the paper's CIFAR-10 "
                             "value, 0.3 the best of 0.3/0.6/0.9 on the validation split here")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--write", default=str(REPO / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    setup_logging()  # the trainer's and evaluator's progress lines, as the CLI shows them

    # The slowest (MAT) runs first so two workers finish together; the table lists the
    # baselines first.
    order = sorted(variants(args), key=lambda v: split_alpha(v)[1] is None)
    jobs = [(m, s) for m in order for s in args.seeds]
    results: dict[tuple[str, int], dict] = {}
    seconds: dict[tuple[str, int], float] = {}
    machines: list[dict] = []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_one, m, s, args) for m, s in jobs]
        for future in futures:
            method, seed, res, took, ran_on = future.result()
            machines += ran_on or [{}]  # {}: a run without a record of its machine
            results[(method, seed)], seconds[(method, seed)] = res, took
            print(f"done {method} seed {seed} in {took / 60:.1f} min", flush=True)
    work = sum(seconds.values())

    command = command_line("scripts/results_single.py", parser, args, always=("data_dir", "seeds"))
    body = "\n".join([
        MARKER_BEGIN,
        "## Single perturbation (l-inf), CPU scale: Fashion-MNIST",
        "",
        f"Regenerate with `{command}` (the {len(seconds)} runs took "
        f"{work / 60:.0f} min in all, {args.jobs} at a time, on {machines_text(machines)}).",
        "",
        f"Setup: `configs/cpu/fmnist-*.yaml` with `{args.arch}` models, l-inf eps = 0.1, PGD-10 "
        f"training attack (step 0.025), {args.train_subset:,} training images (drawn from the "
        f"48,000 left after the 20% validation hold-out), {args.epochs} epochs, batch 128, SGD "
        "lr 0.05 with the paper's step decay; AT uses L_C (the paper's Eq. 1), TRADES beta = 6, "
        f"MART beta = 5, MAT alpha = {' and '.join(f'{a:g}' for a in args.alphas)} (0.6: the "
        "paper's CIFAR-10 value; 0.3: the best on the validation split of 0.3, 0.6 and 0.9, "
        "see the alpha probe below). "
        "Accuracy of the last epoch's models on the full 10,000-image test split: clean, and "
        "PGD-100 (cross-entropy, step 0.0025, no random start, an example counts as broken "
        f"once misclassified). Mean ± std over seeds {', '.join(map(str, args.seeds))}.",
        "",
        table(results),
        "",
        MARKER_END,
    ])
    write_section(Path(args.write), MARKER_BEGIN, MARKER_END, body)
    (Path(args.out) / "results-single.json").write_text(json.dumps(
        {f"{m}-seed{s}": {"results": r, "seconds": seconds[(m, s)]} for (m, s), r in results.items()},
        indent=2))
    print(table(results))


if __name__ == "__main__":
    main()

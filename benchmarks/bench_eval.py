"""Time the evaluator: a suite attacking only still-robust examples against every example,
and the models in channels_last against the contiguous layout.

    python benchmarks/bench_eval.py [--device cpu|cuda] [--suite quick] [--n 512]
                                    [--batch 256] [--repeats 3]

``mutualat.evaluation.evaluate`` runs a suite in one of two modes (see
``mutualat.evaluation.suite``): ``cumulative`` (default) attacks, per threat type, only the
examples that every earlier attack of that type left robust; ``standalone`` attacks every
clean-correct example with every attack (the paper's per-attack columns). Per-type accuracy
and R_worst are exact in both modes; they are printed for both, and differ only through
the attacks' random draws (random starts, noise), which depend on which examples share a
batch. The second row times the cumulative suite with the model in channels_last against
contiguous (``evaluate(channels_last="on" / "off")``, fp32 both; see
``mutualat.evaluation.layout``), and prints both R_worst and on how many examples any attack's
outcome differs: the layouts differ only in the order of floating-point sums. The model is bench_pgd's CNN trained for one epoch on Fashion-MNIST;
each evaluation writes into a fresh temporary folder and runs without the gradient-masking
checks, so only the attacks are timed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import tempfile

import numpy as np
import torch

from bench_pgd import trained_cnn
from common import Row, environment, print_table, side_by_side
from mutualat.evaluation import evaluate
from mutualat.evaluation.suite import load_suite


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--n", type=int, default=512, help="test images evaluated")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def rows(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    model, xte, yte = trained_cnn(device)
    images, labels = xte[: args.n], yte[: args.n]
    cumulative = load_suite(args.suite)
    suites = {"cumulative": dataclasses.replace(cumulative, per_attack="cumulative"),
              "standalone": dataclasses.replace(cumulative, per_attack="standalone")}
    summaries: dict[str, dict] = {}
    outcomes: dict[str, np.ndarray] = {}

    def run(mode: str, layout: str = "off"):
        def go() -> None:
            with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
                summaries[mode, layout] = evaluate(
                    {"cnn": model}, suites[mode], images, labels, out, batch_size=args.batch,
                    device=device, seed=0, checks=False, progress=False, channels_last=layout)
                with np.load(f"{out}/cnn/correct.npz") as f:
                    outcomes[mode, layout] = f["outcome"]
        return go

    t = side_by_side({mode: run(mode) for mode in suites}, device, args.repeats)
    tl = side_by_side({layout: run("cumulative", layout) for layout in ("on", "off")}, device,
                      args.repeats)
    worst = {key: s["models"]["cnn"]["r_worst"] for key, s in summaries.items()}
    differ = int((outcomes["cumulative", "on"] != outcomes["cumulative", "off"]).any(axis=1).sum())
    attacks = ", ".join(a.id for a in cumulative.attacks)
    return [Row("eval", f"suite {args.suite} cumulative vs standalone, n={args.n}",
                t["cumulative"], t["standalone"], "s",
                f"R_worst {worst['cumulative', 'off']:.3f} vs {worst['standalone', 'off']:.3f}; "
                f"attacks {attacks}"),
            Row("eval", f"suite {args.suite} in channels_last vs contiguous, n={args.n}",
                tl["on"], tl["off"], "s",
                f"R_worst {worst['cumulative', 'on']:.3f} vs {worst['cumulative', 'off']:.3f}; "
                f"outcome differs on {differ} of {len(images)} examples")]


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    print_table(rows(args), f"Evaluator, cumulative against standalone, channels_last against "
                            f"contiguous: "
                            f"{environment(torch.device(args.device))}")


if __name__ == "__main__":
    main()

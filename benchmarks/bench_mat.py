"""Time one MAT step of a cohort of N against N x one AT step (same model, attack, batch).

    python benchmarks/bench_mat.py [--device cpu|cuda] [--model tinycnn] [--batch 128]
                                   [--steps 10] [--cohorts 2 3 4] [--repeats 5] [--amp]
                                   [--channels-last]

A step is what the trainer does per batch: the method's loss (attacks included), backward,
an SGD step of every member. AT is the MAT paper's AT (L_C loss, L_C-maximizing PGD-K with
a random start); MAT runs N members of the same architecture with alpha 0.6. All
contenders are timed interleaved in one process (median of --repeats). The ratio
MAT / (N x AT) is the cohort's overhead: MAT adds N clean forwards for the peer targets, so
it is expected slightly above 1. Untrained models on random data of the model's input shape.
"""

from __future__ import annotations

import argparse

import torch

from common import Row, autocast, build, environment, print_table, random_batch, side_by_side
from mutualat.config import AttackConfig
from mutualat.methods.at import AT, ATParams
from mutualat.methods.mat import MAT, MATParams
from mutualat.train.cohort import Cohort


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="tinycnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as the trainer on CUDA")
    parser.add_argument("--channels-last", action="store_true")
    return parser.parse_args(argv)


def trainer_step(method, models, optimizer, x, y, device, amp):
    """What the trainer does for one batch (mutualat.train.trainer.Trainer._step)."""
    cohort = Cohort.of(models, method)

    def step() -> None:
        with autocast(device, amp):
            result = method.loss(cohort, x, y)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()

    return step


def rows(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    x, y = random_batch(args.model, args.batch, device, args.channels_last)
    eps = 0.1 if x.shape[1] == 1 else 8 / 255
    attack = AttackConfig(norm="linf", eps=eps, steps=args.steps, random_start=True)

    def cohort(n: int) -> list[torch.nn.Module]:
        return [build(args.model, device, args.channels_last, seed=i).train() for i in range(n)]

    def sgd(models):
        return torch.optim.SGD([p for m in models for p in m.parameters()], lr=0.01, momentum=0.9)

    at_models = cohort(1)
    fns = {"AT": trainer_step(AT(ATParams(loss="lc"), attack, [False]), at_models,
                              sgd(at_models), x, y, device, args.amp)}
    for n in args.cohorts:
        models = cohort(n)
        method = MAT(MATParams(alpha=0.6), attack, [False] * n)
        fns[f"MAT N={n}"] = trainer_step(method, models, sgd(models), x, y, device, args.amp)
    t = side_by_side(fns, device, args.repeats)
    setting = (f"{args.model}, B={args.batch}, K={args.steps}"
               + (", bf16" if args.amp else "") + (", NHWC" if args.channels_last else ""))
    out = [Row("mat", f"AT step: {setting}", 1e3 * t["AT"], 1e3 * t["AT"], "ms",
               f"{args.batch / t['AT']:.0f} img/s (per model)")]
    for n in args.cohorts:
        key = f"MAT N={n}"
        out.append(Row("mat", f"MAT N={n} vs {n} x AT: {setting}", 1e3 * t[key],
                       n * 1e3 * t["AT"], "ms", f"{n * args.batch / t[key]:.0f} img/s (model-images)"))
    return out


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    print_table(rows(args), f"MAT step against N x AT step: {environment(torch.device(args.device))}")


if __name__ == "__main__":
    main()
